"""The winners' levers: look-alike persons (infer.neighbours) found by the fold model's features and blended into the
heads only when they help on held-out folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core import labels
from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.device import Placement
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.pseudo import pseudo_rows
from maskcomp.data.tables import load_train
from maskcomp.ensemble.neighbours import Shares, look_alikes
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.predict.neighbours import label_shares, pooled_persons
from maskcomp.runs import resolve_run
from maskcomp.train.trainer import FoldTrainer, train

from conftest import TINY, config_for


def test_a_planted_look_alike_persons_labels_are_the_shares():
    """Five training persons whose 7 images lie near the query's direction carry age >=60 and female; fifty others,
    elsewhere, carry <30 and male: the query's 5 nearest persons (images pooled) give shares of 1 for >=60, female."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    near = direction + 0.1 * rng.normal(size=(5 * 7, 32))
    far = rng.normal(size=(50 * 7, 32))
    feats = np.concatenate([near, far])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    persons = np.repeat([f"n{i}" for i in range(5)] + [f"f{i:02d}" for i in range(50)], 7)
    ids, pooled = pooled_persons(feats, persons)
    assert len(ids) == 55 and np.allclose(np.linalg.norm(pooled, axis=1), 1)
    age = np.array([2 if p.startswith("n") else 0 for p in ids])
    gender = np.array([1 if p.startswith("n") else 0 for p in ids])
    query = (direction / np.linalg.norm(direction))[None]
    shares = label_shares(query, pooled, {"age": age, "gender": gender}, ks=(5, 10))
    assert shares["age"][0].tolist() == [[0.0, 0.0, 1.0]] and shares["gender"][0].tolist() == [[0.0, 1.0]]
    assert shares["age"][1].tolist() == [[0.5, 0.0, 0.5]], "k=10: the five look-alikes and the five nearest others"


def _oof(n: int = 600, seed: int = 0):
    """18-class OOF probabilities that know mask and gender but are blind to age (uniform age marginal)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 18, n)
    truth = labels.head_labels(y)
    heads = {"mask": np.eye(3)[truth["mask"]] * 0.8 + 0.2 / 3, "gender": np.eye(2)[truth["gender"]] * 0.8 + 0.1,
             "age": rng.dirichlet(np.ones(3) * 50, n)}  # fmt: skip
    from maskcomp.predict.grouping import compose

    return y, compose(heads), np.arange(n) % 3, truth


def test_informative_look_alikes_are_applied_and_uniform_ones_are_not():
    y, probs, folds, truth = _oof()
    rng = np.random.default_rng(1)
    informative = np.eye(3)[np.where(rng.random(len(y)) < 0.8, truth["age"], rng.integers(0, 3, len(y)))]
    age = np.stack([informative, np.full((len(y), 3), 1 / 3)])  # k choices: an informative one, a useless one
    gender = np.full((2, len(y), 2), 0.5)
    shares = Shares((5, 10), {"age": age, "gender": gender}, {"age": age[:, :50], "gender": gender[:, :50]})
    oof, test, summary = look_alikes(shares, y, folds, probs, probs[:50])
    assert summary["applied"] and summary["gain"] > 0.1 and summary["choice"]["age"]["k"] == 5
    assert (oof.argmax(1) == y).mean() > (probs.argmax(1) == y).mean() + 0.2
    assert not np.allclose(test, probs[:50])

    uniform = Shares((5,), {"age": np.full((1, len(y), 3), 1 / 3), "gender": np.full((1, len(y), 2), 0.5)},
                     {"age": np.full((1, 50, 3), 1 / 3), "gender": np.full((1, 50, 2), 0.5)})  # fmt: skip
    oof, test, summary = look_alikes(uniform, y, folds, probs, probs[:50])
    assert summary["applied"] is False and summary["gain"] == 0.0
    assert oof is probs and np.array_equal(test, probs[:50]), "not applied: the eval blend is left as it was"


@pytest.mark.slow
def test_infer_writes_look_alike_shares_and_the_ensemble_reports_the_step(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY, "infer.neighbours=true")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    run = resolve_run(cfg.paths.resolved, "sample")
    for fold in run.trained_folds():
        with np.load(run.fold(fold).neighbours) as saved:
            n_val = len(saved["oof_keys"])
            assert saved["oof_age"].shape == (4, n_val, 3) and saved["eval_gender"].shape == (4, 14, 2)
            assert np.allclose(saved["oof_age"].sum(-1), 1) and n_val == 21
            assert all(k.startswith("train/images/") for k in saved["oof_keys"].tolist())
    side = json.loads(ensemble(cfg).with_suffix(".json").read_text())
    step = side["look_alike_persons"]
    assert set(step) == {"gain", "per_fold", "choice", "applied"} and len(step["per_fold"]) == 2
    assert set(step["choice"]) == {"age", "gender"}


def _probs_file(folder, rows: list[tuple[str, int, float]]):
    """A submission with its <name>.probs.csv: each image's class gets `top`, the rest shares what is left."""
    folder.mkdir(parents=True, exist_ok=True)
    table = []
    for image, cls, top in rows:
        probs = np.full(18, (1 - top) / 17)
        probs[cls] = top
        table.append([image, *probs])
    pd.DataFrame(table, columns=["ImageID", *labels.PROB_COLUMNS]).to_csv(folder / "sub.probs.csv", index=False)
    pd.DataFrame({"ImageID": [r[0] for r in rows], "ans": [r[1] for r in rows]}).to_csv(folder / "sub.csv", index=False)
    return folder / "sub.csv"


