"""Training runs on disk, the names of their artifacts (RunRef, FoldFiles: spelled here only), and the one reader
of them.

    models/<experiment>/<run-id>/    one training run; the id is the start of its manifest's digest, so the
        manifest.json                same data, labels, folds and training config always land in the same run,
        run.json                     and anything else in a new one (a trained model is never overwritten)
        config.yaml  oof.csv         (all folds' OOF, image keys), failed.json (a training that stopped)
        fold<K>/                     best.pt last.pt config.yaml env.json metrics.csv lr.csv oof.csv done.json, and
                                     from `make infer`: test_probs.npy/.csv test_ids.csv oof_tta.csv predictions.json
        .lock                        held while a process trains this run
    models/<experiment>/latest       the id of the last run of which `make train` finished (or found) a fold

infer, ensemble and analyze take `run: latest` (default) or a run id; `ensemble.experiments` entries may
name a run as `experiment@run-id`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import yaml

from .core import labels
from .core.config import PROJECT_ROOT, Settings, dump_config
from .core.errors import MaskcompError
from .core.fileio import write_json, write_text
from .core.manifests import MANIFEST, Manifest, file_digest, read_manifest, write_manifest
from .core.paths import Paths

log = logging.getLogger(__name__)

RUN_ID_CHARS = 12
LATEST = "latest"
BEST = "best.pt"
DONE = "done.json"
PREDICTIONS_MANIFEST = "predictions.json"  # what a fold's eval predictions were made from
LEGACY_PREDICTIONS_MANIFEST = "infer.json"  # its name before
FAILED = "failed.json"  # the error that stopped the run's last training, until a training of it succeeds
REVIEWED_FIXES = "label_fixes_reviewed.csv"  # make review: the accepted and edited fixes
REVIEW_DECISIONS = "review_decisions.csv"  # make review: every decision, to resume
PERSON_MADE = (REVIEWED_FIXES, REVIEW_DECISIONS)  # a person's work inside a run: nothing regenerates it
DAMAGED = ".damaged"  # suffix of a checkpoint found damaged: kept beside the fold, never deleted


@dataclass(frozen=True)
class FoldFiles:
    """Every artifact of one fold of a run, by name: the one place these names are spelled."""

    dir: Path

    best = property(lambda self: self.dir / BEST)  # the best epoch's weights and config
    last = property(lambda self: self.dir / "last.pt")  # everything --resume needs
    done = property(lambda self: self.dir / DONE)  # summary and best.pt's digest: the fold is finished
    config = property(lambda self: self.dir / "config.yaml")
    env = property(lambda self: self.dir / "env.json")  # seed, versions, device, threads, sizes
    metrics = property(lambda self: self.dir / "metrics.csv")  # one row per epoch
    learning_rates = property(lambda self: self.dir / "lr.csv")  # one row per step
    tensorboard = property(lambda self: self.dir / "tb")
    oof = property(lambda self: self.dir / "oof.csv")  # validation predictions of the best epoch
    oof_tta = property(lambda self: self.dir / "oof_tta.csv")  # the same images re-scored by make infer with TTA
    test_probs = property(lambda self: self.dir / "test_probs.npy")  # (eval images, 18)
    test_table = property(lambda self: self.dir / "test_probs.csv")  # every head's probabilities
    test_ids = property(lambda self: self.dir / "test_ids.csv")  # the ImageIDs of test_probs' rows
    neighbours = property(lambda self: self.dir / "neighbours.npz")  # look-alike persons' label shares (infer)

    @property
    def predictions_manifest(self) -> Path:
        """What the fold's eval predictions were made from (checkpoint digest, run, eval set, TTA, engine); a fold
        predicted before this file had its name keeps its infer.json, read and replaced like it."""
        legacy = self.dir / LEGACY_PREDICTIONS_MANIFEST
        return legacy if legacy.exists() else self.dir / PREDICTIONS_MANIFEST

    manifest = property(lambda self: self.dir / MANIFEST)  # a refit model's inputs (run, epochs, seed)

    def prediction_outs(self, oof: bool, neighbours: bool) -> list[Path]:
        """The files make infer wrote here that later stages read (the eval predictions; a fold's re-scored OOF and
        its look-alike shares when written): their digests go into the predictions' lock."""
        return [self.test_probs, self.test_ids] + [self.oof_tta] * oof + [self.neighbours] * neighbours

    def onnx(self, model_digest: str) -> Path:
        """best.pt exported for infer.engine=onnxruntime, named by the checkpoint's content."""
        return self.dir / f"best-{model_digest[:16]}.onnx"


