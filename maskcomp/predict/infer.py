"""Prediction with test-time augmentation, and the infer stage: each fold's best.pt scores the eval set
(test_probs.npy + test_ids.csv) and re-scores its validation images with the same TTA (oof_tta.csv).
predictions.json in the fold directory is the predictions' manifest: the checkpoint's digest, the run, the
eval crops and ids, the TTA; predictions are remade whenever any of them changes."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from ..core import labels
from ..core.config import Settings, settings_from
from ..core.context import Context, stage
from ..core.device import amp_dtype_of, resolve_device
from ..core.errors import MaskcompError
from ..core.fileio import atomic_path, write_csv
from ..core.manifests import (
    Manifest,
    config_keys,
    digest_of,
    is_current,
    read_manifest,
    require_current,
    write_manifest,
)
from ..core.metrics import bootstrap_macro_f1, macro_f1
from ..core.paths import Paths
from ..core.progress import progress
from ..core.settings import input_shaping_keys, invocation_keys, value_of
from ..crop.stage import load_crops, require_current_crops
from ..data.csvfiles import read_csv_with
from ..data.folds import load_folds
from ..data.tables import EVAL_COLUMNS, load_train
from ..runs import FoldFiles, RunRef, damaged_checkpoint, read_oof, resolve_run
from ..train.augment import eval_transform
from ..train.dataset import CropCache, LoaderSpec, build_cache, crop_loader, existing_crops_only
from ..train.evaluate import oof_table, predict, probability_table, tta_view
from ..train.models import create_model, normalisation
from ..train.refit import chosen_refits
from .engine import OnnxModel, engine_model
from .neighbours import penultimate, write_neighbours

log = logging.getLogger(__name__)


# what shapes a model's input: predicting with other values than its checkpoint's silently mis-preprocesses it
INPUT_KEYS = input_shaping_keys()


def require_intact_checkpoint(files: FoldFiles, what: str) -> Path:
    """A fold's (or refit's) best.pt, after checking that it is the file training wrote; else one line and the way
    forward. `what`: 'fold 3' or 'refit seed 0'."""
    path = files.best
    reason = damaged_checkpoint(files)
    again = "make refit" if what.startswith("refit") else "make train"
    if reason == "missing":
        raise MaskcompError(f"{path}: missing {what} checkpoint; run `{again}` first")
    if reason:
        raise MaskcompError(
            f"{path}: damaged checkpoint ({reason}); run `{again}`, which keeps it as best.pt.damaged and trains "
            f"{what} again"
        )
    return path


def load_fold_model(
    files: FoldFiles, what: str, device: torch.device, expected: Settings | None = None, source: Path | None = None
) -> torch.nn.Module:
    """A fold's (or refit's) model, built from the config saved in its checkpoint; with `expected` (the config the
    predictions will be preprocessed with, from `source`), every input-shaping key must agree with the checkpoint's."""
    path = require_intact_checkpoint(files, what)
    state = torch.load(path, map_location=device, weights_only=False)
    # the checkpoint keeps its config as plain values; where files go is not part of it
    trained = settings_from({**state["config"], "paths": {}}, str(path))
    for key in INPUT_KEYS if expected is not None else ():
        if value_of(trained, key) != value_of(expected, key):
            raise MaskcompError(
                f"{path}: trained with {key}={value_of(trained, key)!r}, "
                f"but {source} says {value_of(expected, key)!r}; "
                "restore that file or train the run again"
            )
    model = create_model(trained.model.model_copy(update={"pretrained": False}), trained.train.img_size)
    model.load_state_dict(state["model"])
    return model.to(device).to(memory_format=torch.channels_last).eval()


