"""The crop stage's report: detection rate per split and mask status, sources, random and fallback crops
(reports/crop/summary.json, summary.md, index.html and two galleries); warns when detection is low."""
from __future__ import annotations

import html
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import htmlpage, labels, plots
from .config import Config
from .fileio import write_json, write_text
from .paths import Paths

log = logging.getLogger(__name__)

LOW_DETECTION_RATE = 0.5   # below this share of detected faces in a split, the crop stage warns


def _eval_mask_status(cfg: Config, records: pd.DataFrame) -> pd.Series:
    """Mask status per record: from the data layer for train, from eval answers when they exist."""
    status = pd.Series(np.nan, index=records.index)
    train = records["split"] == "train"
    stems = records.loc[train, "image_path"].map(lambda p: Path(p).stem)
    status[train] = stems.map(labels.IMAGE_MASK_STATUS)
    answers = Paths.from_config(cfg).eval_answers
    if answers.exists():
        truth = pd.read_csv(answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]
        ids = records.loc[~train, "image_path"].map(lambda p: Path(p).name)
        status[~train] = ids.map(truth).map(lambda a: labels.decode(int(a))[0] if pd.notna(a) else np.nan)
    return status


def write_crop_report(cfg: Config, records: pd.DataFrame, seconds: float) -> Path:
    out = Paths.from_config(cfg).reports / "crop"
    recs = records[~records["unreadable"]].copy()
    recs["mask_status"] = _eval_mask_status(cfg, recs)
    recs["detected"] = recs["source"].isin(["mtcnn", "mtcnn_relaxed"])
    rates = {}
    for split, grp in recs.groupby("split"):
        rates[split] = {"all": float(grp["detected"].mean())}
        for status, sub in grp.dropna(subset=["mask_status"]).groupby("mask_status"):
            rates[split][labels.MASK_NAMES[int(status)]] = float(sub["detected"].mean())
    summary = {"mode": cfg["crop"]["mode"], "images": int(len(records)), "unreadable": int(records["unreadable"].sum()),
               "seconds": round(seconds, 2), "detection_rate": rates,
               "sources": {k: int(v) for k, v in recs["source"].value_counts().items()}}
    write_json(summary, out / "summary.json")
    lines = ["# Crop report", "", f"- mode: {summary['mode']}; images: {summary['images']}; unreadable: {summary['unreadable']}; "
             f"time: {seconds:.1f} s", "", "| split | " + " | ".join(("all",) + labels.MASK_NAMES) + " |",
             "|---|---|---|---|---|"]
    for split, r in rates.items():
        lines.append(f"| {split} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in ("all",) + labels.MASK_NAMES) + " |")
    sources = "Sources: " + ", ".join(f"{k}: {v}" for k, v in summary["sources"].items())
    lines += ["", sources]
    write_text("\n".join(lines) + "\n", out / "summary.md")
    rng = np.random.default_rng(0)
    for name, subset in (("random_crops", recs), ("fallback_crops", recs[~recs["detected"]])):
        pick = subset.iloc[rng.permutation(len(subset))[:24]]
        images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in pick["crop_path"]]
        captions = [f"{src}" + (f" p={sc:.2f}" if sc == sc else "") for src, sc in zip(pick["source"], pick["score"])]
        plots.image_grid(images, captions, name.replace("_", " "),
                         out / f"{name}.png")
    table = pd.DataFrame([{"split": split, **{k: round(r[k], 3) if k in r else None for k in ("all",) + labels.MASK_NAMES}}
                          for split, r in rates.items()])
    sections = [htmlpage.Section("Detection rate", ["<p>Share of images where MTCNN found the face (columns: all images, "
                                                    "then by mask status; eval by status only when eval answers exist).</p>",
                                                    htmlpage.table(table), f"<p>{html.escape(sources)}</p>"]),
                htmlpage.Section("Random crops", [htmlpage.image("random_crops.png", "random crops")]),
                htmlpage.Section("Fallback crops", ["<p>Images without a detected face, cropped with the fallback box.</p>",
                                                    htmlpage.image("fallback_crops.png", "fallback crops")])]
    htmlpage.render("Crop report", [f"mode {summary['mode']}; {summary['images']} images; {summary['unreadable']} unreadable; "
                                    f"{seconds:.1f} s"], sections, out / "index.html")
    log.info("crop report in %s; faces detected: %s", out / "index.html", ", ".join(f"{k} {v['all']:.1%}" for k, v in rates.items()))
    fallbacks = int((~recs["detected"]).sum())
    if cfg["crop"]["mode"] == "mtcnn" and any(v["all"] < LOW_DETECTION_RATE for v in rates.values()):
        log.warning("%d of %d crops come from fallback boxes (detection below %.0f%% in some split); look at %s before "
                    "training", fallbacks, len(recs), 100 * LOW_DETECTION_RATE, out / "fallback_crops.png")
    return out
