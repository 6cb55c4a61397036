"""Person grouping at test time (transductive): predict persons, not images.

The competition's eval set is persons x 7 photos (5 masked, 1 incorrectly masked, 1 unmasked) that share
gender and age. Without labels, each image predicted `not_wear` becomes a group's anchor, and every other
image is assigned to one anchor (at most 6 each, `scipy.optimize.linear_sum_assignment` on the cosine
similarity of small whole-image thumbnails: the 7 photos share camera, background and clothes). An assignment
below `infer.group_min_similarity` is refused, so singletons and groups that do not form cleanly keep their
own predictions. Gender and age are then decided per group from its images' log-probabilities weighted by
view (the unmasked view counts most): the weights are fitted on OOF, where each validation fold is grouped
the same blind way, and the gain is measured nested (fit on k-1 folds, score the held-out one).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment, minimize

from ..core import labels
from ..core.errors import MaskcompError
from ..core.metrics import macro_f1
from ..core.progress import progress

log = logging.getLogger(__name__)

THUMB_W, THUMB_H = 24, 32
GROUP_SIZE = len(labels.IMAGE_STEMS)
NOT_WEAR = 2
PERSON_HEADS = ("gender", "age")


def thumbnails(image_paths: list[str]) -> np.ndarray:
    """(N, 24*32*3) mean-centred, unit-length thumbnails of the whole images: dot products are cosine similarities."""
    feats = np.zeros((len(image_paths), THUMB_W * THUMB_H * 3), np.float32)
    for i, path in enumerate(progress(image_paths, "thumbnails for grouping", unit="img")):
        # a missing image would silently become an all-zero thumbnail and change the grouping: stop instead
        img = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
        if img is None:
            raise MaskcompError(
                f"{path}: cannot read this image for person grouping; point DATA (paths.data_root) at the "
                "data the run was trained and predicted on, or set infer.person_grouping=off"
            )
        feats[i] = cv2.resize(img, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    feats -= feats.mean(1, keepdims=True)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-6)


@dataclass
class Groups:
    """Group id of each image (a singleton has a group of its own) and the similarity that put it there."""

    group: np.ndarray
    confidence: np.ndarray

    @functools.cached_property
    def codes(self) -> np.ndarray:
        """0..groups-1 per image (a fitted pooling asks thousands of times: computed once)."""
        return pd.factorize(self.group)[0]

    @functools.cached_property
    def grouped(self) -> np.ndarray:
        return in_a_group(self.group)


def in_a_group(group: np.ndarray) -> np.ndarray:
    """Whether each image shares its group with another image (a singleton does not)."""
    codes = pd.factorize(group)[0]
    return np.bincount(codes)[codes] > 1


def group_images(features: np.ndarray, mask_probs: np.ndarray, min_similarity: float) -> Groups:
    """Anchors are images predicted unmasked; each other image joins at most one anchor (6 per anchor at most)."""
    n = len(features)
    group, confidence = np.arange(n), np.ones(n)
    anchors = np.flatnonzero(mask_probs.argmax(1) == NOT_WEAR)
    others = np.flatnonzero(mask_probs.argmax(1) != NOT_WEAR)
    if len(anchors) == 0 or len(others) == 0:
        return Groups(group, confidence)
    similarity = features[others] @ features[anchors].T
    slots = np.repeat(np.arange(len(anchors)), GROUP_SIZE - 1)
    rows, cols = linear_sum_assignment(-similarity[:, slots])
    for r, c in zip(rows, cols):
        sim = similarity[r, slots[c]]
        if sim >= min_similarity:
            group[others[r]] = anchors[slots[c]]
            confidence[others[r]] = sim
    confidence[np.isin(np.arange(n), others) & (group == np.arange(n))] = 0.0
    return Groups(group, confidence)


def purity_completeness(groups: np.ndarray, persons: np.ndarray) -> dict:
    """purity: share of images in a group whose majority person is theirs; completeness: share of images in their
    person's largest group (1.0 and 1.0: every person recovered exactly)."""
    table = pd.crosstab(groups, persons)
    n = len(groups)
    return {
        "purity": float(table.max(axis=1).sum() / n),
        "completeness": float(table.max(axis=0).sum() / n),
        "grouped_share": float(in_a_group(groups).mean()),
    }


def views_of(mask_probs: np.ndarray) -> np.ndarray:
    return mask_probs.argmax(1)


