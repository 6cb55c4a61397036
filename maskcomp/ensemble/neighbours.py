"""The look-alike persons step (infer.neighbours): each head's probabilities blended with the age-group and gender
shares among an image's k nearest training persons (predict/neighbours.py), p' = (1 - w) p + w shares. k and w are
chosen per head for macro F1 on k-1 folds and scored on the held-out one; the step is applied to the eval set (k and w
chosen on all folds) only when that nested gain is positive, like the biases."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..core import labels
from ..core.metrics import macro_f1
from ..core.paths import Paths
from ..predict.grouping import compose
from ..predict.neighbours import SHARES

log = logging.getLogger(__name__)

BLEND_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)  # 0: the head as it is


@dataclass(frozen=True)
class Shares:
    """Each head's look-alike shares: (k choices, images, classes) on the OOF rows (the blend's order) and on eval
    (the fold models' mean)."""

    ks: tuple[int, ...]
    oof: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]

    def rows(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        return {h: s[:, keep] for h, s in self.oof.items()}


def read_shares(ref, oof_paths: list[str], paths: Paths) -> Shares | None:
    """The run's neighbours.npz of every trained fold, the OOF side in `oof_paths` order (None: a fold has none)."""
    files = [ref.fold(f).neighbours for f in ref.trained_folds()]
    if not files or not all(f.exists() for f in files):
        return None
    by_key, evals, ks = {h: {} for h in SHARES}, {h: [] for h in SHARES}, ()
    for file in files:
        with np.load(file) as saved:
            ks = tuple(int(k) for k in saved["k"])
            for head in SHARES:
                evals[head].append(saved[f"eval_{head}"])
                by_key[head].update(zip(saved["oof_keys"].tolist(), np.moveaxis(saved[f"oof_{head}"], 1, 0)))
    order = [paths.image_key(p) for p in oof_paths]
    if any(k not in by_key["age"] for k in order):
        log.warning("look-alike shares cover other OOF images than the blend; run `make infer` again")
        return None
    oof = {h: np.stack([by_key[h][k] for k in order], axis=1) for h in SHARES}
    return Shares(ks, oof, {h: np.mean(evals[h], axis=0) for h in SHARES})


def with_shares(probs: np.ndarray, shares: dict[str, np.ndarray], choice: dict[str, tuple[int, float]]) -> np.ndarray:
    """18-class probabilities whose heads are blended with the shares of the chosen (k index, weight) per head."""
    heads = labels.head_probs_from_18(probs)
    for head, (k, weight) in choice.items():
        heads[head] = (1 - weight) * heads[head] + weight * shares[head][k]
    return compose(heads)


def best_choice(probs: np.ndarray, shares: dict[str, np.ndarray], y: np.ndarray) -> dict[str, tuple[int, float]]:
    """(k index, weight) per head for the highest macro F1, one head after the other (age first: most is lost
    there); weight 0 leaves a head as it is."""
    choice: dict[str, tuple[int, float]] = {}
    for head in ("age", "gender"):
        options = [(k, w) for k in range(len(next(iter(shares.values())))) for w in BLEND_WEIGHTS]
        scores = [macro_f1(y, with_shares(probs, shares, {**choice, head: o}).argmax(1)) for o in options]
        choice[head] = options[int(np.argmax(scores))]  # ties: the first, weight 0
    return choice


def nested_shares(probs: np.ndarray, shares: Shares, y: np.ndarray, folds: np.ndarray) -> dict:
    """The choice made on k-1 folds, applied to the held-out one: the honest gain, the pooled held-out probabilities,
    and the choice made on all folds (for the eval set)."""
    pooled, per_fold = probs.copy(), []
    for fold in np.unique(folds):
        held = folds == fold
        choice = best_choice(probs[~held], shares.rows(~held), y[~held])
        pooled[held] = with_shares(probs[held], shares.rows(held), choice)
        before, after = macro_f1(y[held], probs[held].argmax(1)), macro_f1(y[held], pooled[held].argmax(1))
        per_fold.append({"fold": int(fold), "choice": described(choice, shares.ks), "before": before, "after": after})
    gain = float(np.mean([r["after"] - r["before"] for r in per_fold]))
    return {"choice": best_choice(probs, shares.oof, y), "gain": gain, "per_fold": per_fold, "pooled": pooled}


def described(choice: dict[str, tuple[int, float]], ks: tuple[int, ...]) -> dict[str, dict]:
    return {head: {"k": ks[k], "weight": w} for head, (k, w) in choice.items()}


def look_alikes(shares: Shares | None, y: np.ndarray, folds: np.ndarray, oof: np.ndarray, test: np.ndarray):
    """(OOF, eval, summary) after the step: the OOF pooled held-out and the eval set blended when the nested gain is
    positive; unchanged (summary None) without shares or with a single fold."""
    if shares is None or len(np.unique(folds)) < 2:
        return oof, test, None
    nested = nested_shares(oof, shares, y, folds)
    summary = {"gain": nested["gain"], "per_fold": nested["per_fold"], "choice": described(nested["choice"], shares.ks)}
    if nested["gain"] <= 0:
        log.info("look-alike persons not applied: on held-out folds they change macro F1 by %+.4f", nested["gain"])
        return oof, test, {**summary, "applied": False}
    log.info("look-alike persons blended in (nested gain %+.4f): %s", nested["gain"], summary["choice"])
    return nested["pooled"], with_shares(test, shares.eval, nested["choice"]), {**summary, "applied": True}
