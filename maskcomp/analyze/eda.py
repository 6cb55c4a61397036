"""Exploratory plots and a summary of the training data: reports/eda/."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import labels
from ..core.context import Context, stage
from ..core.fileio import write_text
from ..data.tables import load_eval, load_train
from ..report import htmlpage, plots

log = logging.getLogger(__name__)


def _image_sizes(paths: list[str], limit: int = 500) -> pd.Series:
    sizes = []
    for p in paths[:limit]:
        with Image.open(p) as img:
            sizes.append(f"{img.width}x{img.height}")
    return pd.Series(sizes).value_counts()


def class_plots(df: pd.DataFrame, persons: pd.DataFrame, out: Path) -> np.ndarray:
    class_counts = np.bincount(df["label"], minlength=labels.NUM_CLASSES)
    plots.bar(
        class_counts,
        [labels.short_name(c) for c in range(labels.NUM_CLASSES)],
        "images per class (W/I/N: mask worn / incorrect / not worn)",
        out / "class_counts.png",
        "class",
        "images",
    )
    plots.bar(
        np.bincount(df["mask"], minlength=3),
        labels.MASK_NAMES,
        "images per mask status",
        out / "mask.png",
        "mask status",
        "images",
    )
    plots.bar(
        np.bincount(persons["gender_label"], minlength=2),
        labels.GENDER_NAMES,
        "persons per gender",
        out / "gender.png",
        "gender",
        "persons",
    )
    plots.bar(
        np.bincount(persons["age_group"], minlength=3),
        labels.AGE_NAMES,
        "persons per age group",
        out / "age_group.png",
        "age group",
        "persons",
    )
    return class_counts


def age_plots(persons: pd.DataFrame, out: Path) -> pd.DataFrame:
    fig, ax = plots.plt.subplots(figsize=(6, 3.5))
    ax.hist(persons["age"], bins=range(int(persons["age"].min()), int(persons["age"].max()) + 2), color="tab:blue")
    for boundary in (labels.YOUNG_THRESHOLD, labels.OLD_THRESHOLD):
        ax.axvline(boundary, color="tab:red", linestyle="--")
    ax.set_title("persons per age (dashed: the 30 and 60 boundaries)")
    ax.set_xlabel("age (years)")
    ax.set_ylabel("persons")
    plots.save(fig, out / "age_hist.png")
    gender_age = pd.crosstab(persons["gender"], persons["age_group"].map(dict(enumerate(labels.AGE_NAMES))))
    gender_age = gender_age.reindex(columns=list(labels.AGE_NAMES), fill_value=0)
    fig, ax = plots.plt.subplots(figsize=(5, 3))
    gender_age.plot.bar(ax=ax, rot=0)
    ax.set_title("persons: gender x age group")
    ax.set_xlabel("gender")
    ax.set_ylabel("persons")
    ax.legend(title="age group", fontsize=8)
    plots.save(fig, out / "gender_age.png")
    return gender_age


def example_grid(df: pd.DataFrame, out: Path) -> None:
    examples, captions = [], []
    rng = np.random.default_rng(0)
    for cls in range(labels.NUM_CLASSES):
        rows = df[df["label"] == cls]
        if len(rows):
            row = rows.iloc[int(rng.integers(len(rows)))]
            with Image.open(row["image_path"]) as img:
                examples.append(np.asarray(img.convert("RGB").resize((96, 128))))
            captions.append(f"class {cls}: {labels.class_name(cls)}\n{row['person_id']} {Path(row['image_path']).stem}")
    plots.image_grid(examples, captions, "one image per class", out / "samples_per_class.jpg")


EVAL_SAMPLES = 12


def eval_grid(eval_df: pd.DataFrame, out: Path) -> None:
    """A fixed draw of eval images, named: what the model will be asked about (no labels there)."""
    pick = eval_df.sample(min(EVAL_SAMPLES, len(eval_df)), random_state=0)
    images = []
    for path in pick["image_path"]:
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGB").resize((96, 128))))
    captions = [Path(p).name for p in pick["image_path"]]
    plots.image_grid(images, captions, f"{len(images)} random eval images", out / "eval_samples.jpg")


PLOTS = (
    ("class_counts", "Images per class"),
    ("mask", "Mask status"),
    ("gender", "Gender"),
    ("age_group", "Age group"),
    ("age_hist", "Ages"),
    ("gender_age", "Gender x age group"),
    ("image_sizes", "Image sizes"),
)
PHOTOS = (("samples_per_class", "One image per class"), ("eval_samples", "Eval set: random images"))  # JPEG


@stage
def run_eda(ctx: Context) -> Path:
    """Plots, summary.md and index.html (the plots shown with the numbers) in reports/eda/."""
    paths = ctx.paths
    out = paths.reports / "eda"
    df = load_train(ctx)
    eval_df = load_eval(ctx)
    persons = df.drop_duplicates("person_id")
    class_counts = class_plots(df, persons, out)
    gender_age = age_plots(persons, out)
    every = df["image_path"].tolist() + eval_df["image_path"].tolist()
    sizes = _image_sizes(every)
    checked = f"the first {int(sizes.sum())} of {len(every)} images"
    plots.bar(
        sizes.to_numpy(),
        sizes.index.tolist(),
        f"image sizes ({checked})",
        out / "image_sizes.png",
        "width x height",
        "images",
    )
    example_grid(df, out)
    eval_grid(eval_df, out)
    facts = [
        f"persons: {len(persons)}; train images: {len(df)}; eval images: {len(eval_df)}",
        f"female share of persons: {persons['gender_label'].mean():.3f}",
        f"age: min {persons['age'].min()}, median {persons['age'].median():g}, max {persons['age'].max()}",
        f"image sizes of {checked}: {', '.join(f'{k} ({v} images)' for k, v in sizes.items())}",
    ]
    classes = pd.DataFrame(
        {
            "class": range(labels.NUM_CLASSES),
            "name": [labels.class_name(c) for c in range(labels.NUM_CLASSES)],
            "images": class_counts,
            "share": (class_counts / len(df)).round(3),
        }
    )
    lines = [
        "# EDA summary",
        "",
        *[f"- {f}" for f in facts],
        "",
        "| class | name | images | share |",
        "|---|---|---|---|",
        *[f"| {c} | {name} | {n} | {share:.3f} |" for c, name, n, share in classes.itertuples(index=False)],
        "",
        *[f"## {title}\n\n![{title}]({name}.png)\n" for name, title in PLOTS],
        *[f"## {title}\n\n![{title}]({name}.jpg)\n" for name, title in PHOTOS],
    ]
    summary = write_text("\n".join(lines) + "\n", out / "summary.md")
    sections = [
        htmlpage.Section(
            "Facts",
            [
                "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>",
                htmlpage.table(classes),
                "<p>Persons (not images) by gender and age group:</p>",
                htmlpage.table(gender_age.rename_axis(columns=None).reset_index()),
            ],
        ),
        *[htmlpage.Section(title, [htmlpage.image(f"{name}.png", title)]) for name, title in PLOTS],
        *[htmlpage.Section(title, [htmlpage.image(f"{name}.jpg", title)]) for name, title in PHOTOS],
    ]
    index = htmlpage.render(
        "EDA: training data", [f"Data: {html.escape(str(paths.data_root))}"], sections, out / "index.html"
    )
    log.info("wrote EDA plots, %s and %s", summary, index)
    return index
