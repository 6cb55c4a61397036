"""Inference throughput on eval crops: images/s (each eval image counted once) with and without TTA views."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from maskcomp.core.config import load_config
from maskcomp.core.context import Context
from maskcomp.core.device import resolve_device
from maskcomp.crop.stage import crop_faces
from maskcomp.data.sample import make_sample
from maskcomp.data.tables import load_eval
from maskcomp.train.augment import eval_transform
from maskcomp.train.dataset import LoaderSpec, build_cache, crop_loader
from maskcomp.train.evaluate import predict
from maskcomp.train.models import create_model, normalisation

from common import peak_rss_mb

TTA_SETS = (("identity",), ("identity", "hflip"), ("identity", "hflip", "scale:1.1"))


def run(eval_persons: int = 60, repeats: int = 2) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        over = [
            f"paths.data_root={work / 'data'}",
            *[f"paths.{n}={work / n}" for n in ("crops", "reports", "cache")],
            "crop.mode=center",
        ]
        cfg = load_config("configs/sample.yaml", over)
        make_sample(cfg.paths.resolved, 2, eval_persons, seed=0)
        crop_faces(cfg)
        size = tuple(cfg.train.img_size)
        ctx = Context(cfg)
        cache = build_cache(ctx, size)
        evals = load_eval(ctx)
        mean, std = normalisation(cfg.model.backbone)
        device = resolve_device(cfg.train.device)
        loader = crop_loader(
            cache,
            evals,
            eval_transform(size, mean, std),
            LoaderSpec(cfg.infer.batch_size, cfg.train.workers),
            with_targets=False,
        )
        dataset = loader.dataset
        model = (
            create_model(cfg.model.model_copy(update={"pretrained": False}), cfg.train.img_size)
            .to(device)
            .to(memory_format=torch.channels_last)
        )
        predict(model, loader, device)  # warm-up: workers start, allocator settles
        rows = []
        for tta in TTA_SETS:
            start = time.perf_counter()
            for _ in range(repeats):
                predict(model, loader, device, tta=tta)
            rate = repeats * len(dataset) / (time.perf_counter() - start)
            rows.append(
                {
                    "bench": "infer",
                    "backbone": cfg.model.backbone,
                    "img_size": f"{size[0]}x{size[1]}",
                    "batch": cfg.infer.batch_size,
                    "tta": "+".join(tta),
                    "images": len(dataset),
                    "images_per_s": rate,
                    "device": device.type,
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
    for row in rows:
        row["vs_no_tta"] = row["images_per_s"] / rows[0]["images_per_s"]
    return rows
