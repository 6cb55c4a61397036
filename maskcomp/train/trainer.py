"""Training of one fold or all folds: models/<experiment>/<run-id>/fold<K>/ gets best.pt, last.pt, config.yaml,
env.json, metrics.csv, oof.csv, done.json (and TensorBoard events when asked). The run id comes from the
run's manifest (see runs.py): data, labels, folds and training config decide which run a training belongs to."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import random
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from timm.utils import ModelEmaV3

from ..core import labels
from ..core.context import Context, stage
from ..core.device import Placement, autocast, configure_cuda, configure_threads, resolve_amp, start_distributed
from ..core.errors import MaskcompError
from ..core.fileio import write_csv, write_json
from ..core.manifests import Manifest, config_keys
from ..core.metrics import scores
from ..core.progress import progress
from ..crop.stage import require_current_crops, train_crops_digest
from ..data.folds import load_folds, require_current_folds, split_fold
from ..data.pseudo import probs_file, pseudo_submission
from ..data.tables import load_train
from ..runs import (
    FoldFiles,
    RunRef,
    clear_failure,
    damaged_checkpoint,
    git_commit,
    mark_latest,
    open_run,
    record_failure,
    run_lock,
    set_aside,
)
from .augment import BackgroundSuppression, eval_transform, half_cutmix, train_transform
from .batchsize import resolve_batch_size
from .dataset import EpochSampler, LoaderSpec, build_cache, crop_loader, existing_crops_only, targets_of
from .evaluate import oof_table, predict
from .fold_state import Checkpointer, EarlyStopping, MetricSinks, TrainState, write_fold_info
from .losses import Criterion, balanced_class_weights
from .models import create_model, head_sizes, normalisation, require_input_size
from .optim import create_optimizer, create_scheduler
from .track import WandbSink, wandb_mode

log = logging.getLogger(__name__)

LOG_EVERY = 20  # steps between progress-bar updates, the loop's only host synchronisations
RANK_SEED_STRIDE = 1_000_003  # per-rank offset of the epoch seeds (rank 0 keeps the single-process seeds)


def run_manifest(ctx: Context) -> Manifest:
    """What a training run depends on: labels and folds (by content), the training crops, the training config."""
    cfg, cache = ctx.cfg, ctx.digests
    folds = require_current_folds(ctx)
    crops = require_current_crops(ctx)
    inputs = {
        "labels_and_folds": folds["digest"],
        "folds_csv": cache.digest(ctx.paths.folds),
        "train_crops": train_crops_digest(crops),
    }
    pseudo = pseudo_submission(cfg)
    if pseudo is not None:  # the eval crops then feed training too: the crop manifest's digest covers them
        inputs.update(pseudo_labels=cache.digest(probs_file(pseudo)), crops=crops["digest"])
    return Manifest("train", inputs, config_keys(cfg, "train"))


def library_versions() -> dict[str, str]:
    import albumentations
    import sklearn
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "albumentations": albumentations.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


class FoldTrainer:
    """Everything one fold's run needs, built from the config (data -> model -> optimisation); `run()` is the
    epoch loop: train an epoch (all ranks), then the main process validates and decides (one place), and the
    early-stopping decision is shared with the other ranks."""

    def __init__(
        self, ctx: Context, fold: int, images: pd.DataFrame, run: RunRef, place: Placement, resume: bool = False
    ):
        cfg = ctx.cfg
        self.ctx, self.cfg, self.fold, self.resume, self.run_ref = ctx, cfg, fold, resume, run
        train_cfg = cfg.train
        self.rank, self.world, self.device = place.rank, place.world, place.device
        if self.device.type == "cpu":  # re-chosen per fold: the machine's load may have changed since the last one
            configure_threads(train_cfg.threads)
        self.amp_dtype, self.amp_note = resolve_amp(train_cfg.amp, self.device)
        if self.amp_note and self.rank == 0:
            log.warning(self.amp_note)
        self.cuda_settings = configure_cuda(train_cfg, self.device)
        self.files = self._files(run)
        self.seed = self._seed()
        if train_cfg.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        self.batch_size = resolve_batch_size(cfg, self.device, self.amp_dtype, self.world)  # before the seed: its
        torch.manual_seed(self.seed)  # probe model's initialisation must not shift the run's random numbers
        self.stopper = EarlyStopping(train_cfg.patience)
        self.checkpoints = Checkpointer(self.files, run.run_id)
        self.lr_log: list[dict] = []
        self.sinks: MetricSinks | None = None
        self._build_data(images)
        self._build_model()
        self._build_optimisation()

    def _build_data(self, images: pd.DataFrame) -> None:
        """Train/validation splits of this fold over the crop cache, the epoch sampler and the two loaders."""
        cfg, train_cfg = self.cfg, self.cfg.train
        size = tuple(train_cfg.img_size)
        cache = build_cache(self.ctx, size) if self.rank == 0 else None
        if self.world > 1:
            dist.barrier()
            cache = cache or build_cache(self.ctx, size)
        train, val, weights = self._split(images)
        skip = cfg.data.skip_bad
        if weights is not None and skip:
            weights = weights[cache.has(train["image_path"])]
        self.train_df = existing_crops_only(train, cache, skip, "train split")
        self.val_df = existing_crops_only(val, cache, skip, "validation split")
        mean, std = normalisation(cfg.model.backbone)
        augment = train_transform(cfg.augment, size, mean, std)
        if train_cfg.overfit_batches:  # a wiring check: the same few images every epoch, as the model sees them at eval
            self.train_df = self.train_df.iloc[: train_cfg.overfit_batches * self.batch_size].reset_index(drop=True)
            weights, augment = None, eval_transform(size, mean, std)
        self.sampler = EpochSampler(len(self.train_df), self.seed, weights, self.rank, self.world)
        pin = self.device.type == "cuda"
        # each loader draws its workers' base seed from its own generator, never from the global RNG: a resumed run
        # (whose loader starts at a later epoch) then sees the same dropout masks as an uninterrupted one
        self.train_loader = crop_loader(
            cache,
            self.train_df,
            augment,
            LoaderSpec(
                self.batch_size, train_cfg.workers, pin, self.seed, drop_last=len(self.train_df) > self.batch_size
            ),
            sampler=self.sampler,
            background=BackgroundSuppression.of(cfg.augment) if not train_cfg.overfit_batches else None,
        )
        self.val_loader = crop_loader(
            cache,
            self.val_df,
            eval_transform(size, mean, std),
            LoaderSpec(train_cfg.val_batch_size, train_cfg.workers, pin, self.seed + 1),
        )

    def _build_model(self) -> None:
        """Model, loss, Mixup, EMA, and the wrapped network (DDP, torch.compile) that the steps run."""
        cfg, train_cfg = self.cfg, self.cfg.train
        self.model = (
            create_model(cfg.model, train_cfg.img_size)
            .to(self.device)
            .to(memory_format=torch.channels_last if train_cfg.channels_last else torch.contiguous_format)
        )
        self.heads = head_sizes(cfg.model.head)
        class_weights = None
        if cfg.loss.class_weights == "balanced":
            targets = targets_of(self.train_df)
            class_weights = {h: balanced_class_weights(targets[h], n) for h, n in self.heads.items() if h in targets}
        self.criterion = Criterion(cfg.loss, self.heads, class_weights)
        self.mixup = self._mixup()
        # the decay warms up (1 - (1 + step)^-0.75, capped at ema_decay) so that short runs do not average in the
        # barely trained first steps
        self.ema = (
            ModelEmaV3(self.model, decay=train_cfg.ema_decay, use_warmup=True, warmup_power=0.75)
            if train_cfg.ema
            else None
        )
        self.net = self.model
        if self.world > 1:
            # a frozen backbone produces no gradients for its parameters: DDP's reducer must not wait for them
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.model.freeze_backbone_epochs > 0,
            )
        if train_cfg.compile:
            self.net = torch.compile(self.net)

    def _build_optimisation(self) -> None:
        train_cfg = self.cfg.train
        self.optimizer = create_optimizer(self.model, train_cfg)
        self.scheduler = create_scheduler(self.optimizer, train_cfg, self.updates_per_epoch)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.device.type == "cuda" and self.amp_dtype == torch.float16
        )

    def _files(self, run: RunRef) -> FoldFiles:
        return run.fold(self.fold)

    @property
    def label(self) -> str:
        """What the progress bar calls this training."""
        return f"fold {self.fold} (of folds 0-{self.cfg.folds.k - 1})"

    def _seed(self) -> int:
        return self.cfg.seed + self.fold

    def _split(self, images: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
        """(training rows, validation rows, sampling weights or None)."""
        return split_fold(self.cfg, images, self.fold)

    def _mixup(self) -> Mixup | None:
        aug = self.cfg.augment
        if not (aug.mix_prob and (aug.mixup_alpha or aug.cutmix_alpha)):
            return None
        if self.cfg.model.head != "single":
            raise MaskcompError(
                "augment.mixup_alpha/cutmix_alpha need model.head=single (timm Mixup mixes one label set); "
                "use augment.half_cutmix with multi heads"
            )
        return Mixup(
            mixup_alpha=aug.mixup_alpha,
            cutmix_alpha=aug.cutmix_alpha,
            prob=aug.mix_prob,
            label_smoothing=self.cfg.loss.label_smoothing,
            num_classes=labels.NUM_CLASSES,
        )

    @property
    def steps_per_epoch(self) -> int:
        """The training loader's batches, or train.limit_batches of them."""
        limit = self.cfg.train.limit_batches
        return min(limit, len(self.train_loader)) if limit else len(self.train_loader)

    @property
    def updates_per_epoch(self) -> int:
        """Optimiser steps per epoch: one per train.accumulate batches (a last partial group steps too)."""
        return -(-self.steps_per_epoch // self.cfg.train.accumulate)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and kept as best.pt: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _seed_epoch(self, epoch: int) -> torch.Generator:
        """Seed dropout, timm Mixup and half-CutMix from (seed, epoch, rank) alone: a resumed run matches an
        uninterrupted one, and DDP ranks draw different masks (rank 0's seeds are the single-process ones)."""
        seed = self.seed * 7919 + epoch + RANK_SEED_STRIDE * self.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        return torch.Generator().manual_seed(self.seed * 104729 + epoch + RANK_SEED_STRIDE * self.rank)

    def _start_epoch(self, epoch: int) -> torch.Generator:
        """The backbone's freeze policy, the sampler's epoch and the epoch's seeds; returns the mixing generator."""
        self.model.train()
        frozen = epoch < self.cfg.model.freeze_backbone_epochs
        for p in self.model.backbone.parameters():
            p.requires_grad_(not frozen)
        self.sampler.set_epoch(epoch)
        return self._seed_epoch(epoch)

    def _step(self, images: torch.Tensor, targets: dict[str, torch.Tensor], step: int, epoch: int) -> torch.Tensor:
        """One batch on the device: forward (timm Mixup, AMP) and backward; every train.accumulate batches (and at
        the epoch's end) an optimiser step with clipping, schedule and EMA. Returns the loss (no sync)."""
        train_cfg = self.cfg.train
        if self.mixup is not None:
            images, targets["label"] = self.mixup(images, targets["label"])
        images = images.contiguous(memory_format=torch.channels_last) if train_cfg.channels_last else images
        with autocast(self.device, self.amp_dtype):
            outputs = self.net(images)
        loss = self.criterion(outputs, targets)
        self.scaler.scale(loss / train_cfg.accumulate).backward()
        if (step + 1) % train_cfg.accumulate == 0 or step + 1 == self.steps_per_epoch:
            update = epoch * self.updates_per_epoch + step // train_cfg.accumulate
            self._optimizer_step(update)
        return loss.detach()

    def _optimizer_step(self, update: int) -> None:
        train_cfg = self.cfg.train
        if train_cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), train_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_update(update + 1)
        if self.ema is not None:
            self.ema.update(self.model, step=update)

    def _guarded_step(
        self, images: torch.Tensor, targets: dict[str, torch.Tensor], step: int, epoch: int
    ) -> torch.Tensor:
        """The step, with an out-of-memory turned into one line naming the batch that failed and what to set."""
        try:
            return self._step(images, targets, step, epoch)
        except torch.cuda.OutOfMemoryError:
            train_cfg, half = self.cfg.train, max(1, self.batch_size // 2)
            raise MaskcompError(
                f"fold {self.fold}: out of {self.device.type.upper()} memory training a batch of {len(images)} "
                f"(train.batch_size={train_cfg.batch_size}, train.img_size={train_cfg.img_size}, model.backbone="
                f"{self.cfg.model.backbone}); set train.batch_size={half} train.accumulate={train_cfg.accumulate * 2} "
                "(the same effective batch), train.batch_size=auto, or a smaller train.img_size, then "
                "`make train ARGS=--resume`"
            ) from None

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """(mean training loss over all ranks, images/s over all ranks)."""
        aug = self.cfg.augment
        mix_gen = self._start_epoch(epoch)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, start, steps = 0, time.perf_counter(), self.steps_per_epoch
        bar = progress(
            self.train_loader,
            f"{self.label} epoch {epoch + 1}/{self.cfg.train.epochs}",
            self.rank,
        )
        for step, (images, targets, _) in enumerate(bar):
            if step == steps:  # train.limit_batches
                break
            if aug.half_cutmix:  # on the CPU batch, before the transfer: no GPU synchronisation
                images = half_cutmix(
                    images, targets["label"], targets["age"], aug.half_cutmix, aug.half_cutmix_rare_only, mix_gen
                )
            images = images.to(self.device, non_blocking=True)
            targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
            self.lr_log.append({"epoch": epoch + step / steps, "lr": self.optimizer.param_groups[0]["lr"]})
            total += self._guarded_step(images, targets, step, epoch) * len(images)
            count += len(images)
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:  # the only host syncs of the loop
                running = total.item() / count
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)  # redraws follow the bar's own interval
                if self.sinks is not None:
                    self.sinks.step(epoch * steps + step + 1, running, self.lr_log[-1]["lr"])
        sums = torch.tensor([total.item(), count], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1].clamp_min(1)), float(sums[1]) / (time.perf_counter() - start)

    def _validate(self) -> tuple[dict, np.ndarray, dict]:
        probs, head_probs = predict(self.eval_model, self.val_loader, self.device, self.amp_dtype)
        y = self.val_df["label"].to_numpy()
        result = scores(y, probs)
        # torch.tensor copies: pandas hands out read-only arrays, which torch.as_tensor warns about
        result["val_loss"] = float(F.nll_loss(torch.log(torch.as_tensor(probs).clamp_min(1e-8)), torch.tensor(y)))
        return result, probs, head_probs

    def _resumable(self) -> dict[str, object]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "ema": self.ema,
        }

    def _resume(self) -> TrainState:
        state = self.checkpoints.resume(self._resumable(), self.device) if self.resume else None
        if state is None:
            return TrainState()
        log.info("fold %d: resuming after epoch %d from %s", self.fold, state.epochs_done, self.checkpoints.last)
        return state

    def _end_epoch(
        self, epoch: int, train_loss: float, images_per_s: float, state: TrainState, sinks: MetricSinks
    ) -> None:
        """The main process's decisions after an epoch: validate, keep the best model and its OOF, record, save."""
        val, probs, head_probs = self._validate()
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **val,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
        }
        state.history.append(row)
        improved = self.stopper.update(state, val["f1"], epoch + 1)
        if improved:
            self.checkpoints.save_best(self.eval_model, self.cfg, state)
            write_csv(oof_table(self.val_df, self.fold, probs, head_probs, self.cfg.paths.resolved), self.files.oof)
        sinks.epoch(row, state, improved)
        self.checkpoints.save_last(self._resumable(), state)

    def _share_stop(self, state: TrainState) -> None:
        """Rank 0 decides early stopping; collectives need tensors on this process's device."""
        if self.world > 1:
            flags = torch.tensor([state.bad_epochs], dtype=torch.int64, device=self.device)
            dist.broadcast(flags, 0)
            state.bad_epochs = int(flags.item())

    def run(self) -> dict:
        train_cfg = self.cfg.train
        state = self._resume()
        self.lr_log = state.learning_rates  # _train_epoch appends each step's rate to the state it is saved with
        sinks = self._sinks() if self.rank == 0 else None
        self.sinks = sinks
        if self.rank == 0:
            write_fold_info(self.files, self.cfg, self._env())
        while state.epochs_done < train_cfg.epochs and not self.stopper.should_stop(state):
            epoch = state.epochs_done
            train_loss, images_per_s = self._train_epoch(epoch)
            state.epochs_done = epoch + 1
            if self.rank == 0:
                self._end_epoch(epoch, train_loss, images_per_s, state, sinks)
            self._share_stop(state)
        summary = {
            "fold": self.fold,
            "best_f1": state.best_f1,
            "best_epoch": state.best_epoch,
            "epochs_run": len(state.history),
            "run_id": self.run_ref.run_id,
            "best_digest": state.best_digest,
        }
        if self.rank == 0:
            write_json(summary, self.files.done)
            sinks.close(summary)
            self._say_done(state)
        return summary

    def _say_done(self, state: TrainState) -> None:
        log.info(
            "fold %d done: best macro F1 %.4f at epoch %d; outputs in %s",
            self.fold,
            state.best_f1,
            state.best_epoch,
            self.files.dir,
        )

    def _sinks(self) -> MetricSinks:
        tracker = None
        if "wandb" in self.cfg.train.loggers:
            tracker = WandbSink(self.cfg, self.run_ref.dir, self.run_ref.run_id, self.fold, git_commit())
        return MetricSinks(self.files, self.fold, self.cfg, tracker)

    def _env(self) -> dict:
        return {
            "seed": self.seed,
            "fold": self.fold,
            "versions": library_versions(),
            "device": str(self.device),
            "amp": str(self.amp_dtype).removeprefix("torch.") if self.device.type == "cuda" else "fp32",
            "amp_note": self.amp_note,
            "cuda": self.cuda_settings,
            "torch_threads": torch.get_num_threads(),
            "world_size": self.world,
            "batch_size": self.batch_size,
            "effective_batch": self.batch_size * self.cfg.train.accumulate * self.world,
            "train_images": len(self.train_df),
            "val_images": len(self.val_df),
            "run_id": self.run_ref.run_id,
        }


