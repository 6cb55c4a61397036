"""Hard cases of a careful user (issue 23): the same data under another folder, conflicting label fixes, damaged or
unwritable checkpoints, transformer backbones at any size, a training that failed at once, invisible characters in
train.csv, and a config whose backbone differs from the run's."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch

from maskcomp.analyze.runs_index import runs_index
from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.config import updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.tables import load_train, read_train
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.grouping import thumbnails
from maskcomp.predict.infer import infer
from maskcomp.runs import read_oof
from maskcomp.train.models import require_input_size
from maskcomp.train.trainer import train

from conftest import config_for, latest, run_pipeline


def with_root(cfg: dict, root: Path) -> dict:
    return updated(cfg, {"paths.data_root": str(root)})


def train_fold0(cfg) -> None:
    """Crops, folds and fold 0 of the run: what a test of the later stages needs first."""
    crop_faces(cfg)
    make_folds(cfg)
    train(with_keys(cfg, train={"folds": [0]}))


def with_keys(cfg, **sections):
    return updated(cfg, {f"{name}.{key}": value for name, values in sections.items() for key, value in values.items()})


# 1. the same data under another folder


@pytest.mark.slow
def test_moved_data_folder_reuses_the_run_and_gives_the_same_submission(trained_tiny, tmp_path):
    root, cfg = trained_tiny
    cfg = with_keys(cfg, infer={"person_grouping": True})
    first = run_pipeline(cfg)
    first_csv, first_side = first.read_text(), json.loads(first.with_suffix(".json").read_text())
    run = latest(cfg)
    moved = tmp_path / "moved"
    shutil.move(root, moved)  # the old folder is gone: nothing may still read from it
    cfg2 = with_root(cfg, moved)
    crop_faces(cfg2)
    make_folds(cfg2)
    train(cfg2)
    assert latest(cfg2).run_id == run.run_id
    infer(with_keys(cfg2, infer={"tta": ["identity", "hflip"]}))  # re-predicts: TTA against the stored OOF
    infer(cfg2)
    second = ensemble(cfg2)
    side = json.loads(second.with_suffix(".json").read_text())
    assert second.read_text() == first_csv
    assert side["person_grouping"] == first_side["person_grouping"] and side["person_grouping"]["mode"] == "on"
    assert side["summary"]["cv_macro_f1"] == first_side["summary"]["cv_macro_f1"]
    oof = read_oof(run, cfg2.paths.resolved)
    assert oof["image_path"].str.startswith(str(moved)).all()
    stored = pd.read_csv(run.fold_dir(0) / "oof.csv")["image_path"]
    assert stored.str.startswith("train/images/").all()


@pytest.mark.slow
def test_oof_files_written_with_absolute_paths_of_another_root_still_read(tiny, tmp_path):
    root, cfg = tiny
    train_fold0(cfg)
    run = latest(cfg)
    oof_csv = run.fold_dir(0) / "oof.csv"
    old = pd.read_csv(oof_csv)
    old["image_path"] = ["/somewhere/else/data/" + key for key in old["image_path"]]  # the layout before keys
    old.to_csv(oof_csv, index=False)
    oof = read_oof(run, cfg.paths.resolved)
    assert oof["image_path"].map(lambda p: Path(p).is_file()).all()
    assert oof["image_path"].str.startswith(str(root)).all()


def test_an_image_grouping_cannot_read_stops_with_one_line(tmp_path):
    with pytest.raises(MaskcompError, match=r"missing\.jpg: cannot read this image for person grouping"):
        thumbnails([str(tmp_path / "missing.jpg")])


# 2. conflicting label fixes


def write_fixes(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame(rows, columns=["person_id", "fix", "value"]).assign(note="").to_csv(path, index=False)
    return path


def first_person(root: Path) -> tuple[str, str]:
    persons = pd.read_csv(root / "train" / "train.csv", dtype=str)
    return persons["id"].iloc[0], persons["gender"].iloc[0]


def test_contradictory_fixes_within_a_file_stop_naming_both_rows(tiny, tmp_path):
    root, cfg = tiny
    pid, _ = first_person(root)
    fixes = write_fixes(
        tmp_path / "fixes.csv", [(pid, "gender", "male"), (pid, "age", "40"), (pid, "gender", "female")]
    )
    with pytest.raises(
        MaskcompError,
        match=rf"fixes.csv:2 and .*fixes.csv:4: gender of person {pid} is fixed to "
        r"'male' and to 'female'",
    ):
        load_train(Context(with_keys(cfg, data={"label_fixes": [str(fixes)]})))


def test_contradictory_fixes_across_files_stop_naming_both_files(tiny, tmp_path):
    root, cfg = tiny
    pid, _ = first_person(root)
    a = write_fixes(tmp_path / "a.csv", [(pid, "age", "58")])
    b = write_fixes(tmp_path / "b.csv", [(pid, "age", "61")])
    with pytest.raises(
        MaskcompError, match=rf"a.csv:2 and .*b.csv:2: age of person {pid} is fixed to '58' and to '61'"
    ):
        load_train(Context(with_keys(cfg, data={"label_fixes": [str(a), str(b)]})))


def test_an_exact_repeat_is_applied_once_with_a_warning(tiny, tmp_path, caplog):
    root, cfg = tiny
    pid, gender = first_person(root)
    other = {"male": "female", "female": "male"}[gender]
    a = write_fixes(tmp_path / "a.csv", [(pid, "gender", other)])
    b = write_fixes(tmp_path / "b.csv", [(pid, "gender", other)])
    with caplog.at_level(logging.WARNING):
        result = read_train(Context(with_keys(cfg, data={"label_fixes": [str(a), str(b)]})))
    assert len(result.applied_fixes) == 1
    assert (result.images.loc[result.images["person_id"] == pid, "gender"] == other).all()
    assert "b.csv:2 repeats the gender fix" in caplog.text


def test_two_swaps_of_one_person_stop(tiny, tmp_path):
    root, cfg = tiny
    pid, _ = first_person(root)
    a = write_fixes(tmp_path / "a.csv", [(pid, "swap_incorrect_normal", "")])
    b = write_fixes(tmp_path / "b.csv", [(pid, "swap_incorrect_normal", "")])
    with pytest.raises(MaskcompError, match=rf"a.csv:2 and .*b.csv:2: person {pid} is swapped twice"):
        load_train(Context(with_keys(cfg, data={"label_fixes": [str(a), str(b)]})))


# 3. a damaged checkpoint


@pytest.mark.slow
def test_damaged_checkpoint_is_named_kept_and_its_fold_trained_again(trained_tiny):
    _, cfg = trained_tiny
    run_pipeline(cfg)
    run = latest(cfg)
    best = run.fold_dir(0) / "best.pt"
    good = best.read_bytes()
    with open(best, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(MaskcompError, match=r"fold0/best.pt: damaged checkpoint .*run `make train`"):
        infer(cfg)
    train(cfg)
    assert (run.fold_dir(0) / "best.pt.damaged").stat().st_size == 1000
    assert best.read_bytes() != good[:1000] and torch.load(best, weights_only=False)["model"]
    assert latest(cfg).run_id == run.run_id
    infer(cfg)


@pytest.mark.slow
def test_a_changed_byte_of_the_same_size_is_caught_by_the_digest(trained_tiny):
    _, cfg = trained_tiny
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    best = latest(cfg).fold_dir(1) / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor: the archive still opens
    best.write_bytes(bytes(data))
    with pytest.raises(MaskcompError, match=r"fold1/best.pt: damaged checkpoint \(its bytes differ"):
        infer(cfg)


# 4. disk full while saving a checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only; skipped where mounting is not allowed); made 64 MB by calling the result."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()[:80]}); the disk-full case needs one")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_resume_finishes(tiny, small_disk):
    _, cfg = tiny
    mount, grow = small_disk
    cfg = with_keys(cfg, paths={"models": str(mount / "models")}, train={"epochs": 2})
    crop_faces(cfg)
    make_folds(cfg)
    with pytest.raises(
        MaskcompError,
        match=r"models/sample/\w+/fold0: no room to save (best|last).pt \(about \d+ MB needed, "
        r"\d+ MB free\); free space .*ARGS=--resume",
    ):
        train(cfg)
    assert not list(mount.rglob("*.tmp*"))
    grow()
    train(cfg, resume=True)
    run = latest(cfg)
    assert run.trained_folds() == [0, 1]
    assert all(json.loads(run.done(f).read_text())["epochs_run"] == 2 for f in (0, 1))


# 5. transformer backbones at any size


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_transformers_train_and_predict_at_a_non_square_size(tiny, backbone):
    _, cfg = tiny
    cfg = with_keys(
        cfg,
        model={"backbone": backbone},
        train={"folds": [0], "img_size": [48, 36], "batch_size": 8},
        infer={"tta": ["identity", "hflip", "scale:1.1"]},
    )
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    run = infer(cfg)
    probs = pd.read_csv(run.fold_dir(0) / "test_probs.csv")
    assert len(probs) == 14 and probs.filter(regex=r"^p\d+$").sum(axis=1).round(4).eq(1).all()


@pytest.mark.slow
def test_a_backbone_that_cannot_take_the_size_stops_before_any_run_folder(tiny):
    _, cfg = tiny
    cfg = with_keys(cfg, model={"backbone": "inception_v3"})
    crop_faces(cfg)
    make_folds(cfg)
    with pytest.raises(
        MaskcompError,
        match=r"model.backbone 'inception_v3' cannot take train.img_size=\[48, 36\] .*"
        r"the smallest size of this aspect it takes is train.img_size=\[(\d+), (\d+)\]",
    ) as err:
        train(cfg)
    assert not (cfg.paths.resolved.models / "sample").exists()
    height, width = (int(v) for v in str(err.value).rsplit("[", 1)[1].rstrip("]").split(","))
    model = timm.create_model("inception_v3", pretrained=False, num_classes=0).eval()
    with torch.inference_mode():
        model(torch.zeros(2, 3, height, width))
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 3, height - 1, round((height - 1) * 36 / 48)))
    require_input_size("vit_tiny_patch16_224", (64, 64))


# 6. a training that failed at once


@pytest.mark.slow
def test_a_failed_start_leaves_latest_alone_and_says_why(tiny, tmp_path):
    _, cfg = tiny
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    good = latest(cfg)
    broken = with_keys(cfg, model={"pretrained": str(tmp_path / "no-such-weights.pth")})
    with pytest.raises(MaskcompError, match="no such weights file"):
        train(broken)
    assert latest(cfg).run_id == good.run_id
    failed = [p.parent for p in (cfg.paths.resolved.models / "sample").glob("*/failed.json")]
    assert len(failed) == 1 and failed[0].name != good.run_id
    with pytest.raises(
        MaskcompError,
        match=rf"run sample@{failed[0].name} has no finished fold .*its training stopped "
        r"with: fold 0: model.pretrained .*no such weights file",
    ):
        infer(updated(cfg, {"run": failed[0].name}))
    page = runs_index(cfg).read_text()
    assert failed[0].name in page and "no finished fold; training stopped at fold 0: model.pretrained" in page


# 7. invisible characters in train.csv


@pytest.mark.parametrize(
    "suffix, exists, said",
    [
        ("  ", True, r"has 2 trailing spaces, and the folder '.*' exists"),
        ("\u200b", True, r"has 1 invisible character \(U\+200B\), and the folder"),
        ("  ", False, r"has 2 trailing spaces; no folder '.*' either"),
    ],
)
def test_invisible_characters_in_a_path_are_named(tiny, suffix, exists, said):
    root, cfg = tiny
    csv = root / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str)
    if not exists:
        shutil.rmtree(root / "train" / "images" / persons.loc[0, "path"])
    persons.loc[0, "path"] += suffix
    persons.to_csv(csv, index=False)
    with pytest.raises(MaskcompError, match=said):
        load_train(Context(cfg))


# 8. infer follows the checkpoint, and says so


@pytest.mark.slow
def test_infer_names_the_keys_it_takes_from_the_run(tiny, caplog):
    _, cfg = tiny
    train_fold0(cfg)
    with caplog.at_level(logging.INFO, logger="maskcomp.predict.infer"):
        infer(with_keys(cfg, model={"backbone": "resnet18"}))
    assert "predicts with its own model.backbone='mobilenetv3_small_050' (config: 'resnet18')" in caplog.text


# trained runs live in models/; an older runs/ folder is picked up


def test_an_older_runs_folder_is_moved_into_models_with_a_line(tmp_path, caplog):
    legacy = tmp_path / "work" / "runs" / "sample" / "abc123"
    legacy.mkdir(parents=True)
    (legacy / "run.json").write_text("{}")
    cfg = config_for(tmp_path / "data", tmp_path / "work")
    paths = cfg.paths.resolved
    assert (tmp_path / "work" / "runs").exists(), "building paths moves nothing"
    with caplog.at_level(logging.INFO, logger="maskcomp.core.paths"):
        parse_stage_args(stage_parser("x"), ["--config", "configs/sample.yaml", f"paths.models={paths.models}"])
    assert (paths.models / "sample" / "abc123" / "run.json").exists() and not (tmp_path / "work" / "runs").exists()
    assert "moved the trained runs of" in caplog.text


def test_an_older_runs_folder_beside_models_is_named_not_ignored(tmp_path, caplog):
    legacy = tmp_path / "work" / "runs" / "sample" / "abc123"
    legacy.mkdir(parents=True)
    (legacy / "run.json").write_text("{}")
    (tmp_path / "work" / "models").mkdir()
    with caplog.at_level(logging.WARNING, logger="maskcomp.core.paths"):
        parse_stage_args(
            stage_parser("x"), ["--config", "configs/sample.yaml", f"paths.models={tmp_path / 'work' / 'models'}"]
        )
    assert (legacy / "run.json").exists() and "holds trained runs from before" in caplog.text