def test_pseudo_rows_are_the_confident_eval_images_with_decoded_labels(tmp_path):
    sub = _probs_file(tmp_path / "s", [("a.jpg", 17, 0.95), ("b.jpg", 3, 0.5), ("c.jpg", 7, 0.91), ("d.jpg", 0, 0.8)])
    cfg = load_config(
        None, [f"paths.data_root={tmp_path / 'data'}", f"pseudo.submission={sub}", "pseudo.threshold=0.9"]
    )
    rows = pseudo_rows(cfg)
    assert rows["image_path"].tolist() == [str(tmp_path / "data" / "eval" / "images" / i) for i in ("a.jpg", "c.jpg")]
    assert rows[["mask", "gender_label", "age_group", "label"]].values.tolist() == [[2, 1, 2, 17], [1, 0, 1, 7]]
    assert rows["age"].tolist() == [62, 45] and rows["person_id"].tolist() == ["eval:a.jpg", "eval:c.jpg"]
    # a grouped submission: an image counts with its person's mean confidence: a and d (0.875) stay at 0.85, b and c
    # (0.705) go, though c alone was confident
    groups = {"ImageID": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "group": ["a.jpg", "b.jpg", "b.jpg", "a.jpg"]}
    pd.DataFrame(groups).to_csv(tmp_path / "s" / "sub.groups.csv", index=False)
    grouped = pseudo_rows(updated(cfg, {"pseudo.threshold": 0.85}))
    assert [p.rsplit("/", 1)[1] for p in grouped["image_path"]] == ["a.jpg", "d.jpg"]
    assert grouped["person_id"].tolist() == ["eval:a.jpg", "eval:a.jpg"] and grouped["label"].tolist() == [17, 0]
    # no image reaches the threshold: refused (a run with no pseudo-label would only repeat the one before)
    with pytest.raises(MaskcompError, match=r"pseudo.threshold=0.99: no eval image of sub.csv reaches it \(confidence: "
                       r"median 0.79, 90th percentile 0.88, highest 0.88\); lower pseudo.threshold"):  # fmt: skip
        pseudo_rows(updated(cfg, {"pseudo.threshold": 0.99}))
    with pytest.raises(MaskcompError, match=r"pseudo.submission: .*nothing.probs.csv is missing .*run `make ensemble`"):
        pseudo_rows(updated(cfg, {"pseudo.submission": str(tmp_path / "nothing.csv")}))


@pytest.mark.slow
def test_a_pseudo_labelled_run_trains_on_eval_images_and_validates_on_real_labels_only(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY)
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    sub = ensemble(cfg)
    first = resolve_run(cfg.paths.resolved, "sample")
    pseudo = updated(cfg, {"pseudo.submission": str(sub), "pseudo.threshold": 0.0})
    train(pseudo)
    run = resolve_run(cfg.paths.resolved, "sample")
    assert run.run_id != first.run_id, "a pseudo-labelled run is a new run, keyed by the probabilities' content"
    trainer = FoldTrainer(Context(pseudo), 0, load_train(Context(pseudo)), run, Placement(torch.device("cpu")))
    added = trainer.train_df[trainer.train_df["image_path"].str.contains("/eval/images/")]
    assert len(added) == 14 and not trainer.val_df["image_path"].str.contains("/eval/images/").any()
    for fold in run.trained_folds():
        oof = pd.read_csv(run.fold(fold).oof)
        assert not oof["image_path"].astype(str).str.contains("eval/").any(), "validation folds hold real labels only"
    train(pseudo)
    assert resolve_run(cfg.paths.resolved, "sample").run_id == run.run_id, "the same probabilities: the same run"
