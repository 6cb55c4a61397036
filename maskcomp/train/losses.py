"""Losses: weighted sums of cross-entropy (label smoothing), focal and soft macro-F1, per head."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core import labels
from ..core.errors import MaskcompError
from ..core.settings import LossSettings

# name -> fn(logits, target, class weight or None, label smoothing, loss config): a new loss is one function and
# one @register line, and loss.terms can name it
LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", float, dict], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return add


def _soft_targets(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot (or already soft) targets with label smoothing applied."""
    soft = target.float() if target.ndim == 2 else F.one_hot(target, num_classes).float()
    return soft * (1 - smoothing) + smoothing / num_classes


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, weight: torch.Tensor | None = None, smoothing: float = 0.0
) -> torch.Tensor:
    logp = logits.float().log_softmax(1)
    soft = _soft_targets(target, logits.shape[1], smoothing)
    per_class = -soft * (1 - logp.exp()) ** gamma * logp
    if weight is not None:
        per_class = per_class * weight
    return per_class.sum(1).mean()


def soft_f1_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - macro F1 computed from probabilities: differentiable, and exactly 1 - macro F1 on one-hot predictions."""
    probs = logits.float().softmax(1)
    soft = _soft_targets(target, logits.shape[1], 0.0)
    tp = (probs * soft).sum(0)
    fp = (probs * (1 - soft)).sum(0)
    fn = ((1 - probs) * soft).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    present = (soft.sum(0) + probs.sum(0)) > 0
    return 1 - f1[present].mean()


@register("ce")
def _cross_entropy(logits, target, weight, smoothing, cfg) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)


@register("focal")
def _focal(logits, target, weight, smoothing, cfg) -> torch.Tensor:
    return focal_loss(logits, target, cfg.focal_gamma, weight, smoothing)


@register("f1")
def _soft_f1(logits, target, weight, smoothing, cfg) -> torch.Tensor:
    return soft_f1_loss(logits, target)


def balanced_class_weights(values: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(values, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(values) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


class Criterion:
    """loss.terms summed with their weights, over every head with loss.head_weights."""

    def __init__(
        self, loss_cfg: LossSettings, heads: dict[str, int], class_weights: dict[str, torch.Tensor] | None = None
    ):
        for term in loss_cfg.terms:
            if term.get("name") not in LOSSES:
                raise MaskcompError(f"loss.terms: unknown loss '{term.get('name')}'; use {', '.join(LOSSES)}")
        self.cfg, self.heads = loss_cfg, heads
        self.class_weights = class_weights or {}

    def __call__(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for head in self.heads:
            if head == "age_ord":  # one binary question per cut point: is the person at least k years old?
                cuts = torch.tensor(labels.AGE_CUTS, device=outputs[head].device)
                at_least = (targets["age_years"][:, None] >= cuts).float()
                value = F.binary_cross_entropy_with_logits(outputs[head].float(), at_least)
                total = total + self.cfg.head_weights.age * value
                continue
            logits, target = outputs[head], targets[head]
            weight = self.class_weights.get(head)
            weight = weight.to(logits.device) if weight is not None else None
            # soft targets come from timm Mixup, which already applied the smoothing: apply it once
            smoothing = 0.0 if target.is_floating_point() else self.cfg.label_smoothing
            head_loss = 0.0
            for term in self.cfg.terms:
                head_loss = head_loss + term["weight"] * LOSSES[term["name"]](
                    logits, target, weight, smoothing, self.cfg
                )
            total = total + getattr(self.cfg.head_weights, head, 1.0) * head_loss
        return total
