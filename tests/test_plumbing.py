"""The plumbing between stages (issue 31): what a stored run takes from the invocation comes from the settings'
declarations, building paths has no side effect, the digest cache is read once per process."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter

import pytest
import yaml

from maskcomp.core import context
from maskcomp.core.config import dump_config, load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data import tables
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer, require_current_predictions, run_config
from maskcomp.runs import RunRef
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for, latest, run_pipeline


def test_a_stored_run_keeps_its_input_shaping_settings_and_takes_the_rest_from_the_invocation(tmp_path):
    trained = load_config(
        "configs/sample.yaml",
        ["model.backbone=resnet18", "train.img_size=[64, 48]", "crop.margin=0.3", "infer.tta=[identity]",
         "train.threads=0", "crop.workers=2", "data.skip_bad=false", "refit.seeds=1", "experiment=mine"],
    )  # fmt: skip
    run = RunRef("mine", "abc", tmp_path / "run")
    run.dir.mkdir()
    run.config.write_text(dump_config(trained))
    now = load_config(
        "configs/sample.yaml",
        ["model.backbone=efficientnet_lite0", "train.img_size=[96, 72]", "crop.margin=0.1", "infer.tta=[hflip]",
         "train.threads=1", "crop.workers=0", "data.skip_bad=true", "refit.seeds=3", f"paths.models={tmp_path}"],
    )  # fmt: skip
    used = run_config(now, run)
    assert (used.model.backbone, used.train.img_size, used.crop.margin) == ("resnet18", [64, 48], 0.3)
    assert used.experiment == "mine"
    assert (used.infer.tta, used.train.threads, used.crop.workers) == (["hflip"], 1, 0)
    assert (used.data.skip_bad, used.refit.seeds, used.paths.models) == (True, 3, str(tmp_path))


def test_a_stored_config_without_a_later_section_still_loads(tmp_path):
    stored = yaml.safe_load(dump_config(load_config("configs/sample.yaml")))
    del stored["refit"], stored["partial_run"]
    run = RunRef("sample", "abc", tmp_path / "run")
    run.dir.mkdir()
    run.config.write_text(yaml.safe_dump(stored))
    assert run_config(load_config("configs/sample.yaml", ["refit.seeds=2"]), run).refit.seeds == 2


def test_building_paths_moves_nothing_and_the_digest_cache_is_read_once(tmp_path):
    legacy = tmp_path / "runs" / "sample" / "abc"
    legacy.mkdir(parents=True)
    (legacy / "run.json").write_text("{}")
    cfg = load_config(None, [f"paths.models={tmp_path / 'models'}", f"paths.cache={tmp_path / 'cache'}"])
    cfg.paths.resolved
    assert (legacy / "run.json").exists() and not (tmp_path / "models").exists()
    ctx = Context(cfg)
    assert ctx.digests is ctx.digests is ctx.with_settings(updated(cfg, {"seed": 5})).digests


@pytest.mark.slow
def test_only_the_crop_stage_lists_or_opens_the_raw_images(tiny_root, tmp_path, monkeypatch):
    """infer and ensemble check their upstream against the crop stage's record (items.csv, a stat per image): with
    nothing changed, no image folder is listed and no image opened; predicting lists the training images once."""
    root = shutil.copytree(tiny_root, tmp_path / "data")
    cfg = config_for(root, tmp_path, *TINY_MODEL, "train.epochs=1", "infer.tta=[identity]")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    calls = Counter()
    for name in ("_read_train", "_load_eval", "check_image"):
        real = getattr(tables, name)
        monkeypatch.setattr(tables, name, lambda *a, real=real, name=name: calls.update([name]) or real(*a))
    real_cache = context.DigestCache
    monkeypatch.setattr(context, "DigestCache", lambda *a: calls.update(["digests"]) or real_cache(*a))
    for stage, listed in ((infer, {"_read_train": 1, "check_image": 42}), (infer, {}), (ensemble, {})):
        calls.clear()
        stage(cfg)  # predicting (the validation images: one listing for both folds), then all current, the submission
        assert calls == {**listed, "digests": 1}, stage.__name__  # one context per call: the digest file read once
    image = next((root / "train" / "images").rglob("mask1.*"))
    image.write_bytes(image.read_bytes() + b"\0")  # one training image's bytes change: the stat check sees it
    with pytest.raises(
        MaskcompError, match=r"crops were made from other images or settings \(train\); run `make crop`"
    ):
        infer(cfg)


@pytest.mark.slow
def test_folds_predicted_when_the_manifest_was_infer_json_stay_current(trained_tiny):
    _, cfg = trained_tiny
    run_pipeline(cfg)
    run = latest(cfg)
    folds = [run.fold(f) for f in run.trained_folds()]
    for files in folds:
        (files.dir / "predictions.json").rename(files.dir / "infer.json")  # as an older checkout left it
    stamps = [files.test_probs.stat().st_mtime_ns for files in folds]
    infer(cfg)
    assert [files.test_probs.stat().st_mtime_ns for files in folds] == stamps, "nothing predicted again"
    assert all(files.predictions_manifest.name == "infer.json" for files in folds)
    ensemble(cfg)  # reads the old manifests as current
    infer(updated(cfg, {"infer.tta": ["identity", "hflip"]}))  # predictions to make again: written under the new name
    assert [
        sorted(p.name for p in files.dir.glob("*.json") if p.name not in ("done.json", "env.json")) for files in folds
    ] == [["predictions.json"]] * len(folds)


@pytest.mark.slow
def test_checks_build_and_write_nothing(trained_tiny):
    """With the crop array and the digest cache deleted and a training image touched (same bytes, a new stat), the
    checks infer and ensemble make pass and create nothing; the ensemble stage then writes its submission and, when it
    ends, the digests it learned, and builds no crop array."""
    root, cfg = trained_tiny
    run_pipeline(cfg)
    cache = cfg.paths.resolved.cache
    shutil.rmtree(cache)
    image = next((root / "train" / "images").rglob("mask1.*"))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    require_current_predictions(Context(cfg), latest(cfg))
    assert not cache.exists()
    ensemble(cfg)
    assert sorted(p.name for p in cache.iterdir()) == ["digests.json"]
    assert str(image.resolve()) in (cache / "digests.json").read_text()


def test_the_command_line_opens_one_context_and_passes_it_down(tmp_path, monkeypatch):
    """`python -m maskcomp train ...` hands the stage the context it built from --config and the overrides."""
    import signal

    import maskcomp.__main__ as entry
    from maskcomp.train import trainer

    received = []
    monkeypatch.setattr(trainer, "train", lambda ctx, **options: received.append((ctx, options)))
    monkeypatch.setattr(sys, "argv", sys.argv)  # the entry point replaces it
    before = signal.getsignal(signal.SIGTERM)
    try:
        entry.main(["train", "--config", "configs/sample.yaml", f"paths.cache={tmp_path}", "seed=3", "--fold", "1"])
    finally:
        signal.signal(signal.SIGTERM, before)
    ((ctx, options),) = received
    assert isinstance(ctx, Context) and (ctx.cfg.seed, ctx.paths.cache) == (3, tmp_path)
    assert options == {"folds": [1], "resume": False}
