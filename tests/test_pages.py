"""What the analysis page's galleries pick: one tile per person (its most confident mistake), never one person
filling the gallery, with each tile's person and true age."""

from __future__ import annotations

import numpy as np
import pandas as pd

from maskcomp.analyze.attention import caption, examples
from maskcomp.analyze.pages import GALLERY_TILES, confidently_wrong
from maskcomp.analyze.runs_index import changed


def oof_rows(persons: int, images: int = 7) -> pd.DataFrame:
    ids = [f"{p:06d}" for p in range(persons) for _ in range(images)]
    return pd.DataFrame({"person_id": ids, "image_path": [f"train/images/{i}/mask{k}.jpg" for i, k in
                                                          zip(ids, list(range(images)) * persons)]})  # fmt: skip


def test_the_wrong_gallery_shows_each_person_once_by_its_most_confident_mistake():
    oof = oof_rows(40)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 0.6, len(oof))
    conf[:7] = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93]  # person 000000 misread confidently on all 7 images
    probs = np.column_stack([conf, 1 - conf])
    y, pred = np.zeros(len(oof), int), np.ones(len(oof), int)
    shown = confidently_wrong(oof, probs, pred, y)
    assert len(shown) == GALLERY_TILES and shown["person_id"].is_unique
    assert shown.iloc[0]["image_path"].endswith("000000/mask0.jpg") and shown.iloc[0]["conf"] == 0.99
    assert shown["conf"].is_monotonic_decreasing


def test_attention_examples_take_one_image_per_person_and_captions_name_person_and_age():
    frame = oof_rows(3).assign(truth=0, pred=[1] * 14 + [0] * 7, conf=np.linspace(0.99, 0.5, 21), age=[25] * 21)
    picked = examples(frame, [0], errors=3, correct=2)
    assert picked["person_id"].tolist() == ["000000", "000001", "000002"]  # 2 wrong persons, then 1 right one
    row = picked.iloc[0].copy()
    row["face_share"] = np.nan
    assert caption(row, "gender").startswith("000000, age 25\ntrue male\npred female")


def test_the_runs_index_rounds_the_settings_a_run_changed():
    changes = changed({"train.lr": 0.002582211501745744, "train.img_size": [96, 72], "seed": 42},
                      {"train.lr": 0.001, "train.img_size": [96, 72], "seed": 42})  # fmt: skip
    assert changes == "train.lr=0.002582 (ref 0.001)"
