"""`make bench-upstream`: how long `make infer` and `make ensemble` spend deciding that their upstream (crops, folds,
run, predictions) is current when nothing changed, on a competition-sized eval set (12,600 images = 1,800 persons x
7) beside a small training set. The data is generated once; each code checkout given then prepares its own outputs
from it (centre crops, folds, a 1-epoch run, its predictions: a stored run's files are its code's) and is timed on
them, best of 3, in one run: the landed code (`--code DIR`, a checkout of an earlier commit) against this one.

Usage: python bench/upstream.py [--code DIR ...] [--eval-persons 1800] [--train-persons 60] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, print_table, save_results

# what each timed process runs: the stages' own functions, present in every checkout since the stage manifests
TIMED = """
import json, sys, time, logging
from maskcomp.core.config import load_config
from maskcomp.predict.infer import infer
from maskcomp.ensemble.blend import load_experiment
try:
    from maskcomp.core.context import Context  # checks take a stage call's context (older checkouts: the settings)
except ImportError:
    Context = None
logging.disable(logging.WARNING)
cfg = load_config("configs/sample.yaml", sys.argv[1:])
out = {}
steps = {
    "infer, nothing to do": lambda: infer(cfg),
    "ensemble's inputs": lambda: load_experiment(Context(cfg) if Context else cfg, cfg.experiment),
}
for name, step in steps.items():
    times = []
    for _ in range(3):
        start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
    out[name] = min(times)
print(json.dumps(out))
"""


PREPARE = """
import sys
from maskcomp.core.config import load_config
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.predict.infer import infer
from maskcomp.train.trainer import train
cfg = load_config("configs/sample.yaml", sys.argv[1:])
for step in (crop_faces, make_folds, train, infer):
    step(cfg)
"""


def overrides(data: Path, out: Path) -> list[str]:
    outs = [f"paths.{n}={out / n}" for n in ("crops", "models", "reports", "submissions", "cache")]
    return [
        f"paths.data_root={data}", f"paths.folds={out / 'folds.csv'}", *outs, "crop.mode=center",
        "train.device=cpu", "train.epochs=1", "train.img_size=[48, 36]", "model.pretrained=false",
        "model.backbone=mobilenetv3_small_050", "folds.k=2", "infer.tta=[identity]", "experiment=bench",
    ]  # fmt: skip


def make_data(data: Path, train_persons: int, eval_persons: int) -> None:
    """The generated data set, once (kept in the work folder)."""
    if (data / "eval" / "info.csv").exists():
        return
    sys.path.insert(0, str(ROOT))
    from maskcomp.core.config import load_config
    from maskcomp.data.sample import make_sample

    make_sample(load_config(None, [f"paths.data_root={data}"]).paths.resolved, train_persons, eval_persons, seed=0)


def run_code(code: Path, program: str, args: list[str]) -> str:
    """`program` under a checkout's code (its folder first on the path and as the working folder)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", program, *args], cwd=code, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench-upstream: {code}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return done.stdout


def timed(code: Path, work: Path, name: str) -> dict:
    """Prepare this checkout's outputs (once), then time its checks."""
    out = work / name
    args = overrides(work / "data", out)
    if not (out / "prepared").exists():
        run_code(code, PREPARE, args)
        (out / "prepared").write_text("yes\n")
    return json.loads(run_code(code, TIMED, args).strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, action="append", default=[], help="another checkout to time first")
    parser.add_argument("--eval-persons", type=int, default=1800)
    parser.add_argument("--train-persons", type=int, default=60)
    parser.add_argument("--work", type=Path, default=None, help="keep the prepared data here (reused when present)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    make_data(work / "data", args.train_persons, args.eval_persons)
    rows = []
    for i, code in enumerate([*args.code, ROOT]):
        label = "this checkout" if code == ROOT else str(code)
        seconds = timed(code.resolve(), work, "this" if code == ROOT else f"other{i}")
        rows += [{"code": label, "step": step, "seconds": round(s, 3)} for step, s in seconds.items()]
    info = {"eval_images": args.eval_persons * 7, "train_images": args.train_persons * 7}
    rows = [{**row, **info} for row in rows]
    print_table(rows)
    print(f"bench-upstream: results in {save_results('upstream', rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
