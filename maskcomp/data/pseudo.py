"""Pseudo-labels (pseudo.submission): the eval images a submission predicts confidently, as training rows. They join
every fold's training split and never a validation fold, so the CV stays measured on real labels only. The 2nd
cohort's winner used them; `make train ARGS="pseudo.submission=submissions/<name>.csv"` trains a new run with them
(the probabilities' digest is in its identity)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.errors import MaskcompError
from ..core.paths import absolute

log = logging.getLogger(__name__)

AGE_OF_GROUP = (20, 45, 62)  # years standing for a predicted age group: inside it whatever train.age_old_threshold


def probs_file(submission: Path) -> Path:
    """The eval probabilities beside a submission (<name>.probs.csv: ImageID, p0..p17), written by make ensemble."""
    return submission.with_name(submission.stem + ".probs.csv")


def groups_file(submission: Path) -> Path:
    """The person groups beside a submission (<name>.groups.csv)."""
    return submission.with_name(submission.stem + ".groups.csv")


def pseudo_submission(cfg: Settings) -> Path | None:
    """pseudo.submission, absolute (None when pseudo-labels are off); one line when its probabilities are missing."""
    if not cfg.pseudo.submission:
        return None
    submission = absolute(cfg.pseudo.submission)
    if not probs_file(submission).is_file():
        raise MaskcompError(
            f"pseudo.submission: {probs_file(submission)} is missing (the eval probabilities beside {submission.name});"
            " run `make ensemble` for that submission again, which writes them"
        )
    return submission


def person_groups(submission: Path, image_ids: pd.Series) -> np.ndarray:
    """Each eval image's person group in the submission (<name>.groups.csv), or the image itself when it grouped
    none."""
    if not groups_file(submission).is_file():
        return image_ids.to_numpy()
    groups = pd.read_csv(groups_file(submission), dtype=str).set_index("ImageID")["group"]
    return groups.loc[image_ids].to_numpy()


def confidence(probs: pd.DataFrame, group: np.ndarray) -> np.ndarray:
    """Each image's top probability, its person group's mean of them (a group of one: its own)."""
    return pd.Series(probs[labels.PROB_COLUMNS].to_numpy().max(1)).groupby(group).transform("mean").to_numpy()


def pseudo_rows(cfg: Settings) -> pd.DataFrame:
    """Training rows of the confident eval images: predicted class decoded into mask, gender and age group; a person
    id per group (or per image); an age in years inside the predicted group."""
    submission = pseudo_submission(cfg)
    if submission is None:
        return pd.DataFrame()
    probs = pd.read_csv(probs_file(submission), dtype={"ImageID": str})
    group = person_groups(submission, probs["ImageID"])
    conf = confidence(probs, group)
    chosen = conf >= cfg.pseudo.threshold
    if not chosen.any():
        low, mid, high = np.percentile(conf, [50, 90, 100])
        raise MaskcompError(
            f"pseudo.threshold={cfg.pseudo.threshold}: no eval image of {submission.name} reaches it (confidence: "
            f"median {low:.2f}, 90th percentile {mid:.2f}, highest {high:.2f}); lower pseudo.threshold"
        )
    keep, group = probs[chosen].reset_index(drop=True), group[chosen]
    label = keep[labels.PROB_COLUMNS].to_numpy().argmax(1)
    mask, gender, age = labels.decode(label)
    eval_images = cfg.paths.resolved.eval_images
    rows = pd.DataFrame({
        "image_path": [str(eval_images / i) for i in keep["ImageID"]], "person_id": [f"eval:{g}" for g in group],
        "id": [f"eval:{g}" for g in group], "gender": np.where(gender == 1, "female", "male"), "race": "",
        "age": np.array(AGE_OF_GROUP)[age], "stem": [Path(i).stem for i in keep["ImageID"]], "mask": mask,
        "gender_label": gender, "age_group": age, "label": label,
    })  # fmt: skip
    log.info(describe(rows, len(probs)))
    return rows


def describe(rows: pd.DataFrame, total: int) -> str:
    """How many eval images were added and their class mix, in one line."""
    mix = rows["label"].value_counts().sort_index()
    shares = ", ".join(f"{labels.short_name(c)} {n}" for c, n in mix.items())
    return f"pseudo-labels: {len(rows)} of {total} eval images ({rows['person_id'].nunique()} persons) added: {shares}"
