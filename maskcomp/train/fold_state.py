"""The pieces of a fold's training loop that are not the epoch step: its state, early stopping, checkpoints and the
places metrics go (CSV files, the console, TensorBoard)."""

from __future__ import annotations

import errno
import logging
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..core.config import Settings, dump_config
from ..core.errors import MaskcompError
from ..core.fileio import atomic_path, write_csv, write_json, write_text
from ..core.manifests import file_digest
from ..runs import FoldFiles, set_aside
from .track import WandbSink

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a fold's training stands after `epochs_done` epochs."""

    epochs_done: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    learning_rates: list[dict] = field(default_factory=list)  # every step's {epoch (fractional), lr}
    best_digest: str = ""  # SHA-256 of best.pt as written: a fold is done only while its file still has it


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` epochs without a better validation macro F1."""

    patience: int

    def update(self, state: TrainState, f1: float, epoch: int) -> bool:
        """Record epoch `epoch` (1-based) scoring `f1`; True when it is the best so far."""
        if f1 > state.best_f1:
            state.best_f1, state.best_epoch, state.bad_epochs = f1, epoch, 0
            return True
        state.bad_epochs += 1
        return False

    def should_stop(self, state: TrainState) -> bool:
        return state.bad_epochs >= self.patience


def _tensor_bytes(obj: object) -> int:
    """The bytes of every tensor inside a (nested) checkpoint state: about the size its file needs."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(state: dict, path: Path) -> str:
    """Write a checkpoint atomically; returns the SHA-256 of what was written. A full disk ends in one line naming
    the folder and the room needed (torch reports it as 'unexpected pos' or a failed write), and no partial file."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
            digest = file_digest(tmp)
    except (RuntimeError, OSError) as err:
        needed, free = _tensor_bytes(state), shutil.disk_usage(path.parent).free
        if getattr(err, "errno", None) != errno.ENOSPC and free >= needed:
            raise
        raise MaskcompError(
            f"{path.parent}: no room to save {path.name} (about {needed / 1e6:.0f} MB needed, "
            f"{free / 1e6:.0f} MB free); free space there or set paths.models to a larger disk, then "
            "continue with `make train ARGS=--resume`"
        ) from None
    return digest


@dataclass(frozen=True)
class Checkpointer:
    """best.pt (the best epoch's weights with the config that shaped them) and last.pt (everything to resume)."""

    files: FoldFiles
    run_id: str

    @property
    def last(self) -> Path:
        return self.files.last

    def save_best(self, model: torch.nn.Module, cfg: Settings, state: TrainState) -> None:
        state.best_digest = save_checkpoint(
            {"model": model.state_dict(), "config": cfg.model_dump(), "epoch": state.best_epoch, "f1": state.best_f1},
            self.files.best,
        )

    def save_last(self, objects: dict[str, object], state: TrainState) -> None:
        """`objects`: name -> anything with state_dict() (model, optimizer, scheduler, scaler, EMA or None)."""
        saved = {name: obj.state_dict() if obj is not None else None for name, obj in objects.items()}
        save_checkpoint({**saved, "train_state": asdict(state), "run_id": self.run_id}, self.last)

    def resume(self, objects: dict[str, object], device: torch.device) -> TrainState | None:
        """Load last.pt into `objects`; the state it was saved with, or None when there is nothing to resume."""
        if not self.last.exists():
            return None
        try:
            saved = torch.load(self.last, map_location=device, weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            kept = set_aside(self.last)
            log.warning(
                "%s: damaged (%s); kept as %s, the fold starts again from epoch 1",
                self.last,
                str(err).splitlines()[0][:80],
                kept.name,
            )
            return None
        for name, obj in objects.items():
            if obj is not None:
                obj.load_state_dict(saved[name])
        if "train_state" not in saved:  # written before TrainState: the last finished epoch's index and loose fields
            return TrainState(
                saved["epoch"] + 1, saved["best_f1"], saved["best_epoch"], saved["bad_epochs"], saved["history"]
            )
        return TrainState(**saved["train_state"])


class MetricSinks:
    """Where each epoch's row goes: metrics.csv and lr.csv (every step's learning rate), the console, and the
    loggers of train.loggers (TensorBoard, W&B). Only the main process makes one."""

    def __init__(self, files: FoldFiles, fold: int, cfg: Settings, wandb: WandbSink | None = None):
        self.files, self.fold, self.epochs = files, fold, cfg.train.epochs
        self.writer, self.wandb = None, wandb
        if "tensorboard" in cfg.train.loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(files.tensorboard)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        """The running loss at the loop's host syncs (every LOG_EVERY steps)."""
        if self.wandb is not None:
            self.wandb.step(global_step, loss, lr)

    def epoch(self, row: dict, state: TrainState, improved: bool) -> None:
        write_csv(pd.DataFrame(state.history), self.files.metrics)
        write_csv(pd.DataFrame(state.learning_rates), self.files.learning_rates)
        if self.writer is not None:
            for key, value in row.items():
                self.writer.add_scalar(key, value, row["epoch"])
        if self.wandb is not None:
            self.wandb.epoch(row)
        print(
            f"fold {self.fold} epoch {row['epoch']}/{self.epochs}: loss {row['train_loss']:.4f} val_loss "
            f"{row['val_loss']:.4f} "
            f"f1 {row['f1']:.4f} (mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} age {row['f1_age']:.3f}) "
            f"acc {row['acc']:.4f} {row['images_per_s']:.0f} "
            f"img/s{' (best so far: saved best.pt)' if improved else ''}",
            flush=True,
        )

    def close(self, summary: dict) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close(summary)


def write_fold_info(files: FoldFiles, cfg: Settings, info: dict) -> None:
    """config.yaml and env.json of a fold: the resolved config, seed, versions, device and sizes."""
    write_text(dump_config(cfg), files.config)
    write_json(info, files.env)