def pool(
    head_probs: dict[str, np.ndarray],
    views: np.ndarray,
    groups: Groups,
    weights: dict[str, np.ndarray],
    heads: tuple[str, ...] = PERSON_HEADS,
) -> dict:
    """Per-image distributions of `heads` (gender and age) replaced by their group's: softmax of the view-weighted
    sum of the group's log-probabilities (singletons keep their own)."""
    out = dict(head_probs)
    codes = groups.codes
    for head in heads:
        logp = np.log(np.clip(head_probs[head], 1e-9, None)) * weights[head][views][:, None]
        summed = np.zeros((codes.max() + 1, logp.shape[1]))
        np.add.at(summed, codes, logp)
        pooled = summed[codes]
        pooled = np.exp(pooled - pooled.max(1, keepdims=True))
        pooled /= pooled.sum(1, keepdims=True)
        out[head] = np.where(groups.grouped[:, None], pooled, head_probs[head])
    return out


def fit_view_weights(
    head_probs: dict[str, np.ndarray], views: np.ndarray, groups: Groups, truth: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Non-negative weight per view (wear, incorrect, not_wear) and head, minimising the log loss of the pooled
    distributions against the true labels."""
    weights = {h: np.ones(3) for h in PERSON_HEADS}
    for head in PERSON_HEADS:

        def loss(theta: np.ndarray, head: str = head) -> float:
            pooled = pool(head_probs, views, groups, {head: np.exp(theta)}, heads=(head,))[head]
            return float(-np.log(np.clip(pooled[np.arange(len(views)), truth[head]], 1e-9, None)).mean())

        weights[head] = np.exp(minimize(loss, np.zeros(3), method="Nelder-Mead", options={"maxiter": 200}).x)
    return weights


def compose(head_probs: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 18) class probabilities from independent mask, gender and age distributions."""
    m, g, a = labels.decode(np.arange(labels.NUM_CLASSES))
    return head_probs["mask"][:, m] * head_probs["gender"][:, g] * head_probs["age"][:, a]


@dataclass
class GroupingResult:
    """What grouping does to the OOF predictions, measured nested, and the weights for the eval side."""

    oof_probs: np.ndarray  # pooled held-out predictions (weights fitted on the other folds)
    weights: dict[str, np.ndarray]  # fitted on all folds, for the eval set
    gain: float  # nested: mean held-out macro F1 with minus without grouping
    per_fold: list[dict]


def nested_grouping(
    probs: np.ndarray,
    folds: np.ndarray,
    features: np.ndarray,
    persons: np.ndarray,
    y: np.ndarray,
    min_similarity: float,
) -> GroupingResult:
    """Group each validation fold blindly, fit view weights on the other folds, score the held-out fold."""
    heads = labels.head_probs_from_18(probs)
    views = views_of(heads["mask"])
    _, g_true, a_true = labels.decode(y)
    truth = {"gender": g_true, "age": a_true}
    groups = np.zeros(len(y), dtype=np.int64)
    confidence = np.zeros(len(y))
    for f in np.unique(folds):
        idx = np.flatnonzero(folds == f)
        found = group_images(features[idx], heads["mask"][idx], min_similarity)
        groups[idx], confidence[idx] = idx[found.group], found.confidence
    all_groups = Groups(groups, confidence)
    out, per_fold = probs.copy(), []
    for f in np.unique(folds):
        held, rest = folds == f, folds != f
        sub = lambda mask: ({h: p[mask] for h, p in heads.items()}, views[mask], Groups(groups[mask], confidence[mask]))
        rest_heads, rest_views, rest_groups = sub(rest)
        weights = fit_view_weights(rest_heads, rest_views, rest_groups, {h: t[rest] for h, t in truth.items()})
        held_heads, held_views, held_groups = sub(held)
        out[held] = compose(pool(held_heads, held_views, held_groups, weights))
        per_fold.append(
            {
                "fold": int(f),
                **purity_completeness(groups[held], persons[held]),
                "macro_f1_before": macro_f1(y[held], probs[held].argmax(1)),
                "macro_f1_after": macro_f1(y[held], out[held].argmax(1)),
            }
        )
    weights = fit_view_weights(heads, views, all_groups, truth)
    gain = float(np.mean([r["macro_f1_after"] - r["macro_f1_before"] for r in per_fold]))
    return GroupingResult(out, weights, gain, per_fold)


def apply_grouping(
    probs: np.ndarray, features: np.ndarray, weights: dict[str, np.ndarray], min_similarity: float
) -> tuple[np.ndarray, Groups]:
    """The eval side: group blindly, pool gender and age with the OOF-fitted weights."""
    heads = labels.head_probs_from_18(probs)
    groups = group_images(features, heads["mask"], min_similarity)
    return compose(pool(heads, views_of(heads["mask"]), groups, weights)), groups
