"""A generated dataset in the competition's exact layout whose pixels carry the labels.

Face: a skin ellipse with eyes, nose and mouth. Mask: drawn over nose, mouth and chin (wear),
under the nose (incorrect) or absent. Gender: long hair falling to the shoulders (female) or
short hair (male). Age: hair grey level rises with age, with noise, so ages near the 30 and 60
boundaries are ambiguous as in real photos. A few persons get the other gender's hair (noise).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core import labels
from ..core.fileio import atomic_path, require_writable, write_csv
from ..core.paths import Paths
from ..core.progress import progress

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 384, 512
AGE_GROUP_SHARES = (0.47, 0.45, 0.08)  # <30 / 30-59 / >=60 persons, as in the competition
AGE_RANGES = ((18, 29), (30, 59), (60, 65))
FEMALE_SHARE = 0.61
EXTENSIONS = ((".jpg", 0.8), (".jpeg", 0.1), (".png", 0.1))
MASK_COLOURS = ((235, 235, 235), (230, 200, 150), (40, 40, 40), (200, 170, 220), (120, 160, 90))
CUE_NOISE = 0.03  # share of persons drawn with the other gender's hair


def _hair_colour(age: int, rng: np.random.Generator) -> tuple[int, int, int]:
    grey = float(np.clip(20 + (age - 18) * 4.2 + rng.normal(0, 12), 5, 245))
    warmth = max(0.0, 1 - grey / 200) * rng.uniform(10, 40)  # young hair is brown-black, old hair plain grey
    return (int(np.clip(grey - warmth, 0, 255)), int(grey), int(np.clip(grey + warmth, 0, 255)))  # BGR


def draw_person_image(rng: np.random.Generator, mask: int, female: bool, age: int, face: dict) -> np.ndarray:
    """One 384x512 BGR image of a person in the given mask state."""
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[:] = face["background"]
    cx = int(face["cx"] + rng.integers(-6, 7))
    cy = int(face["cy"] + rng.integers(-6, 7))
    ax, ay = face["axes"]
    hair = face["hair"]
    if female:
        cv2.rectangle(img, (cx - ax - 22, cy - 20), (cx + ax + 22, cy + ay + 60), hair, -1)
    cv2.ellipse(img, (cx, cy - ay // 3), (ax + 14, ay // 2 + 26), 0, 180, 360, hair, -1)
    cv2.rectangle(img, (cx - 45, cy + ay - 15), (cx + 45, HEIGHT), face["shirt"], -1)
    cv2.ellipse(img, (cx, cy), (ax, ay), 0, 0, 360, face["skin"], -1)
    cv2.ellipse(img, (cx, cy - ay // 3), (ax + 6, ay // 2 - 8), 0, 195, 345, hair, -1)
    for dx in (-32, 32):
        cv2.ellipse(img, (cx + dx, cy - 18), (13, 7), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(img, (cx + dx, cy - 18), 5, (40, 30, 20), -1)
    cv2.line(img, (cx, cy - 8), (cx - 8, cy + 28), face["shade"], 4)
    cv2.ellipse(img, (cx, cy + 58), (26, 9), 0, 0, 180, (60, 60, 170), 4)
    if mask < 2:
        top = cy + 8 if mask == 0 else cy + 44
        pts = np.array(
            [
                [cx - ax + 4, top + 6],
                [cx, top - 6],
                [cx + ax - 4, top + 6],
                [cx + ax - 16, cy + ay - 8],
                [cx, cy + ay + 8],
                [cx - ax + 16, cy + ay - 8],
            ],
            np.int32,
        )
        colour = face["mask_colour"]
        cv2.fillPoly(img, [pts], colour)
        for k in range(1, 3):
            y = top + k * (cy + ay - top) // 3
            cv2.line(img, (cx - ax + 18, y), (cx + ax - 18, y), tuple(int(c * 0.8) for c in colour), 2)
        cv2.line(img, (cx - ax + 4, top + 6), (cx - ax - 6, cy - 10), (200, 200, 200), 2)
        cv2.line(img, (cx + ax - 4, top + 6), (cx + ax + 6, cy - 10), (200, 200, 200), 2)
    noise = rng.normal(0, 8, img.shape)
    gain = rng.uniform(0.85, 1.15)
    return np.clip(img.astype(np.float32) * gain + noise, 0, 255).astype(np.uint8)


def _person_look(rng: np.random.Generator, age: int) -> dict:
    skin_base = rng.uniform(150, 230)
    skin = (int(skin_base * 0.75), int(skin_base * 0.85), int(skin_base))
    return {
        "cx": WIDTH // 2 + int(rng.integers(-15, 16)),
        "cy": 230 + int(rng.integers(-15, 16)),
        "axes": (int(rng.integers(78, 92)), int(rng.integers(100, 118))),
        "background": tuple(int(c) for c in rng.integers(60, 200, 3)),
        "shirt": tuple(int(c) for c in rng.integers(0, 255, 3)),
        "skin": skin,
        "shade": tuple(int(c * 0.8) for c in skin),
        "hair": _hair_colour(age, rng),
        "mask_colour": MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))],
    }


def draw_persons(count: int, seed: int) -> pd.DataFrame:
    """Gender and age of `count` persons with the competition's frequencies."""
    rng = np.random.default_rng([seed, 0])
    genders = np.where(rng.random(count) < FEMALE_SHARE, "female", "male")
    groups = rng.choice(3, size=count, p=AGE_GROUP_SHARES)
    ages = [int(rng.integers(AGE_RANGES[g][0], AGE_RANGES[g][1] + 1)) for g in groups]
    return pd.DataFrame({"gender": genders, "age": ages})


