"""The study: Optuna storage (SQLite under models/tune/ by default; TUNE_STORAGE names a shared database or journal
file), pruner, and the objective. A trial is an ordinary training run: its settings decide its run id, so a trial
that repeats a configuration reuses the folds already trained, and a pruned trial's finished folds stay usable.
Folds are trained one at a time; after each the running fold mean is reported and the pruner may stop the trial. The
value is the CV the submission would report: the nested decision (ensemble.tune_biases) on the run's OOF."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ..core import labels
from ..core.config import Settings, updated
from ..core.context import Context, stage
from ..core.errors import MaskcompError
from ..data.folds import load_folds
from ..data.tables import load_train
from ..ensemble.decide import decide
from ..runs import RunRef, open_run, read_oof
from ..train.trainer import run_manifest, train
from .space import Dimension, search_space, suggest

log = logging.getLogger(__name__)

STORAGE_ENV = "TUNE_STORAGE"
JOURNAL = "journal://"  # TUNE_STORAGE=journal:///shared/studies/search.log: an append-only file, no server
STUDIES = "tune"  # models/tune/: the SQLite studies (a search's record: nothing regenerates it)
SCHEMA_ATTEMPTS = 5  # workers starting together race to create the storage's tables; the losers open them after
OBJECTIVE = "CV macro F1 (nested)"
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class TuneJob:
    """A worker's task: the study, every trial's config before its parameters, and where the search was set."""

    cfg: Settings
    study: str
    tune_file: Path
    overrides: tuple[str, ...] = ()
    storage: str = field(default="")

    @classmethod
    def from_config(cls, cfg: Settings, tune_file: str | Path, overrides: list[str] | None = None) -> TuneJob:
        study = cfg.tune.study or Path(tune_file).stem
        return cls(cfg, study, Path(tune_file), tuple(overrides or ()), storage_url(cfg, study))


def storage_url(cfg: Settings, study: str) -> str:
    """TUNE_STORAGE (any SQLAlchemy URL, e.g. postgresql://user@host/db, or journal:///<file> for a journal file on a
    shared filesystem) or an SQLite file under models/tune/."""
    url = os.environ.get(STORAGE_ENV, "").strip()
    for plain in ("postgresql://", "postgres://"):  # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url.removeprefix(plain)
    if url:
        return url
    path = (cfg.paths.resolved.models / STUDIES / f"{study}.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_storage(job: TuneJob) -> RDBStorage | JournalStorage:
    """The RDB storage with heartbeats (a trial whose worker died is failed after two missed beats and retried), or a
    journal file. PostgreSQL: connections checked before use (a server restart or an idle timeout is not an error)
    and a small pool per worker (its main thread and its heartbeat thread), so many workers fit the server's
    max_connections."""
    if job.storage.startswith(JOURNAL):
        return _journal_storage(job.storage.removeprefix(JOURNAL))
    if job.storage.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 1}
    with _sqlite_lock(job.storage):
        return _rdb_storage(job, engine)


def _journal_storage(file: str) -> JournalStorage:
    """Optuna's journal file: workers on any machines that share the filesystem (NFS included: its lock is a
    symlink) append to one log; no server. Optuna keeps no heartbeats there: a killed worker's trial stays running."""
    path = Path(file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise MaskcompError(
            f"tune storage {JOURNAL}{path}: cannot write it ({err.strerror}); set {STORAGE_ENV} to a journal file "
            "in a folder every worker can write"
        ) from None


def _schema_race(err: Exception) -> bool:
    """Another worker created the storage's tables (or its schema version row) between our check and our insert."""
    text = str(err)
    return any(s in text for s in ("already exists", "UNIQUE constraint", "duplicate key"))


@contextlib.contextmanager
def _sqlite_lock(url: str):
    """Workers on one machine open an SQLite study one at a time (its first open creates the tables)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    with open(url.removeprefix("sqlite:///") + ".lock", "a") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def _rdb_storage(job: TuneJob, engine: dict) -> RDBStorage:
    train_cfg = job.cfg.tune
    for attempt in range(SCHEMA_ATTEMPTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return RDBStorage(
                    job.storage,
                    engine_kwargs=engine,
                    heartbeat_interval=train_cfg.heartbeat_s,
                    grace_period=2 * train_cfg.heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=train_cfg.retries),
                )
            except Exception as err:  # SQLAlchemy's OperationalError, a missing driver, a malformed URL
                if _schema_race(err) and attempt + 1 < SCHEMA_ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))  # another worker is creating the tables this moment
                    continue
                first = (str(err).splitlines() or [""])[0][:200]
                raise MaskcompError(
                    f"tune storage {_safe_url(job.storage)}: cannot open it ({type(err).__name__}: {first}); check "
                    f"{STORAGE_ENV} (e.g. postgresql://user:password@host:5432/db) or unset it for a local SQLite "
                    "file"
                ) from None


def _safe_url(url: str) -> str:
    """The URL without its password."""
    head, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    return f"{head}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url


def make_pruner(cfg: Settings) -> optuna.pruners.BasePruner:
    train_cfg = cfg.tune
    if train_cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=train_cfg.startup_trials, n_warmup_steps=0)
    if train_cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(job: TuneJob) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=job.cfg.tune.seed + os.getpid())
    study = optuna.create_study(
        study_name=job.study,
        storage=open_storage(job),
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(job.cfg),
        load_if_exists=True,
    )
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE])  # what make tune-dashboard calls the value
    return study


def trial_folds(ctx: Context) -> list[int]:
    """The folds each trial trains, in order: train.folds, or all folds."""
    return ctx.cfg.train.folds or sorted(set(load_folds(ctx.cfg, load_train(ctx))))


def nested_cv(cfg: Settings, ref: RunRef) -> float:
    """The CV macro F1 the submission would report for this run alone: the nested decision on its pooled OOF."""
    oof = read_oof(ref, cfg.paths.resolved, tta=False)
    logp = np.log(np.clip(oof[labels.PROB_COLUMNS].to_numpy(), 1e-9, None))
    return decide(logp, oof["label"].to_numpy(), oof["fold"].to_numpy(), cfg.ensemble).cv_f1


class TrialFailed(Exception):
    """A trial's error, as one line (its traceback is not shown: the line names the setting and the fix)."""


def one_line(err: BaseException) -> str:
    first = (str(err).splitlines() or [""])[0][:300]
    return first if isinstance(err, MaskcompError) else f"{type(err).__name__}: {first}"


class OverBudget(Exception):
    """Raised in a trial that another worker's trials left no room for (its state is FAIL, marked over_budget)."""


def counted_trials(study: optuna.Study, before: int | None = None) -> int:
    """Trials that took a share of the budget (finished, pruned, running); with `before`, those numbered lower, and
    queued ones (a retried or enqueued trial: some worker will run it) too."""
    if before is None:
        return len(study.get_trials(deepcopy=False, states=TAKEN))
    trials = study.get_trials(deepcopy=False, states=(*TAKEN, TrialState.WAITING))
    return sum(1 for t in trials if t.number < before)


@dataclass
class Objective:
    """One trial: its settings, then its run's folds one at a time (reported to the pruner), then the nested CV."""

    ctx: Context
    job: TuneJob
    dims: list[Dimension]
    folds: list[int]
    stop_reason: str = ""  # a failure that no searched setting causes: every trial would meet it

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except (optuna.TrialPruned, OverBudget):
            raise
        except Exception as err:
            reason = one_line(err)
            trial.set_user_attr("error", reason)
            finished = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if not finished and not any(dim.key in reason for dim in self.dims):
                self.stop_reason = f"trial {trial.number} failed: {reason}"
                trial.study.stop()
            raise TrialFailed(reason) from None

    def _run(self, trial: optuna.Trial) -> float:
        if counted_trials(trial.study, before=trial.number) >= self.job.cfg.tune.trials:
            trial.set_user_attr("over_budget", True)
            trial.study.stop()
            raise OverBudget(f"trial {trial.number}: the study's {self.job.cfg.tune.trials} trials are taken")
        cfg = updated(self.job.cfg, suggest(trial, self.dims))
        trial_ctx = self.ctx.with_settings(cfg)  # the listings and digests of the worker, shared by its trials
        ref = open_run(cfg, run_manifest(trial_ctx), write=False)
        trial.set_user_attr("experiment", ref.experiment)
        trial.set_user_attr("run_id", ref.run_id)
        values, trained, start = [], 0, time.perf_counter()
        for step, fold in enumerate(self.folds):
            summary = train(trial_ctx, folds=[fold], wait=True, as_latest=False)[0]  # `latest` stays the user's run
            values.append(summary["best_f1"])
            trained += summary["trained_now"]
            trial.set_user_attr("folds_trained", trained)
            trial.set_user_attr("folds_done", step + 1)
            trial.set_user_attr("train_s", round(time.perf_counter() - start, 1))
            trial.report(float(np.mean(values)), step + 1)  # the step is the folds trained: the resource
            if step + 1 < len(self.folds) and trial.should_prune():
                raise optuna.TrialPruned(f"running fold mean {np.mean(values):.4f} after {step + 1} fold(s)")
        return nested_cv(cfg, ref)


def stop_at_budget(budget: int, study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
    if counted_trials(study) >= budget:
        study.stop()


def say_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per trial: what it gave, the best so far, how far the study is."""
    if trial.user_attrs.get("over_budget"):
        return
    folds = f"{trial.user_attrs.get('folds_done', 0)} fold(s), {trial.user_attrs.get('folds_trained', 0)} trained"
    if trial.state == TrialState.COMPLETE:
        what = f"CV {trial.value:.4f}"
    elif trial.state == TrialState.FAIL and trial.user_attrs.get("error"):
        what = f"failed: {trial.user_attrs['error']}"
    elif trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values.items(), default=(0, float("nan")))[1]
        what = f"pruned (running fold mean {last:.4f})"
    else:
        what = trial.state.name.lower()
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = max(done, key=lambda t: t.value) if done else None
    best_text = f"best so far {best.value:.4f} (trial {best.number})" if best else "no finished trial yet"
    print(
        f"[tune {study.study_name}] trial {trial.number}: {what}; {folds}; {best_text}; "
        f"{counted_trials(study)}/{study.user_attrs.get('trials', '?')} trials",
        flush=True,
    )


def require_no_clash(dims: list[Dimension], overrides: tuple[str, ...]) -> None:
    """A setting given in ARGS that the space also searches would be replaced by each trial's value without a word."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        for dim in dims:
            if key == dim.key or dim.key.startswith(key + ".") or key.startswith(dim.key + "."):
                raise MaskcompError(
                    f"tune.space.{dim.key}: also set in ARGS ({text}), which every trial would replace; remove it "
                    "from ARGS to search it, or from the search file's tune.space to pin it"
                )


@stage
def optimise(ctx: Context, job: TuneJob) -> optuna.Study:
    """This worker's share of the study: trials until the study's budget is taken or tune.minutes pass. A failed
    trial prints one line; a failure that names no searched setting stops the search with that line."""
    dims = search_space(job.cfg)
    require_no_clash(dims, job.overrides)
    folds = trial_folds(ctx)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is our one line, not Optuna's traceback
    study = open_study(job)
    study.set_user_attr("trials", job.cfg.tune.trials)
    with warnings.catch_warnings():  # experimental since Optuna 2.9, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed and queued again before counting
    taken, budget = counted_trials(study), job.cfg.tune.trials
    if taken >= budget:
        log.info("study %s already has %d trials (tune.trials=%d); nothing to run", job.study, taken, budget)
        return study
    log.info("study %s in %s: %d of %d trials taken", job.study, _safe_url(job.storage), taken, budget)
    objective = Objective(ctx, job, dims, folds)
    study.optimize(
        objective,
        timeout=job.cfg.tune.minutes * 60 or None,
        callbacks=[partial(stop_at_budget, job.cfg.tune.trials), say_trial],
        catch=(OverBudget, TrialFailed),
        gc_after_trial=True,
    )
    if objective.stop_reason:
        searched = ", ".join(dim.key for dim in dims)
        raise MaskcompError(
            f"study {job.study}: {objective.stop_reason}; this names none of the searched settings ({searched}), so "
            "every trial would fail the same way: fix it and run `make tune` again"
        )
    return study