def run_config(cfg: Settings, run: RunRef) -> Settings:
    """The config that trained `run` (crops, image size, backbone: everything that shaped the model's input), with
    this invocation's values of the settings that made no part of the run (settings.invocation_keys: paths,
    devices, workers, infer, ensemble, refit, ...)."""
    path = run.config
    if not path.exists():
        raise MaskcompError(f"{path}: missing; this run was not made by `make train`; train it again")
    out = yaml.safe_load(path.read_text())
    for key in invocation_keys():
        section, _, name = key.rpartition(".")
        (out.setdefault(section, {}) if section else out)[name] = value_of(cfg, key)
    return settings_from(out, str(path))


def say_inputs_from_run(cfg: Settings, run_cfg: Settings, run: RunRef) -> None:
    """One info line naming the config's input-shaping keys that the run's own values replace."""
    taken = [
        f"{key}={value_of(run_cfg, key)!r} (config: {value_of(cfg, key)!r})"
        for key in INPUT_KEYS
        if value_of(cfg, key) != value_of(run_cfg, key)
    ]
    if taken:
        log.info("run %s predicts with its own %s: its checkpoints were trained with them", run.label, ", ".join(taken))


def require_current_run(ctx: Context, run: RunRef) -> None:
    """A run is used only while the labels, folds and training crops it was trained on still hold."""
    from ..train.trainer import run_manifest

    expected = run_manifest(ctx)
    require_current(
        run.dir,
        expected,
        str(run.dir),
        f"run {run.label} was trained on other data or labels than the current ones",
        "run `make train` to train on them, or pick another run with run=<id>",
    )


@dataclass
class EvalInputs:
    """What every fold of a run predicts on: the context of the run's config, the eval rows with crops (info.csv
    order), the crops' manifest, and (opened when something is predicted) their crop array."""

    ctx: Context
    evals: pd.DataFrame
    crops: dict
    size: tuple[int, int]

    @property
    def cfg(self) -> Settings:
        return self.ctx.cfg

    @property
    def paths(self) -> Paths:
        return self.ctx.paths

    @functools.cached_property
    def cache(self) -> CropCache:
        return build_cache(self.ctx, self.size)

    @property
    def eval_digest(self) -> str:
        return digest_of([self.crops["digest"], self.evals["ImageID"].tolist()])


def cropped_eval_rows(cfg: Settings) -> pd.DataFrame:
    """info.csv's rows that have a crop, in its order, with each image's path: from the crop records, no image
    opened. A row without a crop stops with one line, or is left out with data.skip_bad (counted)."""
    paths = cfg.paths.resolved
    info = read_csv_with(paths.eval_csv, EVAL_COLUMNS, "eval info.csv")[["ImageID"]]
    records = load_crops(cfg)
    cropped = set(records.loc[records["split"] == "eval", "key"])
    files = np.array([str(paths.eval_images / i) for i in info["ImageID"]], dtype=object)
    has = np.array([paths.image_key(f) in cropped for f in files], dtype=bool)
    if not has.all() and not cfg.data.skip_bad:
        missing = paths.eval_images / info["ImageID"][~has].iloc[0]
        raise MaskcompError(
            f"{missing}: no face crop for this image ({int((~has).sum())} missing); run `make crop` again, or set "
            "data.skip_bad=true if it is unreadable"
        )
    if not has.all():
        log.warning("eval set: leaving out %d image(s) without a crop (data.skip_bad=true)", int((~has).sum()))
    return info[has].reset_index(drop=True).assign(image_path=files[has].tolist())


def eval_inputs(ctx: Context, run: RunRef) -> EvalInputs:
    """The run's eval side, checked against the crop stage's record: no image is listed or opened, and the crop
    array is opened (or built) only when a model predicts."""
    run_ctx = ctx.with_settings(run_config(ctx.cfg, run))
    require_current_run(run_ctx, run)
    crops = require_current_crops(run_ctx)
    return EvalInputs(run_ctx, cropped_eval_rows(run_ctx.cfg), crops, tuple(run_ctx.cfg.train.img_size))


