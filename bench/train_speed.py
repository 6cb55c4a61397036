"""Training-loop throughput (cached crops -> augmentation -> DataLoader -> step) against the same model's
pure forward+backward on device tensors of the same batch and resolution (same autocast and memory format),
in one process; both again while one competing busy process runs (a shared CPU), as a ratio to alone, with the
automatic thread count and with the thread count forced to what it is alone."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.device import Placement, autocast, resolve_device
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.sample import make_sample
from maskcomp.data.tables import load_train
from maskcomp.runs import open_run
from maskcomp.train.trainer import FoldTrainer, run_manifest

from common import peak_rss_mb

BUSY = "while True: pass"


def pure_rate(trainer: FoldTrainer, steps: int) -> float:
    """Images/s of forward+backward+step alone, on tensors already on the device."""
    train_cfg = trainer.cfg.train
    bs, (h, w) = train_cfg.batch_size, train_cfg.img_size
    x = torch.randn(bs, 3, h, w, device=trainer.device)
    x = x.contiguous(memory_format=torch.channels_last) if train_cfg.channels_last else x
    targets = {k: torch.randint(0, n, (bs,), device=trainer.device) for k, n in trainer.heads.items()}
    model = trainer.model.train()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast(trainer.device, trainer.amp_dtype):
            outputs = model(x)
        loss = trainer.criterion(outputs, targets)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - start)


def measure(cfg: dict, label: str) -> dict:
    """A fresh trainer (threads chosen now, as a training started at this moment would), one warm-up epoch,
    then one timed epoch of the loop and as many pure steps."""
    ctx = Context(cfg)
    trainer = FoldTrainer(
        ctx, 0, load_train(ctx), open_run(cfg, run_manifest(ctx)), Placement(resolve_device(cfg.train.device))
    )
    threads = torch.get_num_threads()
    trainer._train_epoch(0)
    _, loop = trainer._train_epoch(1)
    pure = pure_rate(trainer, len(trainer.train_loader))
    h, w = cfg.train.img_size
    return {
        "bench": "train",
        "load": label,
        "backbone": cfg.model.backbone,
        "img_size": f"{h}x{w}",
        "batch": cfg.train.batch_size,
        "workers": cfg.train.workers,
        "torch_threads": threads,
        "loop_images_per_s": loop,
        "pure_images_per_s": pure,
        "loop_over_pure": loop / pure,
        "device": str(trainer.device),
    }


def run(persons: int = 120, threads: int | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = [
            f"paths.data_root={work / 'data'}",
            f"paths.folds={work / 'folds.csv'}",
            *[f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache")],
            "crop.mode=center",
            "train.epochs=3",
            "folds.k=3",
            *([f"train.threads={threads}"] if threads is not None else []),
        ]
        cfg = load_config("configs/sample.yaml", over)
        make_sample(cfg.paths.resolved, persons, 2, seed=0)
        crop_faces(cfg)
        make_folds(cfg)
        alone = measure(cfg, "alone")
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            time.sleep(2)
            shared = measure(cfg, "with 1 busy process")
            # the same with every core's thread forced (train.threads = all CPUs): what the automatic choice avoids
            forced = measure(
                updated(cfg, {"train.threads": alone["torch_threads"]}),
                "with 1 busy process, threads forced",
            )
        finally:
            busy.kill()
            busy.wait()
    for row in (shared, forced):
        for key in ("loop_images_per_s", "pure_images_per_s"):
            row[f"{key.split('_')[0]}_ratio_to_alone"] = row[key] / alone[key]
    return [alone, shared, forced, {"bench": "train", "load": "peak", "peak_rss_mb": peak_rss_mb()}]