@dataclass(frozen=True)
class RunRef:
    """One training run of one experiment, and the names of its run-level artifacts."""

    experiment: str
    run_id: str
    dir: Path

    config = property(lambda self: self.dir / "config.yaml")
    info = property(lambda self: self.dir / "run.json")  # created, git commit, host
    manifest = property(lambda self: self.dir / MANIFEST)
    failed = property(lambda self: self.dir / FAILED)
    oof = property(lambda self: self.dir / "oof.csv")  # every fold's OOF, image keys relative to the data root
    fix_candidates = property(lambda self: self.dir / "label_fix_candidates.csv")
    auto_fixes = property(lambda self: self.dir / "label_fixes_auto.csv")
    reviewed_fixes = property(lambda self: self.dir / REVIEWED_FIXES)
    review_decisions = property(lambda self: self.dir / REVIEW_DECISIONS)

    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold{fold}"

    def fold(self, fold: int) -> FoldFiles:
        return FoldFiles(self.fold_dir(fold))

    def trained_folds(self) -> list[int]:
        return sorted(int(p.parent.name.removeprefix("fold")) for p in self.dir.glob(f"fold*/{BEST}"))

    def refit(self, epochs: int, seed: int) -> FoldFiles:
        """The model trained on every training person (make refit) for `epochs` epochs with seed index `seed`:
        refit/epochs<E>-seed<S>/, or the folder whose manifest names those (refit/seed<S>/ of older runs). A refit
        of other epochs or seed never lands in another's folder."""
        for files in self.refit_folders():
            stored = read_manifest(files.manifest) or {}
            if stored.get("config") == {"epochs": epochs, "seed": seed}:
                return files
        return FoldFiles(self.dir / "refit" / f"epochs{epochs}-seed{seed}")

    def refit_folders(self) -> list[FoldFiles]:
        """Every refit model folder with a manifest (finished or not)."""
        return [FoldFiles(p.parent) for p in sorted(self.dir.glob(f"refit/*/{MANIFEST}"))]

    def finished_refits(self) -> list[FoldFiles]:
        """The refit models whose training finished (done.json written after their last epoch)."""
        return [files for files in self.refit_folders() if files.done.exists()]

    def expected_folds(self) -> list[int]:
        """The folds the run was configured to train (folds.k of its config.yaml)."""
        if not self.config.exists():
            return self.trained_folds()
        saved = yaml.safe_load(self.config.read_text()) or {}
        return list(range(int(saved.get("folds", {}).get("k", 0)))) or self.trained_folds()

    def missing_folds(self) -> list[int]:
        """Folds of the run that have no finished training (no done.json)."""
        return [f for f in self.expected_folds() if not self.done(f).exists()]

    def best(self, fold: int) -> Path:
        return self.fold(fold).best

    def done(self, fold: int) -> Path:
        return self.fold(fold).done

    def no_folds_error(self) -> MaskcompError:
        """What to say of a run without a trained fold: its failed start, when one was recorded."""
        failure = read_failure(self)
        why = f"its training stopped with: {failure}; fix that and run `make train`" if failure else "run `make train`"
        return MaskcompError(f"{self.dir}: run {self.label} has no finished fold (fold*/{BEST}); {why}")

    @property
    def label(self) -> str:
        return f"{self.experiment}@{self.run_id}"


