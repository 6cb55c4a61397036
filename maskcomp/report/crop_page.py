"""The crop stage's report: detection rate per split and mask status, sources, random and fallback crops
(reports/crop/summary.json, summary.md, index.html and two galleries); warns when detection is low."""

from __future__ import annotations

import functools
import html
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.fileio import write_json, write_text
from ..crop.boxes import FACE_COLUMNS, OUTLIER_PX, far_from_person
from . import htmlpage, plots

log = logging.getLogger(__name__)

LOW_DETECTION_RATE = 0.5  # below this share of detected faces in a split, the crop stage warns


def _eval_mask_status(cfg: Settings, records: pd.DataFrame) -> pd.Series:
    """Mask status per record: from the data layer for train, from eval answers when they exist."""
    status = pd.Series(np.nan, index=records.index)
    train = records["split"] == "train"
    stems = records.loc[train, "image_path"].map(lambda p: Path(p).stem)
    status[train] = stems.map(labels.IMAGE_MASK_STATUS)
    answers = cfg.paths.resolved.eval_answers
    if answers.exists():
        truth = pd.read_csv(answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]
        ids = records.loc[~train, "image_path"].map(lambda p: Path(p).name)
        status[~train] = ids.map(truth).map(lambda a: labels.decode(int(a))[0] if pd.notna(a) else np.nan)
    return status


@dataclass(frozen=True)
class CropSummary:
    """What the report says, computed once: the records it shows and the detection rates per split and status."""

    records: pd.DataFrame  # readable records with mask_status and detected columns
    rates: dict[str, dict[str, float]]
    summary: dict

    @property
    def sources(self) -> str:
        return "Sources: " + ", ".join(f"{k}: {v}" for k, v in self.summary["sources"].items())

    @functools.cached_property
    def far(self) -> pd.DataFrame:
        """The detected boxes far from their person's other boxes (the gallery and the page's list)."""
        return far_boxes(self.records)


def summarise(cfg: Settings, records: pd.DataFrame, seconds: float) -> CropSummary:
    recs = records[~records["unreadable"]].copy()
    recs["mask_status"] = _eval_mask_status(cfg, recs)
    recs["detected"] = recs["source"].isin(["mtcnn", "mtcnn_relaxed"])
    rates = {}
    for split, grp in recs.groupby("split"):
        rates[split] = {"all": float(grp["detected"].mean())}
        for status, sub in grp.dropna(subset=["mask_status"]).groupby("mask_status"):
            rates[split][labels.MASK_NAMES[int(status)]] = float(sub["detected"].mean())
    summary = {
        "mode": cfg.crop.mode,
        "images": int(len(records)),
        "unreadable": int(records["unreadable"].sum()),
        "seconds": round(seconds, 2),
        "detection_rate": rates,
        "sources": {k: int(v) for k, v in recs["source"].value_counts().items()},
    }
    return CropSummary(recs, rates, summary)


def write_markdown(crops: CropSummary, out: Path) -> None:
    s, columns = crops.summary, ("all",) + labels.MASK_NAMES
    lines = [
        "# Crop report",
        "",
        f"- mode: {s['mode']}; images: {s['images']}; unreadable: {s['unreadable']}; time: {s['seconds']:.1f} s",
        "",
        "| split | " + " | ".join(columns) + " |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {split} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in columns) + " |"
        for split, r in crops.rates.items()
    ]
    write_text("\n".join([*lines, "", crops.sources]) + "\n", out / "summary.md")


RELAXED = "mtcnn_relaxed"  # the detector's second pass: lower thresholds on a contrast-equalised copy


def far_boxes(recs: pd.DataFrame) -> pd.DataFrame:
    """Detected face boxes far from the same person's other boxes (boxes.far_from_person), farthest first."""
    detected = recs[recs["detected"]]
    corners = detected[FACE_COLUMNS].set_axis(["x1", "y1", "x2", "y2"], axis=1).assign(person_id=detected["person_id"])
    distance = far_from_person(corners)
    far = detected.assign(px=distance.round(0))[distance > OUTLIER_PX]
    return far.sort_values("px", ascending=False)


