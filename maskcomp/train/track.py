"""W&B tracking: one W&B run per fold (named <run-id>-fold<K>, grouped by experiment) with every logged step's loss
and learning rate, each epoch's metrics per head, the resolved config with run id and git commit, and the fold's
best scores as its summary; the analysis stage adds a run with the OOF scores, confusion matrix and plots.

Without WANDB_API_KEY (or with train.wandb_mode=offline) it runs offline: files under the run's wandb/ folder, to
upload later with `wandb sync`; never a login prompt, never a wait on the network."""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core.config import Settings
from ..core.errors import MaskcompError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 5.0  # W&B's own client waits over a minute for a server it cannot reach


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "").strip() or DEFAULT_BASE_URL


def api_key() -> str | None:
    """WANDB_API_KEY, or the key `wandb login` left in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return os.environ["WANDB_API_KEY"].strip()
    try:
        found = netrc.netrc().authenticators(urlparse(base_url()).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return found[2] if found else None


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why W&B's server cannot be reached (name lookup and connection within `timeout`), or None when it can."""
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or type(err).__name__)

    worker = threading.Thread(target=probe, daemon=True)  # a name lookup has no timeout of its own
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


@functools.cache
def _resolved(mode: str, key: bool, url: str) -> str:
    if mode == "offline" or (mode == "auto" and not key):
        return "offline"
    fix = "or set train.wandb_mode=offline (then `.venv/bin/wandb sync` uploads later)"
    if not key:
        raise MaskcompError(
            f"train.wandb_mode=online: no W&B API key (WANDB_API_KEY or ~/.netrc); run `wandb login`, {fix}"
        )
    why = unreachable(url)
    if why is None:
        return "online"
    if mode == "online":
        raise MaskcompError(f"train.wandb_mode=online: cannot reach W&B at {url} ({why}); check the network, {fix}")
    log.warning("W&B at %s cannot be reached (%s): tracking offline; `wandb sync` uploads later", url, why)
    return "offline"


def wandb_mode(cfg: Settings) -> str:
    """online or offline, decided once per process before any training: online needs a key and a reachable server
    (train.wandb_mode=online says so in one line when either is missing; auto then tracks offline)."""
    return _resolved(cfg.train.wandb_mode, api_key() is not None, base_url())


def start_run(cfg: Settings, run_dir, name: str, job_type: str, extra: dict[str, Any]) -> Any:
    """A W&B run under `run_dir`/wandb (offline files stay with the trained run), or None when wandb is not on."""
    if "wandb" not in cfg.train.loggers:
        return None
    import wandb

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.train.wandb_project,
        group=cfg.experiment,
        name=name,
        id=name,
        job_type=job_type,
        dir=str(run_dir),
        mode=wandb_mode(cfg),
        resume="allow",
        config={**cfg.model_dump(), **extra},
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, init_timeout=60),
    )


class WandbSink:
    """A fold's W&B run; `None`-safe calls so the trainer need not ask whether tracking is on."""

    def __init__(self, cfg: Settings, run_dir, run_id: str, fold: int, git_commit: str | None):
        extra = {"run_id": run_id, "fold": fold, "git_commit": git_commit}
        self.run = start_run(cfg, run_dir, f"{run_id}-fold{fold}", "train", extra)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.run is not None:
            self.run.log({"train/loss": loss, "train/lr": lr, "step": global_step})

    def epoch(self, row: dict) -> None:
        if self.run is not None:
            self.run.log({f"epoch/{k}": v for k, v in row.items()})

    def close(self, summary: dict) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.run.finish()
            folder = Path(self.run.dir).parent  # the run's folder (wandb sync takes it), not its files/ inside
            log.info("W&B run %s written (%s mode) in %s", self.run.name, self.run.settings.mode, folder)


def log_analysis(cfg: Settings, run_dir, run_id: str, scores: dict, y, pred, plots: list) -> None:
    """The analysis stage's W&B run (<run-id>-analysis): the OOF scores as its summary, the 18-class confusion
    matrix, and the analysis page's plots."""
    from ..core import labels

    run = start_run(cfg, run_dir, f"{run_id}-analysis", "analysis", {"run_id": run_id})
    if run is None:
        return
    import wandb

    names = [labels.class_name(c) for c in range(labels.NUM_CLASSES)]
    logged = {"oof/confusion": wandb.plot.confusion_matrix(y_true=list(y), preds=list(pred), class_names=names)}
    logged |= {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots if p.exists()}
    run.log(logged)
    run.summary.update({f"oof/{k}": v for k, v in scores.items() if isinstance(v, (int, float))})
    run.finish()
