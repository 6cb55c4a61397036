"""Wall time of `make all` from nothing: the tracked files are copied to a fresh directory (sharing this .venv),
so the sample data, crops, folds, runs and submission are all made anew, as on a new machine after setup.

The copy must never change the environment it is measured with: setup is skipped there (SKIP_SETUP=1), and
PYTHONPATH points at the copy, so its stages import the copy's code without re-pointing the editable install."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import f1_score

from common import ROOT

TARGET_MINUTES = 5


def copy_tracked_files(dst_root: Path) -> None:
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, listing.decode().split("\0")):
        src, dst = ROOT / name, dst_root / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="maskcomp-make-all-") as tmp:
        work = Path(tmp)
        copy_tracked_files(work)
        (work / ".venv").symlink_to(ROOT / ".venv")
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(work)}
        subprocess.run(
            ["make", "all", "SKIP_SETUP=1"],
            cwd=work,
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        submission = next((work / "submissions").glob("*.csv"))
        side = json.loads(submission.with_suffix(".json").read_text())
        sub = pd.read_csv(submission)
        truth = (
            pd.read_csv(work / "input" / "data" / "eval_answers.csv").set_index("ImageID").loc[sub["ImageID"], "ans"]
        )
        persons = len(pd.read_csv(work / "input" / "data" / "train" / "train.csv"))
    return [
        {
            "bench": "make all",
            "config": "configs/sample.yaml",
            "train_persons": persons,
            "wall_s": seconds,
            "minutes": seconds / 60,
            "target_minutes": TARGET_MINUTES,
            "oof_macro_f1": side["oof_before_decision"]["f1"],
            "eval_macro_f1": f1_score(truth, sub["ans"], average="macro"),
        }
    ]
