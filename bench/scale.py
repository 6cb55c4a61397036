"""`make bench-scale`: the crop and infer stages on a competition-sized eval set (12,600 images = 1,800 persons x 7),
alone on the machine: wall time, images/s and peak RSS per stage, and what a full competition run takes on 2 cores.

Each stage runs as its own process through the stage scripts `make` runs (configs/default.yaml: MTCNN crops,
efficientnet_lite0 at 256x192, TTA identity+hflip), so its peak RSS is that process tree's own. Training is only
there to have fold models (1 epoch, 2 folds on 30 persons); its images/s feeds the full-run estimate.

Usage: python bench/scale.py [--eval-persons 1800] [--work DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from maskcomp.core.config import load_config
from maskcomp.core.fileio import write_text
from maskcomp.data.sample import make_sample

from common import RESULTS, ROOT, print_table, save_results

COMPETITION = {
    "train_persons": 2700,
    "eval_images": 12600,
    "k": 5,
    "views": 2,
    "epochs": load_config("configs/default.yaml").train.epochs,
}
TRAIN_PERSONS = 30
FOLDS = 2


def stage(script: str, overrides: list[str]) -> dict:
    """Run one stage script; wall seconds and the peak RSS of its process tree (wait4 folds in waited children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / script), "--config", "configs/default.yaml", *overrides],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{script} failed (exit {os.waitstatus_to_exitcode(status)}); rerun it by hand to see why")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024}


def overrides_for(work: Path) -> list[str]:
    outs = [f"paths.{name}={work / name}" for name in ("crops", "models", "reports", "submissions", "cache")]
    return [
        f"paths.data_root={work / 'data'}",
        f"paths.folds={work / 'folds.csv'}",
        *outs,
        f"folds.k={FOLDS}",
        "train.epochs=1",
        "train.threads=2",
    ]


def measure(work: Path, eval_persons: int) -> list[dict]:
    make_sample(load_config(None, [f"paths.data_root={work / 'data'}"]).paths.resolved, TRAIN_PERSONS, eval_persons, 0)
    eval_images, train_images = eval_persons * 7, TRAIN_PERSONS * 7
    args = overrides_for(work)
    rows = [
        {
            "stage": "crop (MTCNN, train+eval)",
            "images": eval_images + train_images,
            **stage("preprocess/crop_faces.py", args),
        }
    ]
    stage("folds/make_folds.py", args)
    rows.append({"stage": f"train (1 epoch x {FOLDS} folds)", "images": train_images, **stage("train.py", args)})
    rows.append(
        {
            "stage": f"infer ({FOLDS} folds x 2 views, eval + OOF)",
            "images": (eval_images + train_images) * FOLDS,
            **stage("infer.py", args),
        }
    )
    for row in rows:
        row["images_per_s"] = row["images"] / row["wall_s"]
    # 1 epoch on 210 images is mostly start-up: the full-run estimate takes the loop's own steady rate
    rows[1]["loop_images_per_s"] = float(
        pd.concat(map(pd.read_csv, work.glob("runs/*/*/fold*/metrics.csv")))["images_per_s"].mean()
    )
    return rows


def full_run_minutes(rows: list[dict]) -> dict:
    """Minutes of each stage at the competition's size, from the measured rates (infer: one image through one fold
    model with both views per counted image)."""
    crop, infer, train = rows[0]["images_per_s"], rows[2]["images_per_s"], rows[1]["loop_images_per_s"]
    c = COMPETITION
    train_images = c["train_persons"] * 7
    return {
        "crop_min": (train_images + c["eval_images"]) / crop / 60,
        "train_min_per_epoch_all_folds": train_images * (c["k"] - 1) / train / 60,
        "train_min": train_images * (c["k"] - 1) * c["epochs"] / train / 60,
        "infer_min": (c["eval_images"] + train_images) * c["k"] / infer / 60,
    }


def report(rows: list[dict], full: dict, eval_persons: int) -> Path:
    lines = [
        f"# Scale: crop and infer on {eval_persons * 7:,} eval images ({dt.date.today()}, 2 cores, alone)",
        "",
        "| stage | images | wall (s) | images/s | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['images']:,} | {r['wall_s']:.0f} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Training loop's own rate (metrics.csv): {rows[1]['loop_images_per_s']:.1f} images/s.",
        "",
        f"Competition-sized run at these rates (18,900 images, k=5, 2 TTA views, {COMPETITION['epochs']} epochs):",
        "",
        f"- crop: {full['crop_min']:.0f} min",
        f"- train: {full['train_min']:.0f} min "
        f"({full['train_min_per_epoch_all_folds']:.1f} min per epoch of all 5 folds)",
        f"- infer: {full['infer_min']:.0f} min",
        "",
    ]
    return write_text("\n".join(lines), RESULTS / f"scale-{dt.date.today().isoformat()}.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-persons", type=int, default=COMPETITION["eval_images"] // 7)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = measure(work, args.eval_persons)
    full = full_run_minutes(rows)
    print_table(rows)
    print(
        f"\nwrote {save_results('scale', [*rows, {'competition_estimate': full}])} and "
        f"{report(rows, full, args.eval_persons)}"
    )


if __name__ == "__main__":
    main()
