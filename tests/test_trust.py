"""Results that can be trusted: stages redo work when the content they depend on changes, trained runs are
never overwritten or mixed, and the submission with its sidecar is one artifact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core import fileio, manifests
from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.core.manifests import DigestCache
from maskcomp.crop import detect
from maskcomp.crop.stage import crop_dir, crop_faces, load_crops
from maskcomp.data.folds import make_folds
from maskcomp.data.sample import make_sample
from maskcomp.data.tables import load_train
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.runs import read_oof, read_test_probs, resolve_run
from maskcomp.train.dataset import build_cache
from maskcomp.train.trainer import train

from conftest import TINY, config_for, copy_data, latest, run_pipeline

pytestmark = pytest.mark.slow  # trains or runs whole stages


@pytest.fixture(scope="session")
def other_eval(tmp_path_factory) -> Path:
    """Another tiny dataset: its eval set has as many images as tiny_root's, but other ones."""
    root = tmp_path_factory.mktemp("other") / "data"
    make_sample(load_config(None, [f"paths.data_root={root}"]).paths.resolved, 6, 2, seed=4)
    return root


def flip_genders(root: Path, rows: slice) -> None:
    csv = root / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str)
    persons.loc[persons.index[rows], "gender"] = persons.loc[persons.index[rows], "gender"].map(
        {"male": "female", "female": "male"}
    )
    persons.to_csv(csv, index=False)


def swap_eval(root: Path, other: Path) -> None:
    shutil.rmtree(root / "eval")
    shutil.copytree(other / "eval", root / "eval")
    shutil.copy(other / "eval_answers.csv", root / "eval_answers.csv")


def test_edited_labels_train_a_new_run_and_keep_the_old_one(trained_tiny):
    root, cfg = trained_tiny
    run_pipeline(cfg)
    first = latest(cfg)
    best = first.fold_dir(0) / "best.pt"
    before = best.read_bytes()
    flip_genders(root, slice(0, 3))
    with pytest.raises(MaskcompError, match=r"folds.csv: made from other labels .*train_csv.*run `make folds`"):
        train(cfg)
    make_folds(cfg)
    train(cfg)
    second = latest(cfg)
    assert second.run_id != first.run_id and best.read_bytes() == before
    persons = pd.read_csv(root / "train" / "train.csv", dtype=str).set_index("id")
    oof = read_oof(second, cfg.paths.resolved, tta=False)
    expected = oof["person_id"].map(persons["gender"]).map({"male": 0, "female": 1})
    assert (oof["gender_label"] == expected).all()
    # the old run stays usable by its id
    assert resolve_run(cfg.paths.resolved, f"sample@{first.run_id}").trained_folds() == [0, 1]


def test_another_dataset_with_the_same_names_is_not_mistaken_for_the_first(trained_tiny, other_eval, tmp_path):
    root, cfg = trained_tiny
    first_sub = run_pipeline(cfg)
    first_csv, first_run = first_sub.read_text(), latest(cfg)
    root2 = copy_data(root, tmp_path / "data2")
    flip_genders(root2, slice(None))
    swap_eval(root2, other_eval)
    cfg2 = config_for(root2, tmp_path / "work", *TINY)
    second_sub = run_pipeline(cfg2)
    second_run = latest(cfg2)
    assert second_run.run_id != first_run.run_id
    info = pd.read_csv(root2 / "eval" / "info.csv", dtype=str)
    assert pd.read_csv(second_sub, dtype=str)["ImageID"].tolist() == info["ImageID"].tolist()
    assert second_sub.read_text() != first_csv
    assert json.loads(second_sub.with_suffix(".json").read_text())["summary"]["runs"] == [second_run.label]
    index = pd.read_csv(second_sub.parent / "index.csv", dtype=str)
    assert (
        index["runs"].tolist() == [first_run.label, second_run.label] and (index["submission"] == second_sub.name).all()
    )
    stamped = second_sub.parent / index["copy"].iloc[-1]
    assert stamped.name.startswith("sample_cv0.") and stamped.read_text() == second_sub.read_text()


