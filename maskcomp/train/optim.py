"""Optimizer and learning-rate schedule from the config, through timm's factories."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from ..core.errors import MaskcompError
from ..core.settings import TrainSettings


def create_optimizer(model: torch.nn.Module, tc: TrainSettings) -> torch.optim.Optimizer:
    """train.optimizer is any timm optimizer name (adamw, sgd, lamb, ...). Weight decay applies to every parameter
    (filter_bias_and_bn=False keeps the recipe's behaviour; timm's default would exempt biases and norms)."""
    if tc.optimizer not in list_optimizers():
        raise MaskcompError(
            f"config key train.optimizer={tc.optimizer!r}: not a timm optimizer; use e.g. adamw, sgd, lamb, adan"
        )
    return create_optimizer_v2(model, tc.optimizer, lr=tc.lr, weight_decay=tc.weight_decay, filter_bias_and_bn=False)


def create_scheduler(optimizer: torch.optim.Optimizer, tc: TrainSettings, steps_per_epoch: int) -> Scheduler:
    """train.scheduler (a timm schedule name, cosine by default) stepped every update, with a linear warm-up of
    train.warmup_epochs (fractions allowed) from and a floor at 1 % of train.lr."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=tc.scheduler,
        num_epochs=tc.epochs,
        warmup_epochs=tc.warmup_epochs,
        min_lr=tc.lr * 0.01,
        warmup_lr=tc.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=max(1, steps_per_epoch),
    )
    return scheduler