def prediction_manifest(inputs: EvalInputs, run: RunRef, files: FoldFiles) -> Manifest:
    """What one fold's (or refit model's) predictions depend on: its checkpoint by content, its run, the eval crops
    and ids, the TTA."""
    best = files.best
    if not best.exists():
        raise MaskcompError(f"{best}: missing fold checkpoint; run `make train` first")
    model = inputs.ctx.digests.digest(best)
    return Manifest(
        "infer",
        {"model": model, "run": read_manifest(run.dir)["digest"], "eval": inputs.eval_digest},
        config_keys(inputs.cfg, "infer"),
    )


def required_refits(cfg: Settings, run: RunRef) -> list[FoldFiles]:
    """The refit models this config names (refit.seeds, refit.epochs or the folds' median), each trained."""
    if not run.finished_refits():
        raise MaskcompError(f"run {run.label} has no refit model; run `make refit`, or set ensemble.models=folds")
    chosen = chosen_refits(cfg, run)
    for files in chosen:
        if not files.done.exists():
            raise MaskcompError(
                f"{files.dir}: no such refit model (refit.seeds={cfg.refit.seeds}, refit.epochs={cfg.refit.epochs}); "
                f"the run has {', '.join(f.dir.name for f in run.finished_refits())}: run `make refit` with these "
                "settings, or pass the refit.* settings that made the ones you mean"
            )
    return chosen


def require_current_predictions(ctx: Context, run: RunRef, refits: list[FoldFiles] = ()) -> None:
    """Every trained fold's (and every model in `refits`') test predictions were made by its current best.pt on the
    current eval set."""
    inputs = eval_inputs(ctx, run)
    models = [(run.fold(f), f"fold {f}") for f in run.trained_folds()]
    models += [(files, f"refit {files.dir.name}") for files in refits]
    for files, what in models:
        require_current(
            files.predictions_manifest,
            prediction_manifest(inputs, run, files),
            str(files.dir),
            f"predictions do not match {what}'s current model, eval set or TTA",
            "run `make infer`",
        )


def write_test_predictions(out: FoldFiles, ids: pd.DataFrame, probs: np.ndarray, heads: dict) -> None:
    with atomic_path(out.test_probs) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, probs.astype(np.float32))
    write_csv(pd.concat([ids, probability_table(probs, heads)], axis=1), out.test_table)
    write_csv(ids, out.test_ids)


def write_run_oof(run: RunRef, paths: Paths) -> None:
    """One OOF file for the whole training set (`<run>/oof.csv`, TTA re-scored where present), with image paths
    relative to the data root (their keys), as Kaggle notebooks share them."""
    oof = read_oof(run, paths, tta=True)
    oof["image_path"] = [paths.image_key(p) for p in oof["image_path"]]
    write_csv(oof, run.oof)
    log.info("all folds' OOF predictions in %s", run.oof)


def report_tta(
    run: RunRef, fold: int, val: pd.DataFrame, tta_probs: np.ndarray, tta: tuple[str, ...], paths: Paths
) -> None:
    """Fold macro F1 of the validation images without TTA (training's best epoch) and with it; warn when TTA hurts."""
    plain_path = run.fold(fold).oof
    if not plain_path.exists():
        return
    plain = pd.read_csv(plain_path)
    plain.index = [paths.image_key(p) for p in plain["image_path"]]
    plain = plain.loc[[paths.image_key(p) for p in val["image_path"]]]
    y, plain_pred, tta_pred = (
        val["label"].to_numpy(),
        plain[labels.PROB_COLUMNS].to_numpy().argmax(1),
        tta_probs.argmax(1),
    )
    low, high = tta_change_interval(y, plain_pred, tta_pred, val["person_id"].to_numpy())
    without, with_tta = macro_f1(y, plain_pred), macro_f1(y, tta_pred)
    line = (
        f"fold {fold}: OOF macro F1 {without:.4f} without TTA, {with_tta:.4f} with {'+'.join(tta)} "
        f"({with_tta - without:+.4f}; 90 % person-bootstrap interval {low:+.4f} to {high:+.4f})"
    )
    if high < 0:
        log.warning("%s: this TTA lowers the score beyond noise; consider infer.tta=[identity]", line)
    else:
        log.info(line)


