"""`make bench ARGS=contention`: the pipeline's CPU work on a busy machine. Training steps/s and infer images/s of the
quality recipe's model (efficientnet_lite0 at 96x72, batch 32 / 128, no pretrained weights needed) alone, then
beside 1, 2 and 4 busy processes (a CPU-bound loop each), as ratios to alone, against the fair share
(cores / (cores + busy), capped at 1). Each checkout given (`--code DIR`, e.g. a worktree of the commit before a
change) is measured in the same run as this one, with the automatic thread count and with train.threads=2.

Usage: python bench/contention.py [--code DIR ...] [--levels 0 1 2 4] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import ROOT, print_table, save_results

# runs under each checkout's code: importing maskcomp first is what an entry point does
MEASURE = """
import json, sys, time
import maskcomp
import torch
from maskcomp.core.config import load_config
from maskcomp.core.device import configure_threads
from maskcomp.train.models import create_model, head_sizes
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
cfg = load_config("configs/quality.yaml", ["model.pretrained=false"])
used = configure_threads(threads)
torch.manual_seed(0)
size = tuple(cfg.train.img_size)
model = create_model(cfg.model, size)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
heads = head_sizes(cfg.model.head)

def rate(step, batch):
    step(); step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(); count += 1
    return count * batch / (time.perf_counter() - start)

def train_step(x=torch.randn(cfg.train.batch_size, 3, *size)):
    out = model.train()(x)
    loss = sum(torch.nn.functional.cross_entropy(out[h], torch.zeros(len(x), dtype=torch.long)) for h in heads)
    optimizer.zero_grad(); loss.backward(); optimizer.step()

def infer_step(x=torch.randn(cfg.infer.batch_size, 3, *size)):
    with torch.inference_mode():
        model.eval()(x)

train_rate = rate(train_step, cfg.train.batch_size)
infer_rate = rate(infer_step, cfg.infer.batch_size)
print(json.dumps({"threads_used": used, "train_img_s": train_rate, "infer_img_s": infer_rate}))
"""
BUSY = "while True: pass"


def measure(code: Path, threads: int, busy: int, seconds: float) -> dict:
    """One measurement under `code`, with `busy` CPU-bound processes running beside it."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(threads), str(seconds)],
            cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    if done.returncode:
        raise SystemExit(f"bench contention: {code}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_for(code: Path, label: str, threads: int, levels: list[int], seconds: float) -> list[dict]:
    cores = len(os.sched_getaffinity(0))
    results = {busy: measure(code, threads, busy, seconds) for busy in levels}
    alone = results[levels[0]]
    rows = []
    for busy, got in results.items():
        row = {"code": label, "threads": threads or "auto", "busy": busy, "threads_used": got["threads_used"]}
        for what in ("train", "infer"):
            row[f"{what} img/s"] = round(got[f"{what}_img_s"], 1)
            row[f"{what} ratio"] = round(got[f"{what}_img_s"] / alone[f"{what}_img_s"], 3)
        rows.append({**row, "fair share": round(min(1.0, cores / (cores + busy)), 3)})
    return rows


def run(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, action="append", default=[], help="another checkout to measure first")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 4], help="busy processes (0 first)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per rate")
    args = parser.parse_args(argv or [])
    rows = []
    for threads in (0, 2):
        for code in [*args.code, ROOT]:
            label = "this checkout" if code == ROOT else code.name
            rows += rows_for(code.resolve(), label, threads, args.levels, args.seconds)
    return rows


if __name__ == "__main__":
    table = run(sys.argv[1:])
    print_table(table)
    print(f"bench contention: results in {save_results('contention', table)}")
