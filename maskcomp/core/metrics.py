"""Scores: macro F1 (matches scikit-learn's f1_score(average='macro')) overall and per head."""

from __future__ import annotations

import numpy as np

from . import labels


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * num_classes + np.asarray(y_pred), minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = confusion(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros(num_classes), where=denom > 0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = labels.NUM_CLASSES) -> float:
    """Mean F1 over the classes present in y_true or y_pred, as scikit-learn computes it; fast enough for tuning
    loops."""
    cm = confusion(y_true, y_pred, num_classes)
    present = (cm.sum(0) + cm.sum(1)) > 0
    tp = np.diag(cm)[present].astype(np.float64)
    return float(np.mean(2 * tp / (cm.sum(0) + cm.sum(1))[present]))


def scores(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro F1 overall and per head, and accuracy, of argmax predictions from (N, 18) probabilities."""
    pred = probs.argmax(1)
    out = {"f1": macro_f1(y_true, pred), "acc": float((pred == y_true).mean())}
    true_heads, pred_heads = labels.head_labels(y_true), labels.head_labels(pred)
    for head, n in labels.HEADS.items():
        out[f"f1_{head}"] = macro_f1(true_heads[head], pred_heads[head], n)
    return out


def bootstrap_macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, rounds: int = 300, seed: int = 0
) -> np.ndarray:
    """Macro F1 on `rounds` resamples that draw whole groups (persons) with replacement.

    A person's 7 images are not independent, so resampling images would understate the spread.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    codes, members = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(members, kind="stable")
    starts = np.searchsorted(members[order], np.arange(len(codes) + 1))
    rng = np.random.default_rng(seed)
    out = np.empty(rounds)
    for r in range(rounds):
        picked = rng.integers(0, len(codes), len(codes))
        rows = np.concatenate([order[starts[g] : starts[g + 1]] for g in picked])
        out[r] = macro_f1(y_true[rows], y_pred[rows])
    return out