def git_commit() -> str | None:
    """The code's commit (with '-dirty' when the work tree has changes), or None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def open_run(cfg: Settings, manifest: Manifest, write: bool = True) -> RunRef:
    """The run for this manifest; with `write`, created (run.json, config, manifest) if new. It becomes `latest`
    only once a fold of it is finished (mark_latest)."""
    run_id = manifest.digest[:RUN_ID_CHARS]
    ref = RunRef(cfg.experiment, run_id, cfg.paths.resolved.models / cfg.experiment / run_id)
    if not write:
        return ref
    if read_manifest(ref.dir) is None:
        write_text(dump_config(cfg), ref.config)
        write_json(
            {
                "experiment": ref.experiment,
                "run_id": ref.run_id,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "git_commit": git_commit(),
                "host": socket.gethostname(),
            },
            ref.info,
        )
        write_manifest(ref.dir, manifest)
    return ref


def mark_latest(ref: RunRef) -> None:
    write_text(ref.run_id + "\n", ref.dir.parent / LATEST)


def record_failure(ref: RunRef, fold: int, err: BaseException) -> None:
    first_line = (str(err).splitlines() or [""])[0][:300]
    message = first_line if isinstance(err, MaskcompError) else f"{type(err).__name__}: {first_line}"
    try:
        write_json({"fold": fold, "error": message, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, ref.failed)
    except OSError as err:  # a full disk that stopped the training: the error itself must reach the user
        log.warning("%s: could not record the failure (%s)", ref.failed, err.strerror)


def clear_failure(ref: RunRef) -> None:
    ref.failed.unlink(missing_ok=True)


def read_failure(ref: RunRef) -> str | None:
    """`fold K: <error>` of the run's last failed training, or None."""
    path = ref.failed
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    return f"fold {info['fold']}: {info['error']}"


def damaged_checkpoint(files: FoldFiles) -> str | None:
    """Why a fold's (or refit's) best.pt can no longer be trusted (missing, or not the bytes recorded when it was
    written), or None. Folds finished before digests were recorded are checked as zip archives, torch's format."""
    best = files.best
    if not best.exists():
        return "missing"
    recorded = json.loads(files.done.read_text()).get("best_digest") if files.done.exists() else None
    if recorded:
        return None if file_digest(best) == recorded else "its bytes differ from those recorded when it was written"
    return None if zipfile.is_zipfile(best) else "not a complete checkpoint (no zip archive)"


def set_aside(path: Path) -> Path:
    """Rename a damaged file to <name>.damaged (then .damaged.1, ...): kept for inspection, out of the way."""
    target = path.with_name(path.name + DAMAGED)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED}.{n}")
    os.replace(path, target)
    return target


def resolve_run(paths: Paths, spec: str, default_run: str = LATEST) -> RunRef:
    """`experiment` (its `default_run`) or `experiment@run-id` -> the run; `latest` follows the pointer."""
    experiment, _, run_id = spec.partition("@")
    run_id = run_id or default_run
    root = paths.models / experiment
    if run_id == LATEST:
        pointer = root / LATEST
        if not pointer.exists():
            raise MaskcompError(f"{pointer}: no trained run of experiment '{experiment}'; run `make train` first")
        run_id = pointer.read_text().strip()
    ref = RunRef(experiment, run_id, root / run_id)
    if not ref.dir.is_dir():
        known = ", ".join(sorted(p.name for p in root.glob("*") if p.is_dir())) or "none"
        raise MaskcompError(
            f"{ref.dir}: no run '{run_id}' of experiment '{experiment}' (runs: {known}); pick one with run=<id>"
        )
    return ref


def list_runs(paths: Paths) -> list[RunRef]:
    return [RunRef(p.parent.parent.name, p.parent.name, p.parent) for p in sorted(paths.models.glob("*/*/run.json"))]


