"""Predicting with a fold model: test-time augmentation views, the probabilities of every head, and the tables
(OOF, eval) they are written as. Training validates with it; the infer stage re-scores and predicts with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..core import labels
from ..core.device import autocast
from ..core.errors import MaskcompError
from ..core.paths import Paths
from .models import probs18


def tta_view(images: torch.Tensor, op: str) -> torch.Tensor:
    """identity | hflip | scale:<f> (zoom in by f around the centre, same output size)."""
    if op == "identity":
        return images
    if op == "hflip":
        return images.flip(-1)
    if op.startswith("scale:"):
        factor = float(op.split(":", 1)[1])
        h, w = images.shape[-2:]
        big = F.interpolate(images, scale_factor=factor, mode="bilinear", align_corners=False)
        top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
        return big[..., top : top + h, left : left + w]
    raise MaskcompError(f"infer.tta: unknown view '{op}'; use identity, hflip or scale:<factor> (e.g. scale:1.1)")


def view_outputs(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device, amp_dtype, tta: tuple[str, ...]
) -> list[dict[str, torch.Tensor]]:
    """The model's outputs (fp32) on each TTA view of a batch."""
    views = []
    for op in tta:
        with autocast(device, amp_dtype):
            views.append({k: v.float() for k, v in model(tta_view(images, op)).items()})
    return views


def reduce_views(views: list[dict[str, torch.Tensor]], reduce: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """18-class and per-head probabilities of one batch from its views: the mean of the views' probabilities, or
    the probabilities of the views' mean logits; the ordinal head's P(age >= k) is always a mean of probabilities."""
    if reduce == "mean_logits":
        mean = {k: torch.stack([v[k] for v in views]).mean(0) for k in views[0]}
        p18, heads = probs18(mean), {h: mean[h].softmax(1) for h in labels.HEADS if h in mean}
    else:
        p18 = torch.stack([probs18(v) for v in views]).mean(0)
        heads = {h: torch.stack([v[h].softmax(1) for v in views]).mean(0) for h in labels.HEADS if h in views[0]}
    if "age_ord" in views[0]:
        heads["age_ord"] = torch.stack([v["age_ord"].sigmoid() for v in views]).mean(0)
    return p18, heads


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype=None,
    tta: tuple[str, ...] = ("identity",),
    reduce: str = "mean_probs",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, 18) probabilities and per-head probabilities in loader order, over the TTA views; a single-head model's
    heads are read off its 18 classes."""
    model.eval()
    all18, all_heads = [], {h: [] for h in (*labels.HEADS, "age_ord")}
    for images, _, _ in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        p18, heads = reduce_views(view_outputs(model, images, device, amp_dtype, tta), reduce)
        all18.append(p18.cpu())
        for h in heads:
            all_heads[h].append(heads[h].cpu())
    probs = torch.cat(all18).numpy()
    if not all(all_heads[h] for h in labels.HEADS):
        return probs, labels.head_probs_from_18(probs)
    return probs, {h: torch.cat(v).numpy() for h, v in all_heads.items() if v}


def probability_table(probs: np.ndarray, head_probs: dict) -> pd.DataFrame:
    """pred, p0..p17 and each head's probabilities (mask_p*, gender_p*, age_p*, age_ord_p* for P(age >= k))."""
    table = pd.DataFrame(probs, columns=labels.PROB_COLUMNS)
    table.insert(0, "pred", probs.argmax(1))
    for h, p in head_probs.items():
        table[[f"{h}_p{i}" for i in range(p.shape[1])]] = p
    return table


def oof_table(val: pd.DataFrame, fold: int, probs: np.ndarray, head_probs: dict, paths: Paths) -> pd.DataFrame:
    """A fold's validation predictions; images are named by their key under the data root (see Paths.image_key)."""
    table = val[["image_path", "person_id", "label", "mask", "gender_label", "age_group", "age"]].reset_index(drop=True)
    table["image_path"] = [paths.image_key(p) for p in table["image_path"]]
    table.insert(2, "fold", fold)
    return pd.concat([table, probability_table(probs, head_probs)], axis=1)
