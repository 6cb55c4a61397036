"""Label maths of the competition, in one place: 18 classes = mask*6 + gender*3 + age_group."""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 18
HEADS = {"mask": 3, "gender": 2, "age": 3}
MASK_NAMES = ("wear", "incorrect", "not_wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")
HEAD_NAMES = {"mask": MASK_NAMES, "gender": GENDER_NAMES, "age": AGE_NAMES}  # each head's class names
YOUNG_THRESHOLD = 30
OLD_THRESHOLD = 60

# The 7 images of a person, by file stem, and the mask status each one shows.
IMAGE_MASK_STATUS = {
    "mask1": 0,
    "mask2": 0,
    "mask3": 0,
    "mask4": 0,
    "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
IMAGE_STEMS = tuple(IMAGE_MASK_STATUS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# column names of the 18 class probabilities in OOF tables
PROB_COLUMNS = [f"p{i}" for i in range(NUM_CLASSES)]
# The ordinal age head (model.head=ordinal) predicts P(age >= k) for each k here; the age groups' cut points are
# then chosen from these (30 and 60 by the competition's definition; the ensemble may tune them on OOF).
AGE_CUTS = (25, 27, 28, 29, 30, 31, 32, 35, 45, 50, 55, 56, 57, 58, 59, 60, 61, 62, 65)
AGE_ORD_COLUMNS = [f"age_ord_p{i}" for i in range(len(AGE_CUTS))]


def age_groups_from_ordinal(p_at_least, young: int = YOUNG_THRESHOLD, old: int = OLD_THRESHOLD, stack=np.stack):
    """(N, 3) age-group probabilities from (N, len(AGE_CUTS)) P(age >= k), with the groups cut at `young` and `old`.
    Works on numpy arrays and, with stack=torch.stack, on torch tensors (the model's forward uses it too)."""
    p_young_or_more = p_at_least[:, AGE_CUTS.index(young)]
    p_old = p_at_least[:, AGE_CUTS.index(old)]
    groups = stack([1 - p_young_or_more, (p_young_or_more - p_old).clip(0, None), p_old], 1)
    return groups / groups.sum(1, keepdims=True).clip(1e-9, None)


def gender_code(gender: str) -> int:
    return GENDER_NAMES.index(gender)


def age_group(age, old_threshold: int = OLD_THRESHOLD, young_threshold: int = YOUNG_THRESHOLD):
    """0 for age < young_threshold, 1 below old_threshold, 2 from old_threshold on; works on scalars and arrays."""
    age = np.asarray(age)
    groups = (age >= young_threshold).astype(np.int64) + (age >= old_threshold).astype(np.int64)
    return int(groups) if groups.ndim == 0 else groups


def encode(mask, gender, age_grp):
    """18-class label from the three head labels; works on scalars and arrays."""
    label = np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age_grp)
    return int(label) if label.ndim == 0 else label.astype(np.int64)


def decode(label):
    """(mask, gender, age_group) from an 18-class label; works on scalars and arrays."""
    label = np.asarray(label)
    parts = (label // 6, (label // 3) % 2, label % 3)
    if label.ndim == 0:
        return tuple(int(p) for p in parts)
    return tuple(p.astype(np.int64) for p in parts)


SHORT_MASK, SHORT_GENDER, SHORT_AGE = ("W", "I", "N"), ("M", "F"), ("<30", "30-59", "60+")


def short_name(label: int) -> str:
    """'2 W/M/60+': the class number with its mask (Wear, Incorrect, Not worn), gender and age group, for plot axes."""
    mask, gender, age = decode(label)
    return f"{label} {SHORT_MASK[mask]}/{SHORT_GENDER[gender]}/{SHORT_AGE[age]}"


def class_name(label: int) -> str:
    mask, gender, age = decode(label)
    return f"{MASK_NAMES[mask]}/{GENDER_NAMES[gender]}/{AGE_NAMES[age]}"


def head_labels(label) -> dict[str, np.ndarray]:
    mask, gender, age = decode(np.asarray(label))
    return {"mask": mask, "gender": gender, "age": age}


def head_probs_from_18(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Marginal probabilities of each head from (N, 18) class probabilities."""
    cube = probs.reshape(-1, 3, 2, 3)
    return {"mask": cube.sum(axis=(2, 3)), "gender": cube.sum(axis=(1, 3)), "age": cube.sum(axis=(1, 2))}
