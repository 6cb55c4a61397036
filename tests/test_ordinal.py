"""The ordinal age head: P(age >= k) per cut point, age groups cut anywhere on that scale, cut points tuned
nested on OOF."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core import labels
from maskcomp.core.settings import LossSettings
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.blend import nested_age_cuts, with_age_cuts
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.runs import read_oof, read_test_table, resolve_run
from maskcomp.train.losses import Criterion
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

CUTS = np.array(labels.AGE_CUTS)


def exact(ages) -> np.ndarray:
    return (np.asarray(ages)[:, None] >= CUTS[None, :]).astype(float)


def test_age_groups_follow_the_cut_points():
    ages = np.array([20, 29, 30, 45, 58, 59, 60, 70])
    assert labels.age_groups_from_ordinal(exact(ages)).argmax(1).tolist() == labels.age_group(ages).tolist()
    assert labels.age_groups_from_ordinal(exact(ages), 28, 58).argmax(1).tolist() == [0, 1, 1, 1, 2, 2, 2, 2]


def test_ordinal_loss_rewards_the_right_side_of_each_cut():
    criterion = Criterion(
        LossSettings(),
        {"age_ord": len(CUTS)},
    )
    ages = torch.tensor([22, 40, 63])
    right = torch.tensor(exact(ages.numpy()) * 20 - 10, dtype=torch.float32)
    assert float(criterion({"age_ord": right}, {"age_years": ages})) < 1e-3
    assert float(criterion({"age_ord": -right}, {"age_years": ages})) > 5


def test_held_out_labels_never_choose_their_own_cut_points():
    rng = np.random.default_rng(0)
    n = 600
    ages = rng.integers(18, 75, n)
    y = labels.encode(rng.integers(0, 3, n), rng.integers(0, 2, n), labels.age_group(ages))
    # predictions that read everyone as 3 years older: cut points a little higher than 30/60 fit better
    p_ge = np.clip(exact(ages + 3) * 0.9 + 0.05, 0, 1)
    m, g, _ = labels.decode(y)
    probs = with_age_cuts(np.eye(18)[labels.encode(m, g, 0)] * 0.9 + 0.1 / 18, p_ge, 30, 60)
    folds = np.arange(n) % 3
    first = nested_age_cuts(probs, p_ge, y, folds)
    assert first["gain"] > 0 and first["cuts"] != [30, 60]
    planted = y.copy()
    held = folds == 0
    planted[held] = rng.permutation(y[held])
    second = nested_age_cuts(probs, p_ge, planted, folds)
    assert np.array_equal(first["pooled"][held], second["pooled"][held])
    assert first["per_fold"][0]["cuts"] == second["per_fold"][0]["cuts"]


@pytest.mark.slow
def test_ordinal_run_end_to_end(tiny_root, tmp_path):
    cfg = config_for(
        tiny_root,
        tmp_path,
        "model.head=ordinal",
        *TINY_MODEL,
        "train.epochs=1",
        "ensemble.tune_age_cuts=true",
    )
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    run = infer(cfg)
    oof = read_oof(run, cfg.paths.resolved)
    assert set(labels.AGE_ORD_COLUMNS) <= set(oof.columns)
    assert set(labels.AGE_ORD_COLUMNS) <= set(read_test_table(run, 0).columns)
    side = json.loads(ensemble(cfg).with_suffix(".json").read_text())
    assert side["age_cuts"]["applied"] is True and len(side["age_cuts"]["per_fold"]) == 2
    young, old = side["age_cuts"]["cuts"]
    assert young in labels.AGE_CUTS and old in labels.AGE_CUTS and young < old
    assert resolve_run(cfg.paths.resolved, "sample").run_id == run.run_id
    assert pd.read_csv(run.fold_dir(0) / "metrics.csv")["f1_age"].notna().all()
