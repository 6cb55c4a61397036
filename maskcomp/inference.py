"""Prediction with test-time augmentation, and the infer stage: each fold's best.pt scores the eval set
(test_probs.npy + test_ids.csv) and re-scores its validation images with the same TTA (oof_tta.csv)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import labels
from .augment import eval_transform
from .config import Config
from .data import load_eval, load_train
from .dataset import CropDataset, build_cache, existing_crops_only, targets_of
from .device import amp_dtype_of, autocast, resolve_device
from .errors import MaskcompError
from .fileio import atomic_path, write_csv, write_json
from .folds import load_folds
from .models import create_model, normalisation, probs18
from .paths import Paths

log = logging.getLogger(__name__)


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
        return big[..., top:top + h, left:left + w]
    raise MaskcompError(f"infer.tta: unknown view '{op}'; use identity, hflip or scale:<factor> (e.g. scale:1.1)")


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp_dtype=None,
            tta: tuple[str, ...] = ("identity",), reduce: str = "mean_probs") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, 18) probabilities and per-head probabilities in loader order, averaged over the TTA views."""
    if reduce not in ("mean_probs", "mean_logits"):
        raise MaskcompError(f"infer.tta_reduce '{reduce}' is unknown; use mean_probs or mean_logits")
    model.eval()
    all18, all_heads = [], {h: [] for h in labels.HEADS}
    for images, _, _ in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        views = []
        for op in tta:
            with autocast(device, amp_dtype):
                views.append({k: v.float() for k, v in model(tta_view(images, op)).items()})
        if reduce == "mean_logits":
            mean = {k: torch.stack([v[k] for v in views]).mean(0) for k in views[0]}
            p18 = probs18(mean)
            heads = {h: mean[h].softmax(1) for h in labels.HEADS if h in mean}
        else:
            p18 = torch.stack([probs18(v) for v in views]).mean(0)
            heads = {h: torch.stack([v[h].softmax(1) for v in views]).mean(0) for h in labels.HEADS if h in views[0]}
        all18.append(p18.cpu())
        for h in heads:
            all_heads[h].append(heads[h].cpu())
    probs = torch.cat(all18).numpy()
    head_probs = ({h: torch.cat(v).numpy() for h, v in all_heads.items()} if all(all_heads.values())
                  else labels.head_probs_from_18(probs))
    return probs, head_probs


def load_fold_model(cfg: Config, fold: int, device: torch.device) -> torch.nn.Module:
    path = Paths.from_config(cfg).fold_dir(cfg["experiment"], fold) / "best.pt"
    if not path.exists():
        raise MaskcompError(f"{path}: missing fold checkpoint; run `make train` (or train.py --fold {fold}) first")
    state = torch.load(path, map_location=device, weights_only=False)
    model = create_model({**state["config"]["model"], "pretrained": False})
    model.load_state_dict(state["model"])
    return model.to(device).to(memory_format=torch.channels_last).eval()


def oof_table(val: pd.DataFrame, fold: int, probs: np.ndarray, head_probs: dict) -> pd.DataFrame:
    table = val[["image_path", "person_id", "label", "mask", "gender_label", "age_group", "age"]].copy()
    table.insert(2, "fold", fold)
    table["pred"] = probs.argmax(1)
    table[labels.PROB_COLUMNS] = probs
    for h, p in head_probs.items():
        table[[f"{h}_p{i}" for i in range(p.shape[1])]] = p
    return table


def infer(cfg: Config, folds: list[int] | None = None) -> None:
    paths = Paths.from_config(cfg)
    device = resolve_device(cfg["train"]["device"])
    amp = amp_dtype_of(cfg["train"]["amp"])
    tta, reduce = tuple(cfg["infer"]["tta"]), cfg["infer"]["tta_reduce"]
    for op in tta:
        tta_view(torch.zeros(1, 3, 8, 8), op)
    images = load_train(cfg)
    fold_of = load_folds(cfg, images)
    evals = load_eval(cfg)
    size = tuple(cfg["train"]["img_size"])
    cache = build_cache(cfg, size)
    evals = existing_crops_only(evals, cache, cfg["data"]["skip_bad"], "eval set")
    mean, std = normalisation(cfg["model"]["backbone"])
    transform = eval_transform(size, mean, std)
    bs, workers = cfg["infer"]["batch_size"], cfg["train"]["workers"]
    eval_set = CropDataset(cache.array, cache.rows(evals["image_path"]), {}, transform)
    for fold in folds or sorted(set(fold_of)):
        out = paths.fold_dir(cfg["experiment"], fold)
        stamp = {"tta": list(tta), "reduce": reduce, "best_mtime": (out / "best.pt").stat().st_mtime_ns if (out / "best.pt").exists() else None,
                 "eval_ids": len(evals)}
        if (out / "infer.json").exists() and json.loads((out / "infer.json").read_text()) == stamp:
            log.info("fold %d: predictions up to date in %s", fold, out)
            continue
        model = load_fold_model(cfg, fold, device)
        val = existing_crops_only(images[fold_of == fold].reset_index(drop=True), cache, cfg["data"]["skip_bad"], "validation")
        val_set = CropDataset(cache.array, cache.rows(val["image_path"]), targets_of(val), transform)
        val_probs, val_heads = predict(model, DataLoader(val_set, batch_size=bs, num_workers=workers), device, amp, tta, reduce)
        write_csv(oof_table(val, fold, val_probs, val_heads), out / "oof_tta.csv")
        test_probs, _ = predict(model, DataLoader(eval_set, batch_size=bs, num_workers=workers), device, amp, tta, reduce)
        with atomic_path(out / "test_probs.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, test_probs.astype(np.float32))
        write_csv(evals[["ImageID"]], out / "test_ids.csv")
        write_json(stamp, out / "infer.json")
        log.info("fold %d: wrote test_probs.npy (%d images, TTA %s) and oof_tta.csv in %s", fold, len(evals), "+".join(tta), out)