def test_hand_edited_crop_records_and_predictions_are_seen_and_remade(trained_tiny):
    """A stage's lock holds the digests of the files it wrote: a crop box edited in records.csv stops infer until
    `make crop` writes the records again (nothing retrained or predicted), and an edited fold's test_probs.npy stops
    the ensemble until infer predicts that fold, and only it, again."""
    _, cfg = trained_tiny
    run_pipeline(cfg)
    run = latest(cfg)
    records = crop_dir(cfg) / "records.csv"
    table = pd.read_csv(records, dtype=str, keep_default_na=False)
    table.loc[0, "x1"] = str(int(table.loc[0, "x1"]) + 1)
    table.to_csv(records, index=False)
    with pytest.raises(MaskcompError, match=r"settings \(records.csv changed\); run `make crop` first"):
        infer(cfg)
    crop_faces(cfg)
    stamps = [run.fold(f).test_probs.stat().st_mtime_ns for f in (0, 1)]
    infer(cfg)
    assert latest(cfg).run_id == run.run_id and [run.fold(f).test_probs.stat().st_mtime_ns for f in (0, 1)] == stamps
    probs = run.fold(0).test_probs
    np.save(probs, np.load(probs)[::-1])
    with pytest.raises(MaskcompError, match=r"fold0: predictions do not match .*\(test_probs.npy changed\); run `make"):
        ensemble(cfg)
    infer(cfg)
    assert run.fold(1).test_probs.stat().st_mtime_ns == stamps[1] and probs.stat().st_mtime_ns != stamps[0]
    ensemble(cfg)
    folds = cfg.paths.resolved.folds
    folds.write_text(folds.read_text().replace(",0\n", ",1\n", 1))  # a person moved to the other fold by hand
    with pytest.raises(MaskcompError, match=r"folds.csv: made from .* \(folds.csv changed\); run `make folds` first"):
        infer(cfg)
    make_folds(cfg)
    infer(cfg)
    assert latest(cfg).run_id == run.run_id


def test_swapped_eval_set_is_cropped_and_predicted_again(trained_tiny, other_eval):
    root, cfg = trained_tiny
    run_pipeline(cfg)
    run = latest(cfg)
    old_probs, _ = read_test_probs(run, 0)
    swap_eval(root, other_eval)
    with pytest.raises(
        MaskcompError, match=r"crops were made from other images or settings \(eval\); run `make crop` first"
    ):
        infer(cfg)
    crop_faces(cfg)
    train(cfg)  # the eval side is not part of a training run: nothing is retrained
    assert latest(cfg).run_id == run.run_id
    with pytest.raises(MaskcompError, match=r"fold0: predictions do not match .*\(inputs\.eval|eval"):
        ensemble(cfg)
    infer(cfg)
    probs, ids = read_test_probs(run, 0)
    assert ids == pd.read_csv(root / "eval" / "info.csv", dtype=str)["ImageID"].tolist()
    assert not np.allclose(probs, old_probs)
    sub = pd.read_csv(ensemble(cfg), dtype=str)
    assert sub["ImageID"].tolist() == ids


def test_ensemble_refuses_predictions_older_than_the_model(trained_tiny):
    _, cfg = trained_tiny
    run_pipeline(cfg)
    best = latest(cfg).fold_dir(1) / "best.pt"
    state = torch.load(best, weights_only=False)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, best)  # as a retraining of fold 1 would leave it, with the digest it records
    done = json.loads((best.parent / "done.json").read_text())
    (best.parent / "done.json").write_text(json.dumps({**done, "best_digest": manifests.file_digest(best)}))
    with pytest.raises(
        MaskcompError, match=r"fold1: predictions do not match fold 1's current model.*\(model\); run `make infer`"
    ):
        ensemble(cfg)
    infer(cfg)
    assert ensemble(cfg).exists()


def test_new_config_trains_a_new_run_and_infer_can_pick_the_old_one(tiny, caplog):
    _, cfg = tiny
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    first = latest(cfg)
    files = {p: p.read_bytes() for p in first.dir.rglob("*") if p.is_file() and p.name != ".lock"}
    longer = updated(cfg, {"train.epochs": 2})
    train(longer)
    assert latest(cfg).run_id != first.run_id
    assert all(p.read_bytes() == data for p, data in files.items())
    with caplog.at_level("INFO", logger="maskcomp.predict.infer"):
        infer(updated(cfg, {"run": first.run_id}))
    assert (first.fold_dir(0) / "test_probs.npy").exists()
    assert sum("without TTA" in r.getMessage() for r in caplog.records) == 2  # one line per fold
    assert not (latest(cfg).fold_dir(0) / "test_probs.npy").exists()


def test_changing_workers_keeps_the_trained_run(trained_tiny):
    _, cfg = trained_tiny
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    first = latest(cfg)
    mtime = (first.fold_dir(0) / "best.pt").stat().st_mtime_ns
    train(updated(cfg, {"crop.workers": 1, "train.workers": 1}))
    assert latest(cfg).run_id == first.run_id
    assert (first.fold_dir(0) / "best.pt").stat().st_mtime_ns == mtime


def test_second_training_of_the_same_run_stops_naming_the_holder(tiny):
    _, cfg = tiny
    crop_faces(cfg)
    make_folds(cfg)
    from maskcomp.runs import open_run
    from maskcomp.train.trainer import run_manifest

    ref = open_run(cfg, run_manifest(Context(cfg)))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ref.dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MaskcompError, match=rf"already being trained by pid {holder.pid} on .*; wait for it"):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not list(ref.dir.glob("fold*/best.pt"))
    train(cfg)  # the holder is gone: its lock went with it
    assert len(list(ref.dir.glob("fold*/best.pt"))) == 2


