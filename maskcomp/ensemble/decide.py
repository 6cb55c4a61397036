"""The F1-optimised decision: argmax of log p + b, where b are per-class biases tuned on OOF probabilities by
coordinate ascent to maximise macro F1 (bias_mode=head: b[mask, gender, age] = bm + bg + ba, 8 parameters). Its
honest gain is measured nested: tune on k-1 folds' OOF, score the held-out fold."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..core import labels
from ..core.errors import MaskcompError
from ..core.metrics import macro_f1, scores
from ..core.settings import EnsembleSettings

log = logging.getLogger(__name__)


BIAS_GRID = np.round(np.arange(-3.0, 3.01, 0.1), 2)


def bias_basis(mode: str) -> np.ndarray:
    """(parameters, 18) matrix: biases = theta @ basis."""
    if mode == "class":
        return np.eye(labels.NUM_CLASSES)
    if mode == "head":
        m, g, a = labels.decode(np.arange(labels.NUM_CLASSES))
        return np.concatenate([np.eye(3)[m].T, np.eye(2)[g].T, np.eye(3)[a].T])
    raise MaskcompError(f"ensemble.bias_mode '{mode}' is unknown; use class or head")


def tune_biases(logp: np.ndarray, y: np.ndarray, rounds: int = 3, mode: str = "class") -> np.ndarray:
    """Coordinate ascent on per-class log-probability biases; only strict improvements are kept, so OOF macro F1
    never drops."""
    basis = bias_basis(mode)
    theta = np.zeros(len(basis))
    best = macro_f1(y, logp.argmax(1))
    for _ in range(rounds):
        improved = False
        for k in range(len(basis)):
            keep = theta[k]
            for value in BIAS_GRID:
                theta[k] = value
                score = macro_f1(y, (logp + theta @ basis).argmax(1))
                if score > best + 1e-12:
                    best, keep, improved = score, value, True
            theta[k] = keep
        if not improved:
            break
    return theta @ basis


def nested_bias_gain(logp: np.ndarray, y: np.ndarray, folds: np.ndarray, rounds: int, mode: str) -> dict:
    """Macro F1 per held-out fold with and without biases tuned on the other folds, and the macro F1 of all
    held-out decisions pooled (the honest CV estimate of the whole pipeline, comparable to OOF macro F1)."""
    before, after = [], []
    pooled = np.empty(len(y), dtype=np.int64)
    for f in np.unique(folds):
        held = folds == f
        bias = tune_biases(logp[~held], y[~held], rounds, mode)
        pooled[held] = (logp[held] + bias).argmax(1)
        before.append(macro_f1(y[held], logp[held].argmax(1)))
        after.append(macro_f1(y[held], pooled[held]))
    return {
        "per_fold_before": before,
        "per_fold_after": after,
        "mean_before": float(np.mean(before)),
        "mean_after": float(np.mean(after)),
        "gain": float(np.mean(after) - np.mean(before)),
        "pooled_after": macro_f1(y, pooled),
    }


@dataclass
class Decision:
    """The F1-tuned decision on blended log-probabilities, and what it is honestly worth."""

    biases: np.ndarray
    nested: dict | None
    before: dict
    after_f1: float
    cv_f1: float


def decide(logp_oof: np.ndarray, y: np.ndarray, folds: np.ndarray, ens_cfg: EnsembleSettings) -> Decision:
    biases = np.zeros(labels.NUM_CLASSES)
    nested = None
    before = scores(y, np.exp(logp_oof))
    cv_f1 = before["f1"]
    if ens_cfg.tune_biases and len(np.unique(folds)) < 2:
        # the nested check tunes on the other folds: with one fold there are none, and in-sample biases would be
        # applied blind; `true` still applies them, and the CV stays the plain OOF score
        log.info(
            "biases %s: measuring them needs OOF of 2 or more folds",
            "applied unmeasured" if ens_cfg.tune_biases is True else "not applied",
        )
        if ens_cfg.tune_biases is True:
            biases = tune_biases(logp_oof, y, ens_cfg.bias_rounds, ens_cfg.bias_mode)
    elif ens_cfg.tune_biases:
        biases = tune_biases(logp_oof, y, ens_cfg.bias_rounds, ens_cfg.bias_mode)
        nested = nested_bias_gain(logp_oof, y, folds, ens_cfg.bias_rounds, ens_cfg.bias_mode)
        if ens_cfg.tune_biases == "auto" and nested["gain"] <= 0:
            log.info("biases not applied: tuned on k-1 folds they lower held-out macro F1 (%+.4f)", nested["gain"])
            biases = np.zeros(labels.NUM_CLASSES)
        else:
            cv_f1 = nested["pooled_after"]
    return Decision(biases, nested, before, macro_f1(y, (logp_oof + biases).argmax(1)), cv_f1)
