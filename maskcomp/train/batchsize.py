"""train.batch_size=auto: the largest training batch that fits, found by halving train.auto_batch_max on each
out-of-memory of a probe step (forward and backward of a synthetic batch at train.img_size, as training runs it)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..core.config import Settings
from ..core.device import autocast
from ..core.errors import MaskcompError
from .models import create_model

log = logging.getLogger(__name__)


def largest_fitting(try_batch: Callable[[int], None], start: int) -> int:
    """Halve from `start` while `try_batch(n)` runs out of CUDA memory; the first n that runs."""
    n = start
    while True:
        try:
            try_batch(n)
            return n
        except torch.cuda.OutOfMemoryError:
            if n == 1:
                raise MaskcompError(
                    "train.batch_size=auto: even a batch of 1 runs out of GPU memory; use a smaller train.img_size "
                    "or model.backbone"
                ) from None
            log.info("train.batch_size=auto: a batch of %d runs out of memory; trying %d", n, n // 2)
            n //= 2
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def probe_step(cfg: Settings, device: torch.device, amp_dtype) -> Callable[[int], None]:
    """A function that runs one training step's forward and backward on a synthetic batch of n images."""
    train_cfg = cfg.train
    model = create_model(cfg.model.model_copy(update={"pretrained": False}), train_cfg.img_size).to(device).train()
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(n: int) -> None:
        images = torch.randn(n, 3, *train_cfg.img_size, device=device)
        with autocast(device, amp_dtype):
            outputs = model(images)
        parts = outputs.values() if isinstance(outputs, dict) else [outputs]
        sum(p.float().mean() for p in parts).backward()
        model.zero_grad(set_to_none=True)

    return run


def resolve_batch_size(cfg: Settings, device: torch.device, amp_dtype, world: int) -> int:
    """train.batch_size, or for auto the largest batch every rank's device fits."""
    if cfg.train.batch_size != "auto":
        return cfg.train.batch_size
    found = largest_fitting(probe_step(cfg, device, amp_dtype), cfg.train.auto_batch_max)
    if world > 1:
        agreed = torch.tensor([found], device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        found = int(agreed.item())
    log.info(
        "train.batch_size=auto: %d on %s (effective batch %d)", found, device, found * cfg.train.accumulate * world
    )
    return found