def _fold_status(run: RunRef, fold: int, place: Placement) -> str:
    """done, todo, or damaged: finished, but its best.pt is not the one written; that file is set aside (never
    deleted) so that the fold trains again from its first epoch."""
    done = run.done(fold).exists()
    reason = damaged_checkpoint(run.fold(fold)) if done else None
    if place.world > 1:
        dist.barrier()  # every rank has read the fold's state before rank 0 changes it
    if not done:
        return "todo"
    if reason is None:
        return "done"
    if place.is_main:
        kept = set_aside(run.best(fold)) if run.best(fold).exists() else None
        run.done(fold).unlink()
        log.warning(
            "%s: %s%s; training fold %d again", run.best(fold), reason, f", kept as {kept.name}" if kept else "", fold
        )
    if place.world > 1:
        dist.barrier()
    return "damaged"


def _train_fold(
    ctx: Context, fold: int, images: pd.DataFrame, run: RunRef, place: Placement, resume: bool, as_latest: bool
) -> dict:
    """One fold of the run: skipped when done, else trained (resumed on request). A fold that finishes (or is found
    done) makes the run `latest` (with `as_latest`); a training that stops records its error in the run's
    failed.json."""
    status = _fold_status(run, fold, place)
    if status == "done" and not resume:
        log.info("fold %d already trained in run %s (%s); skipping", fold, run.run_id, run.done(fold))
        if place.is_main and as_latest:
            mark_latest(run)
        return {**json.loads(run.done(fold).read_text()), "trained_now": False}
    try:
        summary = FoldTrainer(ctx, fold, images, run, place, resume=resume and status != "damaged").run()
    except Exception as err:
        if place.is_main:
            record_failure(run, fold, err)
        raise
    if place.is_main and as_latest:
        mark_latest(run)
    return {**summary, "trained_now": True}