def tta_change_interval(y: np.ndarray, plain: np.ndarray, tta: np.ndarray, persons: np.ndarray) -> tuple[float, float]:
    """The 90 % interval of macro F1 with TTA minus without, over the same person resamples (paired): a change
    within it is noise, not a reason to drop a view."""
    change = bootstrap_macro_f1(y, tta, persons) - bootstrap_macro_f1(y, plain, persons)
    low, high = np.percentile(change, [5, 95])
    return float(low), float(high)


@dataclass(frozen=True)
class FoldPrediction:
    """How every fold of the run is predicted: device, preprocessing, loader sizes, TTA."""

    inputs: EvalInputs
    device: torch.device
    transform: object
    spec: LoaderSpec
    tta: tuple[str, ...]
    reduce: str
    engine: str
    neighbours: bool = False  # infer.neighbours: look-alike persons' label shares beside the predictions

    @classmethod
    def of(cls, cfg: Settings, inputs: EvalInputs) -> FoldPrediction:
        run_cfg = inputs.cfg
        device = resolve_device(run_cfg.train.device)
        mean, std = normalisation(run_cfg.model.backbone)
        spec = LoaderSpec(run_cfg.infer.batch_size, run_cfg.train.workers, pin_memory=device.type == "cuda")
        transform = eval_transform(inputs.size, mean, std)
        return cls(
            inputs, device, transform, spec, tuple(cfg.infer.tta), cfg.infer.tta_reduce, cfg.infer.engine,
            cfg.infer.neighbours,
        )  # fmt: skip

    def model(self, files: FoldFiles, what: str, run: RunRef) -> torch.nn.Module | OnnxModel:
        """The model of a fold (or refit) checkpoint, in the engine infer.engine names."""
        model = load_fold_model(files, what, self.device, self.inputs.cfg, run.config)
        return engine_model(model, files, self.inputs.ctx.digests, self.inputs.size, self.engine, self.device)

    def run(self, run: RunRef, fold: int, val: pd.DataFrame, step: str) -> None:
        """The fold's validation images re-scored (oof_tta.csv) and the eval set predicted (test_probs.*)."""
        inputs, out, amp = self.inputs, run.fold(fold), amp_dtype_of(self.inputs.cfg.train.amp)
        model = self.model(out, f"fold {fold}", run)
        loader = crop_loader(inputs.cache, val, self.transform, self.spec)
        probs, heads = predict(model, progress(loader, f"{step}: validation"), self.device, amp, self.tta, self.reduce)
        write_csv(oof_table(val, fold, probs, heads, inputs.paths), out.oof_tta)
        report_tta(run, fold, val, probs, self.tta, inputs.paths)
        self.predict_eval(model, out, step)
        if self.neighbours:
            self.look_alikes(run, fold, val, step)

    def look_alikes(self, run: RunRef, fold: int, val: pd.DataFrame, step: str) -> None:
        """neighbours.npz: the fold's OOF and eval images' nearest training persons of this fold (features of the
        torch model, whatever the engine)."""
        inputs = self.inputs
        model = load_fold_model(run.fold(fold), f"fold {fold}", self.device, inputs.cfg, run.config)
        train = existing_crops_only(fold_rows(inputs.ctx, fold, held_out=False), inputs.cache,
                                    inputs.cfg.data.skip_bad, "training split")  # fmt: skip

        def feats(rows: pd.DataFrame, what: str, targets: bool = True) -> np.ndarray:
            loader = crop_loader(inputs.cache, rows, self.transform, self.spec, with_targets=targets)
            return penultimate(model, progress(loader, f"{step}: features of {what}"), self.device)

        keys = [inputs.paths.image_key(p) for p in val["image_path"]]
        queries = {"oof": feats(val, "validation"), "eval": feats(inputs.evals, "eval", targets=False)}
        write_neighbours(run.fold(fold), keys, feats(train, "training persons"), train, queries)

    def predict_eval(self, model: torch.nn.Module | OnnxModel, out: FoldFiles, step: str) -> None:
        """The eval set through one model (test_probs.*)."""
        inputs, amp = self.inputs, amp_dtype_of(self.inputs.cfg.train.amp)
        loader = crop_loader(inputs.cache, inputs.evals, self.transform, self.spec, with_targets=False)
        probs, heads = predict(model, progress(loader, f"{step}: eval"), self.device, amp, self.tta, self.reduce)
        write_test_predictions(out, inputs.evals[["ImageID"]].reset_index(drop=True), probs, heads)


