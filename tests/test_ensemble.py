import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader

from maskcomp.core import labels
from maskcomp.core.errors import MaskcompError
from maskcomp.core.metrics import bootstrap_macro_f1, macro_f1, scores
from maskcomp.core.settings import EnsembleSettings
from maskcomp.ensemble import decide as ensemble_decide
from maskcomp.ensemble.blend import fit_weights
from maskcomp.ensemble.decide import nested_bias_gain, tune_biases
from maskcomp.ensemble.submission import validate_submission
from maskcomp.train.dataset import CropDataset
from maskcomp.train.evaluate import predict, tta_view


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 18, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 12, 300))
    assert macro_f1(y, pred) == pytest.approx(f1_score(y, pred, average="macro"))


def test_scores_per_head_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 18, 200)
    probs = rng.dirichlet(np.ones(18), 200)
    s = scores(y, probs)
    pred = probs.argmax(1)
    assert s["f1_age"] == pytest.approx(f1_score(y % 3, pred % 3, average="macro"))
    assert s["f1_mask"] == pytest.approx(f1_score(y // 6, pred // 6, average="macro"))


class FlipInvariant(nn.Module):
    """Logits from per-row means: a horizontal flip cannot change them."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 8, 18)

    def forward(self, x):
        return {"label": self.proj(x.mean(-1).flatten(1))}


def test_person_bootstrap_resamples_whole_persons():
    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(60), 7)
    y = np.repeat(rng.integers(0, 3, 60), 7)
    # a person's 7 images are all right or all wrong, as when a model misreads one face
    pred = np.where(np.repeat(rng.random(60) < 0.7, 7), y, (y + 1) % 3)
    by_person = bootstrap_macro_f1(y, pred, persons, rounds=200)
    by_image = bootstrap_macro_f1(y, pred, np.arange(len(y)), rounds=200)
    assert by_person.shape == (200,) and np.array_equal(by_person, bootstrap_macro_f1(y, pred, persons, rounds=200))
    assert abs(by_person.mean() - macro_f1(y, pred)) < 0.03
    assert by_person.std() > 1.8 * by_image.std()  # ~sqrt(7) wider: 7 images of a person are one draw
    assert np.all(bootstrap_macro_f1(y, y, persons, rounds=20) == 1.0)


def test_tta_with_flip_invariant_model_changes_nothing():
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 6, 3), dtype=np.uint8)
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    ds = CropDataset(images, np.arange(10), {}, A.Compose([A.Normalize(), ToTensorV2()]))
    loader = DataLoader(ds, batch_size=4)
    model = FlipInvariant()
    plain, _ = predict(model, loader, torch.device("cpu"))
    for reduce in ("mean_probs", "mean_logits"):
        flipped, heads = predict(model, loader, torch.device("cpu"), tta=("identity", "hflip"), reduce=reduce)
        assert np.allclose(plain, flipped, atol=1e-6)
        assert np.allclose(heads["gender"].sum(1), 1, atol=1e-6)


def test_tta_views_keep_shape_and_unknown_view_fails():
    x = torch.randn(2, 3, 16, 12)
    assert tta_view(x, "scale:1.15").shape == x.shape
    assert torch.equal(tta_view(x, "hflip"), x.flip(-1))
    with pytest.raises(MaskcompError, match="unknown view 'rot90'"):
        tta_view(x, "rot90")


def _noisy_oof(seed=0, n=600):
    rng = np.random.default_rng(seed)
    y = rng.choice(18, n, p=np.r_[np.full(6, 0.12), np.full(12, 0.28 / 12)])
    logits = rng.normal(0, 1, (n, 18))
    logits[np.arange(n), y] += 1.2
    logits[:, :6] += 0.8  # a model biased towards the frequent classes
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p, rng.integers(0, 4, n)


@pytest.mark.parametrize("mode", ["class", "head"])
def test_bias_tuning_raises_macro_f1_of_a_biased_model(mode):
    """The generated model favours the frequent classes 0-5 by +0.8 in log space; tuned biases must raise macro F1
    clearly on every seed (biases of zero, a tuner that does nothing, fail)."""
    for seed in range(3):
        y, p, _ = _noisy_oof(seed)
        logp = np.log(p)
        bias = tune_biases(logp, y, rounds=2, mode=mode)
        assert bias.shape == (18,)
        assert macro_f1(y, (logp + bias).argmax(1)) > macro_f1(y, logp.argmax(1)) + 0.01


def test_a_held_out_fold_never_tunes_its_own_biases(monkeypatch):
    """Every tuning inside the nested estimate sees all folds but the one it is scored on: each fold's rows carry
    a marker, and each call must lack exactly one fold's marker, every fold once."""

    y, p, folds = _noisy_oof(3)
    logp = np.log(p)
    logp[:, 0] = -100.0 - folds  # marker: the fold of each row
    seen = []
    original = ensemble_decide.tune_biases
    monkeypatch.setattr(
        ensemble_decide,
        "tune_biases",
        lambda lp, yy, rounds, mode: seen.append(set(np.unique(-100.0 - lp[:, 0]))) or original(lp, yy, rounds, mode),
    )
    out = ensemble_decide.nested_bias_gain(logp, y, folds, rounds=1, mode="class")
    every = set(np.unique(folds).astype(float))
    assert sorted(tuple(every - s) for s in seen) == [(f,) for f in sorted(every)]
    assert len(out["per_fold_before"]) == len(out["per_fold_after"]) == 4


def test_a_fold_whose_labels_would_pull_the_biases_keeps_its_nested_score():
    """Fold 0's images all say class 17: tuning on fold 0 itself would favour 17 and score it well, but its
    nested score comes from biases of the other folds, and stays near its score without biases."""
    y, p, folds = _noisy_oof(0, n=800)
    y = y.copy()
    y[folds == 0] = 17
    logp = np.log(p)
    out = nested_bias_gain(logp, y, folds, rounds=2, mode="class")
    own = tune_biases(logp[folds == 0], y[folds == 0], rounds=2, mode="class")
    own_score = macro_f1(y[folds == 0], (logp[folds == 0] + own).argmax(1))
    assert own_score > 0.3 and out["per_fold_after"][0] < 0.05


def test_fitted_weights_are_non_negative_and_do_not_hurt():
    y, good, _ = _noisy_oof(4)
    rng = np.random.default_rng(9)
    noise = rng.dirichlet(np.ones(18), len(y))
    w = fit_weights([good, noise], y)
    assert (w >= 0).all() and w.sum() == pytest.approx(1) and w[0] > w[1]

    def nll(p):
        return -np.log(p[np.arange(len(y)), y]).mean()

    assert nll(w[0] * good + w[1] * noise) <= nll(0.5 * good + 0.5 * noise) + 1e-9


def _info():
    return pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg"], "ans": ["", "", ""]})


@pytest.mark.parametrize(
    "sub,pattern",
    [
        (pd.DataFrame({"ImageID": ["a.jpg", "b.jpg"], "ans": [1, 2]}), "2 rows but info.csv has 3"),
        (pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "x.jpg"], "ans": [1, 2, 3]}), "ImageIDs differ"),
        (pd.DataFrame({"ImageID": ["b.jpg", "a.jpg", "c.jpg"], "ans": [1, 2, 3]}), "not in info.csv order"),
        (pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, None, 3]}), "missing or non-numeric"),
        (pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, 18, 3]}), "whole numbers 0..17"),
        (pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, 2.5, 3]}), "whole numbers 0..17"),
        (pd.DataFrame({"id": ["a.jpg", "b.jpg", "c.jpg"], "ans": [1, 2, 3]}), "columns must be ImageID,ans"),
    ],
)
def test_submission_validator_rejects_malformed(sub, pattern):
    with pytest.raises(MaskcompError, match=pattern):
        validate_submission(sub, _info(), "sub.csv")


