"""make refit: final models trained on every training person (no held-out fold), as many epochs as the run's folds
found best (the median of their best epochs, or refit.epochs), one per seed (refit.seeds), in
models/<exp>/<run-id>/refit/epochs<E>-seed<S>/. They have no validation, so no OOF: the CV stays the fold models'; the
ensemble's `ensemble.models` picks which models predict eval. Each refit model is keyed on the run's manifest, its
epoch count and its seed, and is skipped when done."""

from __future__ import annotations

import contextlib
import json
import logging
import statistics

import numpy as np
import pandas as pd

from ..core.config import Settings, updated
from ..core.context import Context, stage
from ..core.device import start_distributed
from ..core.errors import MaskcompError
from ..core.fileio import write_csv
from ..core.manifests import Manifest, is_current, read_manifest, write_manifest
from ..data.folds import training_split
from ..data.tables import load_train
from ..runs import FoldFiles, RunRef, damaged_checkpoint, open_run, run_lock
from .fold_state import MetricSinks, TrainState
from .models import require_input_size
from .trainer import FoldTrainer, run_manifest

log = logging.getLogger(__name__)

SEED_STRIDE = 10_007  # refit seed s trains with seed + SEED_STRIDE * (s + 1): apart from every fold's seed


class RefitTrainer(FoldTrainer):
    """A FoldTrainer over every training person with no validation: the last epoch's weights are the model."""

    def __init__(self, ctx: Context, seed_index: int, images: pd.DataFrame, run: RunRef, place, files: FoldFiles):
        self.seed_index, self.refit_files = seed_index, files
        super().__init__(ctx, 0, images, run, place)

    def _files(self, run: RunRef) -> FoldFiles:
        return self.refit_files

    def _say_done(self, state: TrainState) -> None:
        log.info("refit seed %d done: %d epochs; model in %s", self.seed_index, state.best_epoch, self.files.dir)

    @property
    def label(self) -> str:
        return f"refit seed {self.seed_index}"

    def _seed(self) -> int:
        return self.cfg.seed + SEED_STRIDE * (self.seed_index + 1)

    def _split(self, images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
        train, weights = training_split(self.cfg, images, f"refit seed {self.seed_index}", self.seed)
        return train, images.iloc[:0], weights

    def _sinks(self) -> MetricSinks:
        return MetricSinks(self.files, self.fold, self.cfg)

    def _end_epoch(self, epoch: int, train_loss: float, images_per_s: float, state: TrainState, sinks) -> None:
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"]}
        state.history.append({**row, "images_per_s": images_per_s})
        write_csv(pd.DataFrame(state.history), self.files.metrics)
        state.best_epoch = epoch + 1
        if epoch + 1 == self.cfg.train.epochs:
            self.checkpoints.save_best(self.eval_model, self.cfg, state)
        self.checkpoints.save_last(self._resumable(), state)
        print(
            f"refit seed {self.seed_index} epoch {epoch + 1}/{self.cfg.train.epochs}: loss {train_loss:.4f} "
            f"{images_per_s:.0f} img/s",
            flush=True,
        )


def refit_epochs(cfg: Settings, run: RunRef) -> int:
    """refit.epochs, or the median of the run's folds' best epochs (rounded up). A run with folds left to train is
    refused unless `partial_run` allows it; the log says which folds the count comes from."""
    if cfg.refit.epochs:
        return cfg.refit.epochs
    finished, missing = [f for f in run.trained_folds() if run.done(f).exists()], run.missing_folds()
    if not finished or (missing and not cfg.partial_run):
        names = ", ".join(map(str, missing)) or "all"
        raise MaskcompError(
            f"run {run.label}: fold(s) {names} of {len(run.expected_folds())} not trained, so the refit's epoch "
            "count would not come from every fold; run `make train` first, or set refit.epochs=N"
            + (", or partial_run=true" if finished else "")
        )
    best = [json.loads(run.done(f).read_text())["best_epoch"] for f in finished]
    epochs = max(1, int(np.ceil(statistics.median(best))))
    log.info(
        "refit: %d epochs, the median of the best epochs %s of fold(s) %s (%d of %d folds)",
        epochs, best, ", ".join(map(str, finished)), len(finished), len(run.expected_folds()),
    )  # fmt: skip
    return epochs


def refit_manifest(run: RunRef, epochs: int, seed_index: int) -> Manifest:
    return Manifest("refit", {"run": read_manifest(run.dir)["digest"]}, {"epochs": epochs, "seed": seed_index})


def chosen_refits(cfg: Settings, run: RunRef) -> list[FoldFiles]:
    """The refit models this config names (refit.seeds of refit_epochs' count), trained or not."""
    epochs = refit_epochs(cfg, run)
    return [run.refit(epochs, s) for s in range(cfg.refit.seeds)]


@stage
def refit(ctx: Context) -> tuple[RunRef, list[FoldFiles]]:
    """Train refit.seeds models on every training person in the run of the current config; done ones are skipped.
    Returns the run and the models' folders."""
    cfg = ctx.cfg
    require_input_size(cfg.model.backbone, cfg.train.img_size)
    run = open_run(cfg, run_manifest(ctx), write=False)
    if read_manifest(run.dir) is None:
        raise MaskcompError(f"{run.dir}: this config's run is not trained; run `make train` before `make refit`")
    epochs = refit_epochs(cfg, run)
    run_ctx = ctx.with_settings(updated(cfg, {"train.epochs": epochs, "train.folds": []}))
    images, place = load_train(ctx), start_distributed(cfg.train.device)
    with run_lock(run) if place.is_main else contextlib.nullcontext():
        for s in range(cfg.refit.seeds):
            files, manifest = run.refit(epochs, s), refit_manifest(run, epochs, s)
            if is_current(files.manifest, manifest) and files.done.exists() and not damaged_checkpoint(files):
                log.info("refit seed %d: already trained for %d epochs in %s; skipping", s, epochs, files.dir)
                continue
            files.done.unlink(missing_ok=True)
            write_manifest(files.manifest, manifest)  # names the folder's model before any weight is written
            log.info("refit seed %d: %d epochs on all %d training images (run %s)", s, epochs, len(images), run.label)
            RefitTrainer(run_ctx, s, images, run, place, files).run()
            log.info("refit seed %d: model in %s", s, files.best)
    return run, [run.refit(epochs, s) for s in range(cfg.refit.seeds)]