def _write_image(img: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix != ".png" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        ok, buf = cv2.imencode(path.suffix, img, params)
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())


def make_sample(paths: Paths, persons: int, eval_persons: int, seed: int) -> None:
    """Write train/ and eval/ under paths.data_root, and eval_answers.csv beside eval/."""
    require_writable(paths.data_root)
    rng = np.random.default_rng([seed, 1])
    exts = [e for e, _ in EXTENSIONS]
    ext_p = [p for _, p in EXTENSIONS]
    train_rows, eval_rows = [], []
    people = draw_persons(persons + eval_persons, seed)
    for n, (gender, age) in enumerate(
        progress(people.itertuples(index=False), "sample persons", unit="person", total=len(people))
    ):
        female = (gender == "female") != (rng.random() < CUE_NOISE)
        look = _person_look(rng, age)
        person_id = f"{n + 1:06d}"
        is_train = n < persons
        folder = f"{person_id}_{gender}_Asian_{age}"
        for stem, mask in labels.IMAGE_MASK_STATUS.items():
            img = draw_person_image(rng, mask, female, age, look)
            if is_train:
                _write_image(img, paths.train_images / folder / (stem + str(rng.choice(exts, p=ext_p))))
                continue
            image_id = hashlib.sha1(f"{seed}-{person_id}-{stem}".encode()).hexdigest() + ".jpg"
            _write_image(img, paths.eval_images / image_id)
            eval_rows.append(
                {
                    "ImageID": image_id,
                    "ans": labels.encode(mask, labels.gender_code(gender), labels.age_group(age)),
                    "person_id": person_id,
                    "mask": mask,
                    "gender": gender,
                    "age": age,
                    "age_group": labels.age_group(age),
                    "kind": stem,
                }
            )
        if is_train:
            train_rows.append({"id": person_id, "gender": gender, "race": "Asian", "age": age, "path": folder})
    write_csv(pd.DataFrame(train_rows), paths.train_csv)
    answers = pd.DataFrame(eval_rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    write_csv(answers, paths.eval_answers)
    write_csv(answers[["ImageID"]].assign(ans=""), paths.eval_csv)
    log.info(
        "wrote %d train persons (%d images) and %d eval images under %s; eval answers in %s",
        persons,
        persons * 7,
        len(answers),
        paths.data_root,
        paths.eval_answers,
    )
