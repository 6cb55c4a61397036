"""make tune-dashboard: optuna-dashboard over a study's own storage (the SQLite file under models/tune/, or
TUNE_STORAGE's database or journal), live while workers run: trials as they finish, intermediate values fold by fold,
importances. Served by the standard library's WSGI server, bound to 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

from ..core.config import Settings
from ..core.errors import MaskcompError
from .study import JOURNAL, TuneJob, _safe_url, open_storage

log = logging.getLogger(__name__)


class QuietHandler(WSGIRequestHandler):
    """The page polls its API every few seconds: requests go to the debug log, not the terminal."""

    def log_message(self, fmt: str, *args) -> None:
        log.debug(fmt, *args)


def require_study(job: TuneJob) -> optuna.storages.BaseStorage:
    """The study's storage, opened only when the study is there (a dashboard never creates an empty one)."""
    missing = f"no study '{job.study}' in {_safe_url(job.storage)}; start it with `make tune TUNE={job.tune_file}`"
    file = next((job.storage.removeprefix(p) for p in ("sqlite:///", JOURNAL) if job.storage.startswith(p)), None)
    if file is not None and not Path(file).exists():
        raise MaskcompError(missing)
    storage = open_storage(job)
    if job.study not in optuna.get_all_study_names(storage):
        raise MaskcompError(missing)
    return storage


def dashboard_server(cfg: Settings, tune_file: str | Path, port: int = 0, host: str = "127.0.0.1") -> WSGIServer:
    """The dashboard's server for the study of `tune_file` (not started): port 0 takes a free one."""
    job = TuneJob.from_config(cfg, tune_file)
    app = optuna_dashboard.wsgi(require_study(job))
    try:
        return make_server(host, port, app, handler_class=QuietHandler)
    except OSError as err:
        raise MaskcompError(
            f"tune-dashboard: cannot listen on {host}:{port} ({err.strerror}); choose another PORT"
        ) from None
