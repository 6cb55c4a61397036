"""Prediction with test-time augmentation, and the infer stage: each fold's best.pt scores the eval set
(test_probs.npy + test_ids.csv) and re-scores its validation images with the same TTA (oof_tta.csv).
infer.json in the fold directory is the predictions' manifest: the checkpoint's digest, the run, the
eval crops and ids, the TTA; predictions are remade whenever any of them changes."""
from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from . import labels
from .augment import eval_transform
from .config import Config
from .data import load_eval, load_train
from .dataset import CropCache, LoaderSpec, build_cache, crop_loader, existing_crops_only
from .device import amp_dtype_of, autocast, resolve_device
from .errors import MaskcompError
from .fileio import atomic_path, write_csv
from .folds import load_folds
from .metrics import macro_f1
from .manifest import Manifest, config_keys, differences, digest_cache, digest_of, is_current, read_manifest, write_manifest
from .models import create_model, normalisation, probs18
from .paths import Paths
from .progress import progress
from .runs import RunRef, damaged_checkpoint, read_oof, resolve_run

log = logging.getLogger(__name__)

PREDICTIONS_MANIFEST = "infer.json"


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
    all18, all_heads = [], {h: [] for h in (*labels.HEADS, "age_ord")}
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
        if "age_ord" in views[0]:
            heads["age_ord"] = torch.stack([v["age_ord"].sigmoid() for v in views]).mean(0)
        all18.append(p18.cpu())
        for h in heads:
            all_heads[h].append(heads[h].cpu())
    probs = torch.cat(all18).numpy()
    head_probs = ({h: torch.cat(v).numpy() for h, v in all_heads.items() if v} if all(all_heads[h] for h in labels.HEADS)
                  else labels.head_probs_from_18(probs))
    return probs, head_probs


# what shapes a model's input: predicting with other values than its checkpoint's silently mis-preprocesses it
INPUT_KEYS = (("model", "backbone"), ("train", "img_size"), ("crop", "mode"), ("crop", "margin"), ("crop", "aspect"))


def require_intact_checkpoint(run: RunRef, fold: int) -> Path:
    """The fold's best.pt, after checking that it is the file training wrote; else one line and the way forward."""
    path = run.best(fold)
    reason = damaged_checkpoint(run, fold)
    if reason == "missing":
        raise MaskcompError(f"{path}: missing fold checkpoint; run `make train` (or train.py --fold {fold}) first")
    if reason:
        raise MaskcompError(f"{path}: damaged checkpoint ({reason}); run `make train`, which keeps it as "
                            f"best.pt.damaged and trains fold {fold} again")
    return path


def load_fold_model(run: RunRef, fold: int, device: torch.device, expected: Config | None = None) -> torch.nn.Module:
    """The fold's best model, built from the config saved in its checkpoint; with `expected` (the config the
    predictions will be preprocessed with), every input-shaping key must agree with the checkpoint's."""
    path = require_intact_checkpoint(run, fold)
    state = torch.load(path, map_location=device, weights_only=False)
    for section, key in INPUT_KEYS if expected is not None else ():
        if state["config"][section][key] != expected[section][key]:
            raise MaskcompError(f"{path}: trained with {section}.{key}={state['config'][section][key]!r}, but {run.dir / 'config.yaml'} "
                                f"says {expected[section][key]!r}; restore that file or train the run again")
    model = create_model({**state["config"]["model"], "pretrained": False}, state["config"]["train"]["img_size"])
    model.load_state_dict(state["model"])
    return model.to(device).to(memory_format=torch.channels_last).eval()


def run_config(cfg: Config, run: RunRef) -> Config:
    """The config that trained `run` (crops, image size, backbone: everything that shaped the model's input),
    with this invocation's paths, devices, workers and infer/ensemble settings."""
    path = run.dir / "config.yaml"
    if not path.exists():
        raise MaskcompError(f"{path}: missing; this run was not made by `make train`; train it again")
    saved = yaml.safe_load(path.read_text())
    out = {**saved, "paths": cfg["paths"], "infer": cfg["infer"], "ensemble": cfg["ensemble"], "run": cfg["run"]}
    out["train"] = {**saved["train"], **{k: cfg["train"][k] for k in ("device", "workers")}}
    out["data"] = {**saved["data"], "skip_bad": cfg["data"]["skip_bad"]}
    return out


