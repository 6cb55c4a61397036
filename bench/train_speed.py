"""Training-loop throughput (cached crops -> augmentation -> DataLoader -> step) against the same model's
pure forward+backward on in-memory tensors of the same batch and resolution, in one process."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from common import peak_rss_mb

from maskcomp.config import load_config
from maskcomp.crop import crop_faces
from maskcomp.folds import make_folds
from maskcomp.paths import Paths
from maskcomp.sample import make_sample
from maskcomp.trainer import FoldTrainer
from maskcomp.data import load_train


def run(persons: int = 60, epochs_timed: int = 1) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = [f"paths.data_root={work / 'data'}", f"paths.folds={work / 'folds.csv'}",
                *[f"paths.{n}={work / n}" for n in ("crops", "runs", "reports", "submissions", "cache")],
                "crop.mode=center", "train.epochs=3", "folds.k=3"]
        cfg = load_config("configs/sample.yaml", over)
        make_sample(Paths.from_config(cfg), persons, 2, seed=0)
        crop_faces(cfg)
        make_folds(cfg)
        trainer = FoldTrainer(cfg, 0, load_train(cfg))
        trainer._train_epoch(0)  # warm-up: workers start, allocator settles
        start = time.perf_counter()
        _, loop_rate = trainer._train_epoch(1)
        loop_seconds = time.perf_counter() - start
        bs = cfg["train"]["batch_size"]
        h, w = cfg["train"]["img_size"]
        x = torch.randn(bs, 3, h, w).contiguous(memory_format=torch.channels_last)
        targets = {k: torch.randint(0, n, (bs,)) for k, n in trainer.heads.items()}
        steps = len(trainer.train_loader)
        model = trainer.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            loss = trainer.criterion(model(x), targets)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
        pure_rate = steps * bs / (time.perf_counter() - start)
    return [{"bench": "train", "backbone": cfg["model"]["backbone"], "img_size": f"{h}x{w}", "batch": bs,
             "loop_images_per_s": loop_rate, "pure_images_per_s": pure_rate, "ratio": loop_rate / pure_rate,
             "loop_seconds": loop_seconds, "peak_rss_mb": peak_rss_mb(), "device": "cpu" if not torch.cuda.is_available() else "cuda"}]
