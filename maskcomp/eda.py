"""Exploratory plots and a summary of the training data: reports/eda/."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import labels, plots
from .config import Config
from .data import load_eval, load_train
from .fileio import write_text
from .paths import Paths

log = logging.getLogger(__name__)


def _image_sizes(paths: list[str], limit: int = 500) -> pd.Series:
    sizes = []
    for p in paths[:limit]:
        with Image.open(p) as img:
            sizes.append(f"{img.width}x{img.height}")
    return pd.Series(sizes).value_counts()


def run_eda(cfg: Config) -> Path:
    paths = Paths.from_config(cfg)
    out = paths.reports / "eda"
    df = load_train(cfg)
    eval_df = load_eval(cfg)
    persons = df.drop_duplicates("person_id")
    class_counts = np.bincount(df["label"], minlength=labels.NUM_CLASSES)
    plots.bar(class_counts, [str(i) for i in range(labels.NUM_CLASSES)], "images per class (mask*6 + gender*3 + age)",
              out / "class_counts.png", xlabel="class")
    plots.bar(np.bincount(df["mask"], minlength=3), labels.MASK_NAMES, "images per mask status", out / "mask.png")
    plots.bar(np.bincount(persons["gender_label"], minlength=2), labels.GENDER_NAMES, "persons per gender", out / "gender.png")
    plots.bar(np.bincount(persons["age_group"], minlength=3), labels.AGE_NAMES, "persons per age group", out / "age_group.png")

    fig, ax = plots.plt.subplots(figsize=(6, 3.5))
    ax.hist(persons["age"], bins=range(int(persons["age"].min()), int(persons["age"].max()) + 2), color="tab:blue")
    for boundary in (labels.YOUNG_THRESHOLD, labels.OLD_THRESHOLD):
        ax.axvline(boundary, color="tab:red", linestyle="--")
    ax.set_title("persons per age (dashed: the 30 and 60 boundaries)")
    plots.save(fig, out / "age_hist.png")

    gender_age = pd.crosstab(persons["gender"], persons["age_group"].map(dict(enumerate(labels.AGE_NAMES))))
    gender_age = gender_age.reindex(columns=list(labels.AGE_NAMES), fill_value=0)
    fig, ax = plots.plt.subplots(figsize=(5, 3))
    gender_age.plot.bar(ax=ax)
    ax.set_title("persons: gender x age group")
    plots.save(fig, out / "gender_age.png")

    sizes = _image_sizes(df["image_path"].tolist() + eval_df["image_path"].tolist())
    plots.bar(sizes.to_numpy(), sizes.index.tolist(), "image sizes (first 500 images)", out / "image_sizes.png")

    examples, captions = [], []
    rng = np.random.default_rng(0)
    for cls in range(labels.NUM_CLASSES):
        rows = df[df["label"] == cls]
        if len(rows):
            row = rows.iloc[int(rng.integers(len(rows)))]
            with Image.open(row["image_path"]) as img:
                examples.append(np.asarray(img.convert("RGB").resize((96, 128))))
            captions.append(f"{cls}: {labels.class_name(cls)}")
    plots.image_grid(examples, captions, "one image per class", out / "samples_per_class.png")

    lines = [
        "# EDA summary", "",
        f"- persons: {len(persons)}; train images: {len(df)}; eval images: {len(eval_df)}",
        f"- female share of persons: {persons['gender_label'].mean():.3f}",
        f"- age: min {persons['age'].min()}, median {persons['age'].median():g}, max {persons['age'].max()}",
        f"- image sizes: {', '.join(f'{k} ({v})' for k, v in sizes.items())}", "",
        "| class | name | images | share |", "|---|---|---|---|",
        *[f"| {c} | {labels.class_name(c)} | {n} | {n / len(df):.3f} |" for c, n in enumerate(class_counts)], "",
        "## Persons: gender x age group", "", "```", gender_age.to_string(), "```", "",
        "Plots: " + ", ".join(sorted(p.name for p in out.glob("*.png"))),
    ]
    summary = write_text("\n".join(lines) + "\n", out / "summary.md")
    log.info("wrote EDA plots and %s", summary)
    return summary