HOLD_LOCK = """
import sys, time
from pathlib import Path
from maskcomp.runs import RunRef, run_lock
with run_lock(RunRef("sample", Path(sys.argv[1]).name, Path(sys.argv[1]))):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_moved_data_folder_keeps_its_crops_and_cache(tiny, tmp_path):
    """The same images under another data root (a copy, a moved folder): the crop manifest still holds (it keys
    images by their place under the root), and the decoded crop cache must serve the new paths, not the old ones."""
    root, cfg = tiny
    crop_faces(cfg)
    size = tuple(cfg.train.img_size)
    first = build_cache(Context(cfg), size)
    moved = copy_data(root, tmp_path / "moved")
    cfg2 = updated(cfg, {"paths.data_root": str(moved)})
    crop_faces(cfg2)
    second = build_cache(Context(cfg2), size)
    old_paths, new_paths = load_train(Context(cfg))["image_path"], load_train(Context(cfg2))["image_path"]
    assert new_paths.str.startswith(str(moved)).all()
    assert np.array_equal(second.rows(new_paths), first.rows(old_paths))
    assert second.has(new_paths).all()


def test_image_replaced_in_place_is_detected_and_cut_again(tiny, monkeypatch):
    root, cfg = tiny
    cfg = updated(cfg, {"crop.mode": "mtcnn", "crop.workers": 0})
    crop_faces(cfg)
    first = load_crops(cfg)
    images = sorted((root / "train" / "images").rglob("mask1.*"))
    victim, donor = images[0], images[1]
    victim.write_bytes(donor.read_bytes())
    calls = []
    original = detect._detect_batch
    monkeypatch.setattr(detect, "_detect_batch", lambda det, imgs: calls.append(len(imgs)) or original(det, imgs))
    crop_faces(cfg)
    again = load_crops(cfg)
    assert sum(calls) == 0, "the donor's content was detected before: its detection is reused"
    new_crop = again.loc[str(victim), "crop_path"]
    assert new_crop != first.loc[str(victim), "crop_path"]
    assert again.loc[str(victim), "digest"] == again.loc[str(donor), "digest"] != first.loc[str(victim), "digest"]
    assert Path(new_crop).read_bytes() != Path(first.loc[str(victim), "crop_path"]).read_bytes()


def test_unreadable_image_replaced_by_a_good_one_gets_a_crop(tiny):
    root, cfg = tiny
    cfg = updated(cfg, {"crop.mode": "mtcnn", "crop.workers": 0, "data.image_check": "none", "data.skip_bad": True})
    victim = sorted((root / "train" / "images").rglob("normal.*"))[0]
    good = victim.read_bytes()
    victim.write_bytes(b"")
    crop_faces(cfg)
    assert str(victim) not in load_crops(cfg).index
    victim.write_bytes(good)
    crop_faces(cfg)
    assert str(victim) in load_crops(cfg).index


def test_digests_follow_content_not_mtime(tmp_path, monkeypatch):
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.digests(files)
    cache.save()
    hashed = []
    original = manifests.file_digest
    monkeypatch.setattr(manifests, "file_digest", lambda p: hashed.append(p) or original(p))
    again = DigestCache(tmp_path / "digests.json")
    assert again.digests(files) == first and hashed == []
    stat = files[1].stat()
    files[1].write_bytes(b"\xff" * 100)  # same size, and the old mtime put back
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = again.digests(files)
    assert changed[1] != first[1] and changed[0] == first[0] and len(hashed) == 1


def test_submission_and_sidecar_are_never_mismatched(tmp_path, monkeypatch):
    from maskcomp.ensemble.submission import write_submission

    out = tmp_path / "sub.csv"
    write_submission(pd.DataFrame({"ImageID": ["a"], "ans": [1]}), {"run": "old"}, out)
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after the CSV was renamed, before the sidecar
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        write_submission(pd.DataFrame({"ImageID": ["a"], "ans": [2]}), {"run": "new"}, out)
    assert pd.read_csv(out)["ans"].tolist() == [2]
    assert not out.with_suffix(".json").exists(), "the new CSV must not sit beside the old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"], "no temporary file may remain"


def test_temporaries_of_killed_writers_are_swept(tmp_path):
    dead = tmp_path / ".sub.csv.999999999.abc.tmp.csv"
    dead.write_text("half")
    alive = tmp_path / f".other.csv.{os.getpid()}.abc.tmp.csv"
    alive.write_text("in progress")
    fileio.write_text("x", tmp_path / "sub.csv")
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_artifacts_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = [
            fileio.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv"),
            fileio.write_json({}, tmp_path / "x.json"),
        ]
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode, mode]
