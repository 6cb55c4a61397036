"""Optimizer and learning-rate schedule from the config, through timm's factories."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

from ..core.errors import MaskcompError
from ..core.settings import TrainSettings


def create_optimizer(model: torch.nn.Module, train_cfg: TrainSettings) -> torch.optim.Optimizer:
    """train.optimizer is any timm optimizer name (adamw, sgd, lamb, ...). Weight decay applies to every parameter
    (filter_bias_and_bn=False keeps the recipe's behaviour; timm's default would exempt biases and norms)."""
    if train_cfg.optimizer not in list_optimizers():
        raise MaskcompError(
            f"config key train.optimizer={train_cfg.optimizer!r}: not a timm optimizer; use e.g. adamw, sgd, lamb, adan"
        )
    return create_optimizer_v2(
        model, train_cfg.optimizer, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, filter_bias_and_bn=False
    )


def create_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainSettings, steps_per_epoch: int) -> Scheduler:
    """train.scheduler (a timm schedule name, cosine by default) stepped every update, with a linear warm-up of
    train.warmup_epochs (fractions allowed) from and a floor at 1 % of train.lr."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=train_cfg.scheduler,
        num_epochs=train_cfg.epochs,
        warmup_epochs=train_cfg.warmup_epochs,
        min_lr=train_cfg.lr * 0.01,
        warmup_lr=train_cfg.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=max(1, steps_per_epoch),
    )
    return scheduler
