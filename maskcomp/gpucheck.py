"""`make gpu-check`: every CUDA path of the pipeline on a tiny generated dataset, in about two minutes.

Steps: MTCNN crop on the GPU, one epoch of training with fp16 and with bf16 (or its fp16 fallback) with
channels_last and EMA, optionally torch.compile, torchrun DDP with one process per GPU (NCCL), inference with
TTA, and the ensemble. Each step is one row: step, device, dtype, images/s, peak GPU memory, and `ok` or the
one-line error; a failing step does not stop the others. Without CUDA it says so and exits 0;
`--device cpu` runs the same steps on the CPU (that is how the tests exercise it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .core.config import PROJECT_ROOT, Settings, dump_config, load_config, updated
from .core.device import resolve_amp
from .core.fileio import write_text
from .crop.stage import crop_faces
from .data.folds import make_folds
from .data.sample import make_sample
from .ensemble.stage import ensemble
from .predict.infer import infer
from .runs import resolve_run
from .train.trainer import train

PERSONS, EVAL_PERSONS = 16, 4
TINY = [
    "model.backbone=mobilenetv3_small_050",
    "model.pretrained=false",
    "train.img_size=[128, 96]",
    "train.epochs=1",
    "train.batch_size=16",
    "train.workers=2",
    "folds.k=2",
    "train.folds=[0]",
    "train.ema=true",
    "train.channels_last=true",
    "infer.tta=[identity, hflip]",
    "crop.workers=2",
]


@dataclass
class Row:
    step: str
    device: str
    dtype: str = "-"
    images_per_s: float | None = None
    peak_gpu_mb: float | None = None
    status: str = "ok"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]


def _measure(step: str, device: str, dtype: str, fn: Callable[[], float | None]) -> Row:
    """Run one step; images/s is what `fn` returns, peak memory is the CUDA allocator's high-water mark."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    row = Row(step, device, dtype)
    try:
        row.images_per_s = fn()
    except Exception as err:  # a check reports every failure as a row and goes on to the next step
        row.status = "error: " + _one_line(err)
    if device.startswith("cuda"):
        row.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    return row


def _config(work: Path, device: str, *extra: str) -> Settings:
    outs = [f"paths.{name}={work / name}" for name in ("crops", "models", "reports", "submissions", "cache")]
    return load_config(
        "configs/sample.yaml",
        [
            f"paths.data_root={work / 'data'}",
            f"paths.folds={work / 'folds.csv'}",
            *outs,
            *TINY,
            f"train.device={device}",
            f"crop.device={device}",
            *extra,
        ],
    )


def _train_rate(cfg: Settings) -> float:
    train(cfg)
    metrics = pd.read_csv(resolve_run(cfg.paths.resolved, cfg.experiment).fold(0).metrics)
    return float(metrics["images_per_s"].iloc[-1])


def _timed(fn: Callable[[], object], images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def _ddp(work: Path, device: str, processes: int) -> float:
    """torchrun of train.py with `processes` ranks (NCCL on CUDA, gloo on CPU) on fold 1; images/s of its epoch."""
    cfg = _config(work, device, "experiment=gpucheck_ddp", "train.amp=fp16", "train.folds=[1]")
    config_file = write_text(dump_config(cfg), work / "gpucheck_ddp.yaml")
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            f"--nproc_per_node={processes}",
            str(PROJECT_ROOT / "train.py"),
            "--config",
            str(config_file),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"torchrun exited {proc.returncode}")
    metrics = resolve_run(cfg.paths.resolved, "gpucheck_ddp").fold(1).metrics
    return float(pd.read_csv(metrics)["images_per_s"].iloc[-1])


def run_check(device: str = "cuda", compile_step: bool = False, ddp_processes: int | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="maskcomp-gpu-check-") as tmp:
        work = Path(tmp)
        base = _config(work, device)
        make_sample(base.paths.resolved, PERSONS, EVAL_PERSONS, seed=0)
        images = (PERSONS + EVAL_PERSONS) * 7
        rows = [_measure("crop (MTCNN)", device, "fp32", lambda: _timed(lambda: crop_faces(base), images))]
        make_folds(base)
        for amp in ("fp16", "bf16"):
            cfg = _config(work, device, f"experiment=gpucheck_{amp}", f"train.amp={amp}")
            dtype, note = resolve_amp(amp, torch.device(device))
            label = (
                "fp32" if device == "cpu" else str(dtype).removeprefix("torch.") + (" (bf16 fallback)" if note else "")
            )
            rows.append(
                _measure(f"train 1 epoch, {amp}, channels_last, EMA", device, label, lambda cfg=cfg: _train_rate(cfg))
            )
        if compile_step:
            cfg = _config(work, device, "experiment=gpucheck_compile", "train.amp=bf16", "train.compile=true")
            rows.append(_measure("train 1 epoch, torch.compile", device, "bf16", lambda: _train_rate(cfg)))
        processes = ddp_processes or max(1, torch.cuda.device_count() if device.startswith("cuda") else 2)
        rows.append(
            _measure(
                f"torchrun DDP x{processes} ({'NCCL' if device.startswith('cuda') else 'gloo'})",
                device,
                "fp16",
                lambda: _ddp(work, device, processes),
            )
        )
        fp16 = _config(work, device, "experiment=gpucheck_fp16", "train.amp=fp16")
        rows.append(
            _measure(
                "infer, TTA identity+hflip",
                device,
                "fp16",
                lambda: _timed(lambda: infer(fp16), EVAL_PERSONS * 7 * 2 + PERSONS * 7 // 2),
            )
        )
        whole = updated(fp16, {"partial_run": True})  # the check trains one fold of each run: its path, not its score
        rows.append(_measure("ensemble", device, "-", lambda: _timed(lambda: ensemble(whole), EVAL_PERSONS * 7)))
    return rows


def table(rows: list[Row]) -> str:
    header = ["step", "device", "dtype", "images/s", "peak GPU MB", "status"]
    cells = [
        [
            r.step,
            r.device,
            r.dtype,
            "-" if r.images_per_s is None else f"{r.images_per_s:.0f}",
            "-" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}",
            r.status,
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)