def run_info(ref: RunRef) -> dict:
    path = ref.info
    return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def run_lock(ref: RunRef, wait: bool = False) -> Iterator[None]:
    """Hold the run's lock while training it; a second process stops with one line naming the holder, or with
    `wait` (tune workers that drew the same settings) waits for it and then finds its folds done.

    A POSIX record lock (lockf) belongs to this process alone: DataLoader workers forked meanwhile do not hold it,
    so a `kill -9` of the trainer frees the run at once, even while its workers are still winding down."""
    ref.dir.mkdir(parents=True, exist_ok=True)
    path = ref.dir / ".lock"
    with open(path, "a+") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise MaskcompError(
                    f"{ref.dir}: already being trained by {holder}; wait for it to finish or stop it"
                ) from None
            log.info("%s: being trained by %s; waiting for it", ref.dir, holder)
            fcntl.lockf(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.lockf(fh, fcntl.LOCK_UN)


def read_oof(ref: RunRef, paths: Paths, tta: bool = True) -> pd.DataFrame:
    """All trained folds' OOF rows, sorted by image; with tta, each fold's TTA re-scored table where it exists.
    The files name images by key; `image_path` comes back as the file under the current data root (`paths`)."""
    folds = ref.trained_folds()
    if not folds:
        raise ref.no_folds_error()
    tables = []
    for fold in folds:
        d = ref.fold(fold)
        path = d.oof_tta if tta and d.oof_tta.exists() else d.oof
        if not path.exists():
            raise MaskcompError(f"{path}: missing; finish the run with `train.py --resume`")
        tables.append(pd.read_csv(path, dtype={"person_id": str}))
    oof = pd.concat(tables, ignore_index=True)
    oof["image_path"] = [paths.image_file(paths.image_key(p)) for p in oof["image_path"]]
    oof = oof.sort_values("image_path").reset_index(drop=True)
    if not set(labels.PROB_COLUMNS) <= set(oof.columns):
        raise MaskcompError(
            f"{ref.dir}: OOF files lack the 18 class columns p0..p17; this run has another class layout"
        )
    return oof


def read_learning_rates(ref: RunRef) -> dict[int, pd.DataFrame]:
    """Each fold's learning rate per step (epoch as a fraction, lr); folds trained before it was logged are absent."""
    return {
        f: pd.read_csv(ref.fold(f).learning_rates) for f in ref.trained_folds() if ref.fold(f).learning_rates.exists()
    }


def read_metrics(ref: RunRef) -> dict[int, pd.DataFrame]:
    out = {}
    for fold in ref.trained_folds():
        path = ref.fold(fold).metrics
        if not path.exists():
            raise MaskcompError(f"{path}: missing; finish the run with `train.py --resume`")
        out[fold] = pd.read_csv(path)
    return out


def eval_models(ref: RunRef, which: str, refits: list[FoldFiles]) -> list[FoldFiles]:
    """The models whose eval predictions a submission averages (ensemble.models): folds, the chosen refit models
    (`refits`), or both."""
    folds = [ref.fold(f) for f in ref.trained_folds()] if which in ("folds", "both") else []
    return folds + (refits if which in ("refit", "both") else [])


def read_test_probs(ref: RunRef, fold: int | FoldFiles) -> tuple[np.ndarray, list[str]]:
    """One fold's (or refit model's) eval probabilities (N, 18) and the ImageIDs of their rows."""
    d = fold if isinstance(fold, FoldFiles) else ref.fold(fold)
    for path in (d.test_probs, d.test_ids):
        if not path.exists():
            raise MaskcompError(f"{path}: missing; run `make infer` for experiment '{ref.experiment}'")
    probs = np.load(d.test_probs)
    if probs.ndim != 2 or probs.shape[1] != labels.NUM_CLASSES:
        raise MaskcompError(
            f"{d.test_probs}: shape {probs.shape}, expected (N, {labels.NUM_CLASSES}); run `make infer` again"
        )
    return probs, pd.read_csv(d.test_ids, dtype=str, keep_default_na=False)["ImageID"].tolist()


def read_test_table(ref: RunRef, fold: int | FoldFiles) -> pd.DataFrame:
    """One fold's (or refit model's) eval predictions with every head's probabilities (test_probs.csv), in
    test_ids.csv's order."""
    path = (fold if isinstance(fold, FoldFiles) else ref.fold(fold)).test_table
    if not path.exists():
        raise MaskcompError(f"{path}: missing; run `make infer` for experiment '{ref.experiment}'")
    return pd.read_csv(path, dtype={"ImageID": str}, keep_default_na=False)
