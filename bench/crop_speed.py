"""Crop-stage detection speed: batched (workers decode while MTCNN runs on batches) vs one image at a time.

Two more rows time facenet-pytorch's `MTCNN.detect` alone on images already decoded and downscaled, 1 and
`batch_size` images per call: the most any batching of this detector can gain on this machine, since the
stage adds decoding, the relaxed retry and the cache writes around it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from maskcomp.core.config import load_config
from maskcomp.crop.detect import DecodeDataset, make_detectors, run_detection
from maskcomp.crop.items import Item
from maskcomp.data.sample import make_sample

from common import SHARED_DATA, peak_rss_mb


def images(n: int, work: Path) -> tuple[list[Item], str]:
    root = SHARED_DATA / "train" / "images"
    source = "aaf_masks (real faces)"
    if not root.exists():
        data = work / "data"
        make_sample(load_config(None, [f"paths.data_root={data}"]).paths.resolved, n // 7 + 1, 0, seed=0)
        root, source = data / "train" / "images", "generated sample"
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))[:n]
    return [Item(str(p), "train", str(p), p.parent.name) for p in paths], source


def detector_only(items: list[Item], crop_cfg: dict, source: str) -> list[dict]:
    detector, _ = make_detectors(crop_cfg)
    decoded = DecodeDataset(items, crop_cfg.detect_scale)
    imgs = [decoded[i][1] for i in range(len(items))]
    with torch.inference_mode():
        detector.detect(imgs[0])  # the first call sets up oneDNN kernels
    rows = []
    for per_call in (1, crop_cfg.batch_size):
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(imgs), per_call):
                detector.detect(np.stack(imgs[i : i + per_call]))
        rows.append(
            {
                "bench": "crop",
                "mode": f"MTCNN.detect only, {per_call} per call",
                "images": len(imgs),
                "data": source,
                "images_per_s": len(imgs) / (time.perf_counter() - start),
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    rows[1]["speedup"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    return rows


def run(n: int = 200) -> list[dict]:
    crop_cfg = load_config(None).crop
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items, source = images(n, Path(tmp))
        rows += detector_only(items, crop_cfg, source)  # also the warm-up: importing facenet-pytorch takes ~4 s
        for mode, one in (
            ("one image at a time", True),
            (f"batched (batch {crop_cfg.batch_size}, {crop_cfg.workers} workers)", False),
        ):
            start = time.perf_counter()
            dets = run_detection(items, crop_cfg, Path(tmp) / f"{one}.jsonl", one_at_a_time=one)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "bench": "crop",
                    "mode": mode,
                    "images": len(items),
                    "data": source,
                    "images_per_s": len(items) / seconds,
                    "detected": sum(bool(d.get("boxes")) for d in dets.values()),
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
    rows[3]["speedup"] = rows[3]["images_per_s"] / rows[2]["images_per_s"]
    return rows