def say_inputs_from_run(cfg: Config, rcfg: Config, run: RunRef) -> None:
    """One info line naming the config's input-shaping keys that the run's own values replace."""
    taken = [f"{section}.{key}={rcfg[section][key]!r} (config: {cfg[section][key]!r})" for section, key in INPUT_KEYS
             if cfg[section][key] != rcfg[section][key]]
    if taken:
        log.info("run %s predicts with its own %s: its checkpoints were trained with them", run.label, ", ".join(taken))


def require_current_run(cfg: Config, run: RunRef) -> None:
    """A run is used only while the labels, folds and training crops it was trained on still hold."""
    from .trainer import run_manifest

    expected = run_manifest(cfg)
    if not is_current(run.dir, expected):
        changed = ", ".join(differences(run.dir, expected))
        raise MaskcompError(f"{run.dir}: run {run.label} was trained on other data or labels than the current ones ({changed}); "
                            "run `make train` to train on them, or pick another run with run=<id>")


@dataclass
class EvalSide:
    """What every fold of a run predicts on: the run's config, the eval rows with crops, and their crop array."""

    cfg: Config
    evals: pd.DataFrame
    cache: CropCache
    size: tuple[int, int]

    @property
    def paths(self) -> Paths:
        return Paths.from_config(self.cfg)

    @property
    def eval_digest(self) -> str:
        return digest_of([self.cache.manifest["digest"], self.evals["ImageID"].tolist()])


def eval_side(cfg: Config, run: RunRef) -> EvalSide:
    rcfg = run_config(cfg, run)
    require_current_run(rcfg, run)
    size = tuple(rcfg["train"]["img_size"])
    cache = build_cache(rcfg, size)
    evals = existing_crops_only(load_eval(rcfg), cache, rcfg["data"]["skip_bad"], "eval set")
    return EvalSide(rcfg, evals, cache, size)


def prediction_manifest(side: EvalSide, run: RunRef, fold: int) -> Manifest:
    """What one fold's predictions depend on: its checkpoint by content, its run, the eval crops and ids, the TTA."""
    best = run.fold_dir(fold) / "best.pt"
    if not best.exists():
        raise MaskcompError(f"{best}: missing fold checkpoint; run `make train` (or train.py --fold {fold}) first")
    cache = digest_cache(side.cfg)
    model = cache.digest(best)
    cache.save()
    return Manifest("infer", {"model": model, "run": read_manifest(run.dir)["digest"], "eval": side.eval_digest},
                    config_keys(side.cfg, "infer"))


def require_current_predictions(cfg: Config, run: RunRef) -> None:
    """Every trained fold's test predictions were made by its current best.pt on the current eval set."""
    side = eval_side(cfg, run)
    for fold in run.trained_folds():
        place = run.fold_dir(fold) / PREDICTIONS_MANIFEST
        manifest = prediction_manifest(side, run, fold)
        if not is_current(place, manifest):
            changed = ", ".join(differences(place, manifest))
            raise MaskcompError(f"{run.fold_dir(fold)}: predictions do not match fold {fold}'s current model, eval set or TTA "
                                f"({changed}); run `make infer`")


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