def test_submission_validator_accepts_good_one():
    validate_submission(pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg"], "ans": [0, 17, 5]}), _info(), "sub.csv")


def test_one_fold_gets_no_unmeasured_biases():
    """With OOF of a single fold there is nothing to tune on but the fold itself: `auto` applies no biases and
    reports the plain OOF score (before, nested tuning on zero rows gave NaN warnings and a meaningless gain)."""
    import warnings

    from maskcomp.ensemble.decide import decide

    y, p, _ = _noisy_oof(5)
    logp = np.log(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = decide(logp, y, np.zeros(len(y), int), EnsembleSettings(tune_biases="auto", bias_rounds=1))
        forced = decide(logp, y, np.zeros(len(y), int), EnsembleSettings(tune_biases=True, bias_rounds=1))
    assert not auto.biases.any() and auto.nested is None and auto.cv_f1 == auto.before["f1"]
    assert forced.biases.any() and forced.nested is None and forced.cv_f1 == forced.before["f1"] < forced.after_f1


def test_each_head_comes_from_the_experiment_named_for_it():
    """ensemble.heads: class (m, g, a) of the composed prediction is P_a(mask=m) * P_b(gender=g) * P_a(age=a), each
    head's marginal summed by hand from its own experiment's 18 probabilities, on OOF and eval alike."""
    from maskcomp.ensemble.blend import Experiment, compose_heads

    rng = np.random.default_rng(0)

    def experiment(n_oof=6, n_test=4):
        oof, test = rng.dirichlet(np.ones(18), n_oof), rng.dirichlet(np.ones(18), n_test)
        frame = pd.DataFrame(oof, columns=labels.PROB_COLUMNS).assign(label=0, fold=[0, 1] * (n_oof // 2))
        return Experiment(frame, test, None, [f"e{i}" for i in range(n_test)], None)

    a, b = experiment(), experiment()
    composed = compose_heads({"mask": "a", "gender": "b", "age": "a"}, {"a": a, "b": b})

    def by_hand(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
        out = np.zeros_like(pa)
        for c in range(18):
            m, g, age = c // 6, (c // 3) % 2, c % 3
            mask_p = sum(pa[:, k] for k in range(18) if k // 6 == m)
            gender_p = sum(pb[:, k] for k in range(18) if (k // 3) % 2 == g)
            age_p = sum(pa[:, k] for k in range(18) if k % 3 == age)
            out[:, c] = mask_p * gender_p * age_p
        return out

    oof_a, oof_b = a.oof[labels.PROB_COLUMNS].to_numpy(), b.oof[labels.PROB_COLUMNS].to_numpy()
    assert np.allclose(composed.oof[labels.PROB_COLUMNS].to_numpy(), by_hand(oof_a, oof_b))
    assert np.allclose(composed.test_probs, by_hand(a.test_probs, b.test_probs))
    assert np.allclose(composed.test_probs.sum(1), 1) and composed.ids == a.ids
    assert composed.oof["fold"].tolist() == a.oof["fold"].tolist(), "folds and labels kept for the decision steps"
    assert not np.allclose(composed.test_probs, a.test_probs), "the gender head really came from b"


def test_ensemble_heads_names_every_head_once():
    from maskcomp.core.config import load_config

    with pytest.raises(MaskcompError, match=r"ensemble.heads=\{'mask': 'a'\}: expected an experiment for each of mask"):
        load_config(None, ["ensemble.heads={mask: a}"])
