"""Inference engines side by side, alone on this machine's cores: images/s of torch eager (contiguous), torch with
channels_last (what `infer.engine=torch` runs), and onnxruntime (`infer.engine=onnxruntime`), on the default config's
size (256x192) and the quality recipe's (96x72), efficientnet_lite0 without pretrained weights (speed does not
depend on the weights), batch 64; with the largest probability difference to torch and the share of equal argmax
decisions on the same batches."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from maskcomp.core.config import load_config
from maskcomp.core.device import configure_threads
from maskcomp.predict.engine import OnnxModel, export_onnx
from maskcomp.train.models import create_model, probs18

from common import ROOT

SIZES = {"default 256x192": (256, 192), "quality 96x72": (96, 72)}
BATCH = 64


def images_per_s(model, batch: torch.Tensor, seconds: float = 8.0) -> float:
    with torch.inference_mode():
        model(batch)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            count += 1
    return count * len(batch) / (time.perf_counter() - start)


def engines(size: tuple[int, int], folder: Path) -> dict:
    """The same weights in each engine, with whether its input goes in channels_last."""
    cfg = load_config(ROOT / "configs" / "quality.yaml", ["model.pretrained=false"])
    torch.manual_seed(0)
    eager = create_model(cfg.model, size).eval()
    channels_last = create_model(cfg.model, size).eval()
    channels_last.load_state_dict(eager.state_dict())
    onnx = OnnxModel(export_onnx(eager, size, folder / "model.onnx"), torch.get_num_threads())
    return {
        "torch eager": (eager, False),
        "torch channels_last": (channels_last.to(memory_format=torch.channels_last), True),
        "onnxruntime": (onnx, False),
    }


def run() -> list[dict]:
    threads = configure_threads(0)
    rows = []
    for name, size in SIZES.items():
        with tempfile.TemporaryDirectory() as folder:
            models = engines(size, Path(folder))
            batch = torch.rand(BATCH, 3, *size)
            with torch.inference_mode():
                reference = probs18(models["torch eager"][0](batch))
            eager_rate = None
            for engine, (model, last) in models.items():
                x = batch.contiguous(memory_format=torch.channels_last) if last else batch
                rate = images_per_s(model, x)
                eager_rate = eager_rate or rate
                with torch.inference_mode():
                    probs = probs18(model(x))
                rows.append({
                    "size": name, "engine": engine, "threads": threads, "images/s": round(rate, 1),
                    "x eager": round(rate / eager_rate, 2),
                    "max |p - p_eager|": f"{float((probs - reference).abs().max()):.1e}",
                    "same argmax": float((probs.argmax(1) == reference.argmax(1)).float().mean()),
                })  # fmt: skip
    return rows
