"""make refit: models on every training person for the folds' best-epoch count, predicted by make infer, submitted
with ensemble.models=refit|both while the CV stays the fold models'."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskcomp.core.config import updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.tables import load_train
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.runs import resolve_run
from maskcomp.train.refit import refit
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

pytestmark = pytest.mark.slow


def test_refit_trains_on_everyone_and_submits_with_the_folds_cv(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=2", "refit.seeds=2", "ensemble.stamped_copy=false")
    crop_faces(cfg)
    make_folds(cfg)
    with pytest.raises(MaskcompError, match="run `make train` before `make refit`"):
        refit(cfg)
    train(cfg)
    run, models = refit(cfg)
    best = [json.loads(run.done(f).read_text())["best_epoch"] for f in run.trained_folds()]
    epochs = int(np.ceil(np.median(best)))
    assert [m.dir.name for m in run.finished_refits()] == [f"epochs{epochs}-seed0", f"epochs{epochs}-seed1"]
    for files in models:
        history = pd.read_csv(files.metrics)
        assert len(history) == epochs, "as many epochs as the folds' median best epoch"
        env = json.loads(files.env.read_text())
        assert env["train_images"] == len(load_train(Context(cfg))), "every training image, no fold held out"
    digests = [files.best.read_bytes() for files in models]
    assert digests[0] != digests[1], "each seed its own model"
    stamp = models[0].best.stat().st_mtime_ns
    refit(cfg)
    assert models[0].best.stat().st_mtime_ns == stamp, "a finished refit model is kept, not trained again"
    infer(cfg)
    sides = {}
    for which in ("folds", "refit", "both"):
        path = ensemble(updated(cfg, {"ensemble.models": which, "ensemble.name": which}))
        sides[which] = json.loads(path.with_suffix(".json").read_text())
    assert sides["refit"]["cv_macro_f1"] == sides["folds"]["cv_macro_f1"] == sides["both"]["cv_macro_f1"]
    names = f"refit/epochs{epochs}-seed0, refit/epochs{epochs}-seed1"
    assert sides["refit"]["summary"]["eval_models"].startswith(f"refit: {run.label} {names} averaged")
    assert sides["both"]["summary"]["eval_models"].startswith(f"both: {run.label} fold0, fold1, {names} averaged")
    subs = {m: pd.read_csv(cfg.paths.resolved.submissions / f"{m}.csv") for m in sides}
    refit_probs = np.mean([np.load(files.test_probs) for files in models], axis=0)
    assert (subs["refit"]["ans"].to_numpy() == refit_probs.argmax(1)).mean() > 0.9  # biases may move a few


def test_ensemble_models_refit_without_refit_models_says_what_to_run(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=1", "ensemble.models=refit")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    with pytest.raises(MaskcompError, match=r"has no refit model; run `make refit`, or set ensemble.models=folds"):
        ensemble(cfg)
    assert resolve_run(cfg.paths.resolved, "sample").finished_refits() == []
