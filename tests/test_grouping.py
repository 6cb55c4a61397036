"""Person grouping: it recovers planted persons, refuses to merge different ones, and its gain is measured on
held-out folds only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskcomp.core import labels
from maskcomp.core.config import load_config
from maskcomp.data.sample import make_sample
from maskcomp.predict import grouping
from maskcomp.predict.grouping import Groups, group_images, nested_grouping, pool, purity_completeness, thumbnails


@pytest.fixture(scope="module")
def eval_persons(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouping") / "data"
    make_sample(load_config(None, [f"paths.data_root={root}"]).paths.resolved, 2, 12, seed=7)
    answers = pd.read_csv(root / "eval_answers.csv", dtype=str)
    return answers, thumbnails([str(root / "eval" / "images" / i) for i in answers["ImageID"]])


def test_grouping_recovers_planted_persons(eval_persons):
    answers, features = eval_persons
    mask_probs = np.eye(3)[answers["mask"].astype(int)] * 0.9 + 0.1 / 3
    found = group_images(features, mask_probs, min_similarity=0.4)
    scores = purity_completeness(found.group, answers["person_id"].to_numpy())
    assert scores["purity"] == 1.0 and scores["completeness"] >= 0.95, scores
    assert found.confidence[found.grouped].min() >= 0.4


def test_grouping_refuses_to_merge_different_persons():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=64), rng.normal(size=64)
    b -= b @ a / (a @ a) * a  # orthogonal looks
    person_a = a + 0.05 * rng.normal(size=(6, 64))  # six masked photos of A, A's unmasked photo missing
    person_b = b[None, :] + 0.05 * rng.normal(size=(1, 64))  # B's unmasked photo: the only anchor
    feats = np.concatenate([person_a, person_b])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    mask_probs = np.eye(3)[[0, 0, 0, 0, 0, 1, 2]]
    found = group_images(feats, mask_probs, min_similarity=0.4)
    assert not found.grouped.any(), f"A's photos were merged into B: groups {found.group}"
    assert (found.confidence[:6] == 0).all()
    # with A's own unmasked photo present, A forms one group and B stays alone
    feats2 = np.concatenate([person_a, (a / np.linalg.norm(a))[None], person_b])
    found2 = group_images(feats2, np.eye(3)[[0, 0, 0, 0, 0, 1, 2, 2]], min_similarity=0.4)
    assert (found2.group[:7] == 6).all() and found2.group[7] == 7


def test_unmasked_view_dominates_the_pooled_decision():
    # two images of one person: the masked one says male (0.6), the unmasked one says female (0.9)
    probs = {"mask": np.eye(3)[[0, 2]], "gender": np.array([[0.6, 0.4], [0.1, 0.9]]), "age": np.full((2, 3), 1 / 3)}
    groups = Groups(np.array([1, 1]), np.ones(2))
    weights = {"gender": np.array([0.2, 0.2, 1.0]), "age": np.ones(3)}
    pooled = pool(probs, np.array([0, 2]), groups, weights)
    assert (pooled["gender"].argmax(1) == 1).all()
    alone = pool(probs, np.array([0, 2]), Groups(np.array([0, 1]), np.ones(2)), weights)
    assert np.allclose(alone["gender"], probs["gender"])


def _synthetic_oof(rng, persons=60, folds=3):
    """Per-image probabilities whose gender and age are right on unmasked images and noisy on masked ones."""
    person = np.repeat(np.arange(persons), 7)
    mask = np.tile([0, 0, 0, 0, 0, 1, 2], persons)
    gender, age = rng.integers(0, 2, persons)[person], rng.integers(0, 3, persons)[person]
    y = labels.encode(mask, gender, age)
    noise = np.where(mask == 2, 0.1, 0.55)
    g = np.where(rng.random(len(y)) < noise, 1 - gender, gender)
    a = np.where(rng.random(len(y)) < noise, rng.integers(0, 3, len(y)), age)
    probs = 0.7 * np.eye(18)[labels.encode(mask, g, a)] + 0.3 / 18
    feats = np.eye(persons)[person] + 0.01 * rng.normal(size=(len(y), persons))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return probs, (person % folds), feats, person.astype(str), y


def test_nested_gain_is_positive_where_pooling_helps():
    probs, folds, feats, persons, y = _synthetic_oof(np.random.default_rng(1))
    result = nested_grouping(probs, folds, feats, persons, y, min_similarity=0.4)
    assert result.gain > 0.05
    assert all(r["purity"] == 1.0 and r["completeness"] == 1.0 for r in result.per_fold)
    assert result.weights["gender"][2] > result.weights["gender"][0], "the unmasked view must weigh more"


def test_held_out_fold_labels_never_shape_their_own_pooled_predictions(monkeypatch):
    probs, folds, feats, persons, y = _synthetic_oof(np.random.default_rng(2))
    fitted_on = []
    original = grouping.fit_view_weights
    monkeypatch.setattr(
        grouping,
        "fit_view_weights",
        lambda heads, views, groups, truth: fitted_on.append(len(views)) or original(heads, views, groups, truth),
    )
    first = nested_grouping(probs, folds, feats, persons, y, min_similarity=0.4)
    assert fitted_on == [int((folds != f).sum()) for f in range(3)] + [len(y)]
    # scramble fold 0's labels: its own pooled predictions must not move (other folds' may: their weights saw it)
    planted = y.copy()
    held = folds == 0
    planted[held] = np.random.default_rng(3).permutation(y[held])
    second = nested_grouping(probs, folds, feats, persons, planted, min_similarity=0.4)
    assert np.array_equal(first.oof_probs[held], second.oof_probs[held])