def write_galleries(crops: CropSummary, out: Path) -> None:
    """24 random crops, 24 of those cut with a fallback box and 24 of those found only at relaxed thresholds (the
    likeliest wrong boxes: a neck, a mask's edge), each captioned with its image, source and score."""
    rng, recs = np.random.default_rng(0), crops.records
    galleries = {
        "random_crops": recs,
        "fallback_crops": recs[~recs["detected"]],
        "relaxed_crops": recs[recs["source"] == RELAXED],
        "far_boxes": crops.far,
    }
    for name, subset in galleries.items():
        (out / f"{name}.jpg").unlink(missing_ok=True)  # a gallery with nothing to show this time is not left stale
        if subset.empty:
            continue
        pick = subset.iloc[rng.permutation(len(subset))[:24]]
        images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in pick["crop_path"]]
        captions = [
            f"{'/'.join(Path(key).parts[-2:])}\n{src}" + (f" p={sc:.2f}" if sc == sc else "")
            for key, src, sc in zip(pick["key"], pick["source"], pick["score"])
        ]  # the image's person folder and file name: a wrong box can be traced
        plots.image_grid(images, captions, name.replace("_", " "), out / f"{name}.jpg")


def write_page(crops: CropSummary, out: Path) -> Path:
    columns = ("all",) + labels.MASK_NAMES
    table = pd.DataFrame(
        [
            {"split": split, **{k: round(r[k], 3) if k in r else None for k in columns}}
            for split, r in crops.rates.items()
        ]
    )
    sections = [
        htmlpage.Section(
            "Detection rate",
            [
                "<p>Share of images where MTCNN found the face (columns: all images, "
                "then by mask status; eval by status only when eval answers exist).</p>",
                htmlpage.table(table),
                f"<p>{html.escape(crops.sources)}</p>",
            ],
        ),
        htmlpage.Section("Random crops", [htmlpage.image("random_crops.jpg", "random crops")]),
        htmlpage.Section(
            "Fallback crops",
            [
                "<p>Images without a detected face, cropped with the fallback box.</p>",
                htmlpage.image("fallback_crops.jpg", "fallback crops"),
            ],
        ),
    ]
    far = crops.far
    if len(far):
        listed = far[["key", "source", "px"]].rename(columns={"px": "px from the person's median"}).head(50)
        note = (
            f"<p>{len(far)} detected boxes lie more than {OUTLIER_PX} px from the median of the same person's boxes "
            "(a neck, a bystander, a mask's edge); <code>crop.outlier_fallback=true</code> replaces them with that "
            "median box.</p>"
        )
        body = [note, htmlpage.table(listed), htmlpage.image("far_boxes.jpg", "boxes far from their person's")]
        sections.append(htmlpage.Section("Boxes far from the person's other boxes", body))
    relaxed = int((crops.records["source"] == RELAXED).sum())
    if relaxed:
        note = f"<p>{relaxed} faces found only at relaxed thresholds; the likeliest wrong boxes (24 shown).</p>"
        sections.append(htmlpage.Section("Relaxed detections", [note, htmlpage.image("relaxed_crops.jpg", "relaxed")]))
    s = crops.summary
    meta = [f"mode {s['mode']}; {s['images']} images; {s['unreadable']} unreadable; {s['seconds']:.1f} s"]
    return htmlpage.render("Crop report", meta, sections, out / "index.html")


def warn_when_detection_is_low(cfg: Settings, crops: CropSummary, out: Path) -> None:
    if cfg.crop.mode == "mtcnn" and any(v["all"] < LOW_DETECTION_RATE for v in crops.rates.values()):
        log.warning(
            "%d of %d crops come from fallback boxes (detection below %.0f%% in some split); look at %s "
            "before training",
            int((~crops.records["detected"]).sum()),
            len(crops.records),
            100 * LOW_DETECTION_RATE,
            out / "fallback_crops.jpg",
        )


def write_crop_report(cfg: Settings, records: pd.DataFrame, seconds: float) -> Path:
    """reports/crop/: summary.json, summary.md, the two galleries and index.html; a warning when detection is low."""
    out = cfg.paths.resolved.reports / "crop"
    crops = summarise(cfg, records, seconds)
    write_json(crops.summary, out / "summary.json")
    write_markdown(crops, out)
    write_galleries(crops, out)
    page = write_page(crops, out)
    log.info(
        "crop report in %s; faces detected: %s", page, ", ".join(f"{k} {v['all']:.1%}" for k, v in crops.rates.items())
    )
    warn_when_detection_is_low(cfg, crops, out)
    return out