def fold_rows(ctx: Context, fold: int, held_out: bool = True) -> pd.DataFrame:
    """The training images of one fold's validation persons (held_out), or of its training persons (listed only when
    a fold is predicted)."""
    images = load_train(ctx)
    return images[(load_folds(ctx.cfg, images) == fold) == held_out].reset_index(drop=True)


def infer_refits(run: RunRef, inputs: EvalInputs, prediction: FoldPrediction) -> None:
    """The eval set through each refit model the config names (make refit) whose predictions are not current."""
    if not run.finished_refits():
        return
    chosen = [files for files in chosen_refits(inputs.cfg, run) if files.done.exists()]
    log.info("refit models predicted with: %s", ", ".join(str(files.dir) for files in chosen) or "none of this config")
    for out in chosen:
        what = f"refit {out.dir.name}"
        manifest = prediction_manifest(inputs, run, out)
        if is_current(out.predictions_manifest, manifest):
            log.info("%s: predictions up to date in %s", what, out.dir)
            continue
        out.predictions_manifest.unlink(missing_ok=True)
        prediction.predict_eval(prediction.model(out, what, run), out, f"{what}, TTA {'+'.join(prediction.tta)}")
        write_manifest(out.predictions_manifest, manifest, outs=out.prediction_outs(oof=False, neighbours=False))
        log.info("%s: wrote test_probs.npy/.csv (%d images) in %s", what, len(inputs.evals), out.dir)


@stage
def infer(ctx: Context, folds: list[int] | None = None) -> RunRef:
    """Predict the eval set and re-score the validation images with TTA, for each fold of the chosen run whose
    predictions do not match its current checkpoint, eval set and TTA (predictions.json)."""
    cfg = ctx.cfg
    run = resolve_run(ctx.paths, cfg.experiment, cfg.run)
    for op in cfg.infer.tta:
        tta_view(torch.zeros(1, 3, 8, 8), op)
    inputs = eval_inputs(ctx, run)
    say_inputs_from_run(cfg, inputs.cfg, run)
    prediction = FoldPrediction.of(cfg, inputs)
    todo = folds or run.trained_folds()
    for i, fold in enumerate(todo):
        out = run.fold(fold)
        manifest = prediction_manifest(inputs, run, out)  # a damaged best.pt matches no manifest: the loader names it
        if is_current(out.predictions_manifest, manifest):
            log.info("fold %d: predictions up to date in %s", fold, out.dir)
            continue
        out.predictions_manifest.unlink(missing_ok=True)
        val = existing_crops_only(fold_rows(inputs.ctx, fold), inputs.cache, inputs.cfg.data.skip_bad, "validation")
        prediction.run(run, fold, val, f"fold {fold} ({i + 1}/{len(todo)}), TTA {'+'.join(prediction.tta)}")
        outs = out.prediction_outs(oof=True, neighbours=prediction.neighbours)
        write_manifest(out.predictions_manifest, manifest, outs=outs)
        log.info(
            "fold %d: wrote test_probs.npy/.csv (%d images, TTA %s) and oof_tta.csv in %s",
            fold,
            len(inputs.evals),
            "+".join(prediction.tta),
            out.dir,
        )
    if folds is None:
        infer_refits(run, inputs, prediction)
    write_run_oof(run, inputs.paths)
    return run