@stage
def train(
    ctx: Context, folds: list[int] | None = None, resume: bool = False, wait: bool = False, as_latest: bool = True
) -> list[dict]:
    """Train the requested folds (default: train.folds, or all) in the run of the current manifest; folds that
    run already finished are skipped. The run becomes the experiment's `latest` unless `as_latest` is false (a search's
    trials: a plain `make infer` must not move to them). With `wait`, a run another process is training is waited for
    instead of refused."""
    cfg = ctx.cfg
    require_input_size(cfg.model.backbone, cfg.train.img_size)
    if "wandb" in cfg.train.loggers:
        wandb_mode(cfg)  # a missing key or an unreachable server: one line now, not after the first epoch
    images = load_train(ctx)
    all_folds = sorted(set(load_folds(cfg, images)))
    todo = folds or cfg.train.folds or all_folds
    place = start_distributed(cfg.train.device)
    manifest = run_manifest(ctx)
    # every rank computes the same run; rank 0 alone writes its files and holds its lock
    run = open_run(cfg, manifest, write=place.is_main)
    log.info("run %s: %s", run.label, run.dir)
    lock = run_lock(run, wait) if place.is_main else contextlib.nullcontext()
    with lock:
        results = [_train_fold(ctx, fold, images, run, place, resume, as_latest) for fold in todo]
        if place.is_main:
            clear_failure(run)
    if place.world > 1:  # every rank leaves together, and the process group is torn down before interpreter exit
        dist.barrier()
        dist.destroy_process_group()
    return results