def write_test_predictions(out: Path, ids: pd.DataFrame, probs: np.ndarray, heads: dict) -> None:
    with atomic_path(out / "test_probs.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, probs.astype(np.float32))
    write_csv(pd.concat([ids, probability_table(probs, heads)], axis=1), out / "test_probs.csv")
    write_csv(ids, out / "test_ids.csv")


def write_run_oof(run: RunRef, paths: Paths) -> None:
    """One OOF file for the whole training set (`<run>/oof.csv`, TTA re-scored where present), with image paths
    relative to the data root (their keys), as Kaggle notebooks share them."""
    oof = read_oof(run, paths, tta=True)
    oof["image_path"] = [paths.image_key(p) for p in oof["image_path"]]
    write_csv(oof, run.dir / "oof.csv")
    log.info("all folds' OOF predictions in %s", run.dir / "oof.csv")


def report_tta(run: RunRef, fold: int, val: pd.DataFrame, tta_probs: np.ndarray, tta: tuple[str, ...], paths: Paths) -> None:
    """Fold macro F1 of the validation images without TTA (training's best epoch) and with it; warn when TTA hurts."""
    plain_path = run.fold_dir(fold) / "oof.csv"
    if not plain_path.exists():
        return
    plain = pd.read_csv(plain_path)
    plain.index = [paths.image_key(p) for p in plain["image_path"]]
    plain = plain.loc[[paths.image_key(p) for p in val["image_path"]]]
    y = val["label"].to_numpy()
    without, with_tta = macro_f1(y, plain[labels.PROB_COLUMNS].to_numpy().argmax(1)), macro_f1(y, tta_probs.argmax(1))
    line = f"fold {fold}: OOF macro F1 {without:.4f} without TTA, {with_tta:.4f} with {'+'.join(tta)} ({with_tta - without:+.4f})"
    if with_tta < without:
        log.warning("%s: this TTA lowers the score; consider infer.tta=[identity]", line)
    else:
        log.info(line)


def infer(cfg: Config, folds: list[int] | None = None) -> RunRef:
    """Predict the eval set and re-score the validation images with TTA, for each fold of the chosen run."""
    paths = Paths.from_config(cfg)
    run = resolve_run(paths, cfg["experiment"], cfg["run"])
    tta, reduce = tuple(cfg["infer"]["tta"]), cfg["infer"]["tta_reduce"]
    for op in tta:
        tta_view(torch.zeros(1, 3, 8, 8), op)
    side = eval_side(cfg, run)
    rcfg = side.cfg
    say_inputs_from_run(cfg, rcfg, run)
    device = resolve_device(rcfg["train"]["device"])
    images = load_train(rcfg)
    fold_of = load_folds(rcfg, images)
    mean, std = normalisation(rcfg["model"]["backbone"])
    transform = eval_transform(side.size, mean, std)
    spec = LoaderSpec(rcfg["infer"]["batch_size"], rcfg["train"]["workers"], pin_memory=device.type == "cuda")
    todo = folds or run.trained_folds()
    for i, fold in enumerate(todo):
        out = run.fold_dir(fold)
        require_intact_checkpoint(run, fold)
        manifest = prediction_manifest(side, run, fold)
        if is_current(out / PREDICTIONS_MANIFEST, manifest):
            log.info("fold %d: predictions up to date in %s", fold, out)
            continue
        (out / PREDICTIONS_MANIFEST).unlink(missing_ok=True)
        val = existing_crops_only(images[fold_of == fold].reset_index(drop=True), side.cache, rcfg["data"]["skip_bad"], "validation")
        model = load_fold_model(run, fold, device, rcfg)
        amp = amp_dtype_of(rcfg["train"]["amp"])
        step = f"fold {fold} ({i + 1}/{len(todo)}), TTA {'+'.join(tta)}"
        val_loader = crop_loader(side.cache, val, transform, spec)
        val_probs, val_heads = predict(model, progress(val_loader, f"{step}: validation"), device, amp, tta, reduce)
        write_csv(oof_table(val, fold, val_probs, val_heads, side.paths), out / "oof_tta.csv")
        report_tta(run, fold, val, val_probs, tta, side.paths)
        eval_loader = crop_loader(side.cache, side.evals, transform, spec, with_targets=False)
        test_probs, test_heads = predict(model, progress(eval_loader, f"{step}: eval"), device, amp, tta, reduce)
        write_test_predictions(out, side.evals[["ImageID"]].reset_index(drop=True), test_probs, test_heads)
        write_manifest(out / PREDICTIONS_MANIFEST, manifest)
        log.info("fold %d: wrote test_probs.npy/.csv (%d images, TTA %s) and oof_tta.csv in %s", fold, len(side.evals), "+".join(tta), out)
    write_run_oof(run, side.paths)
    return run
