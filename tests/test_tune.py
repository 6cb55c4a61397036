"""make tune: workers sharing a study (SQLite, and a real PostgreSQL server), a killed worker, reused runs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from maskcomp.core.config import load_config
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.runs import open_run
from maskcomp.train.trainer import run_manifest
from maskcomp.tune.study import TuneJob, open_storage, optimise

from conftest import TINY_MODEL, config_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
SPACE = {"train.lr": {"choices": [0.001, 0.003]}, "train.weight_decay": {"choices": [0.0, 0.01]}}


def tune_setup(tiny_root: Path, work: Path, trials: int, **tune) -> tuple[Path, list[str]]:
    """A search file over a 4-point space, the data stages done, and the overrides every worker gets."""
    overrides = [*TINY_MODEL, "train.epochs=1"]
    cfg = config_for(tiny_root, work, *overrides)
    crop_faces(cfg)
    make_folds(cfg)
    search = work / "search.yaml"
    spec = {"trials": trials, "pruner": "none", "space": SPACE, **tune}
    search.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "sample.yaml"), "tune": spec}))
    outs = [f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache")]
    paths = [f"paths.data_root={tiny_root}", f"paths.folds={work / 'folds.csv'}", *outs]
    return search, [*paths, "train.device=cpu", *overrides]


def worker(search: Path, overrides: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tune.py"), "--config", str(search), *overrides],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def study_of(search: Path, overrides: list[str]) -> optuna.Study:
    job = TuneJob.from_config(load_config(search, overrides), search, overrides)
    return optuna.load_study(study_name=job.study, storage=open_storage(job))


def real_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if not t.user_attrs.get("over_budget")]


def check_all_finished_once(study: optuna.Study, trials: int) -> None:
    """Every trial finished, none ran twice: the folds trained add up to 2 per distinct run (k=2)."""
    done = real_trials(study)
    assert [t.state for t in done] == [TrialState.COMPLETE] * trials
    runs = {t.user_attrs["run_id"] for t in done}
    assert sum(t.user_attrs["folds_trained"] for t in done) == 2 * len(runs)
    assert all(0 <= t.value <= 1 for t in done)


def test_two_workers_share_one_sqlite_study(tiny_root, tmp_path):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=4)
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [worker(search, overrides, log=log) for log in logs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    study = study_of(search, overrides)
    check_all_finished_once(study, 4)
    printed = "".join(log.read_text() for log in logs)
    assert "best so far" in printed and "[tune search] trial" in printed
    page = tmp_path / "reports" / "tune" / "search" / "index.html"
    text = page.read_text()
    assert "history.png" in text and "intermediate.png" in text
    assert f"Best config: <code>{tmp_path / 'search_best.yaml'}</code>" in text
    assert "From 4 finished trial(s): with fewer than 20, importances are noise as often as signal" in text
    assert f"make tune-dashboard TUNE={search} DATA={tiny_root}" in text
    assert study.metric_names == ["CV macro F1 (nested)"], "the dashboard names the value"
    best = max(real_trials(study), key=lambda t: t.value)
    best_file = tmp_path / "search_best.yaml"
    cfg = load_config(best_file, [o for o in overrides if o.startswith("paths.")])
    assert open_run(cfg, run_manifest(Context(cfg)), write=False).run_id == best.user_attrs["run_id"]
    assert (cfg.train.lr, cfg.train.weight_decay) == (best.params["train.lr"], best.params["train.weight_decay"])


def test_a_repeated_configuration_trains_nothing(tiny_root, tmp_path):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=2)
    cfg = load_config(search, overrides)
    job = TuneJob.from_config(cfg, search, overrides)
    study = optuna.create_study(study_name=job.study, storage=job.storage, direction="maximize")
    for _ in range(2):
        study.enqueue_trial({"train.lr": 0.003, "train.weight_decay": 0.0})
    optimise(job.cfg, job)
    first, second = real_trials(study_of(search, overrides))
    assert first.user_attrs["run_id"] == second.user_attrs["run_id"]
    assert (first.user_attrs["folds_trained"], second.user_attrs["folds_trained"]) == (2, 0)
    assert first.value == second.value


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_killed_worker_leaves_no_trial_running(tiny_root, tmp_path):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=2, heartbeat_s=1)
    proc = worker(search, overrides, log=tmp_path / "killed.log")
    fold0 = tmp_path / "models" / "sample"
    wait_for(lambda: any(fold0.glob("*/fold0/metrics.csv")) or any(fold0.glob("*/fold0/config.yaml")), 300, "fold 0")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # past the grace period of two missed heartbeats
    again = worker(search, overrides, log=tmp_path / "restart.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "restart.log").read_text()[-2000:]
    trials = real_trials(study_of(search, overrides))
    states = [t.state for t in trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 2
    killed = next(t for t in trials if t.state == TrialState.FAIL)
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].params == killed.params and retried[0].state == TrialState.COMPLETE


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server in a temporary folder, run as the `postgres` system user (the server refuses root);
    the folder lies outside pytest's (which only root may enter)."""
    bindir = postgres_bin()
    if bindir is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server absent: apt-get install postgresql (.ci/run does)")
    home = Path(tempfile.mkdtemp(prefix="maskcomp-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(home, "postgres")
    port, data = free_port(), home / "data"
    run = lambda *cmd: subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "start",
        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1")  # fmt: skip
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tune")
        yield f"postgresql://postgres@127.0.0.1:{port}/tune"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tiny_root, tmp_path, postgres, monkeypatch):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=4)
    env = {"TUNE_STORAGE": postgres}
    logs = [tmp_path / f"pg_worker{i}.log" for i in range(2)]
    procs = [worker(search, overrides, env=env, log=log) for log in logs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert not (tmp_path / "models" / "tune").exists() or not any((tmp_path / "models" / "tune").glob("*.db"))
    monkeypatch.setenv("TUNE_STORAGE", postgres)
    check_all_finished_once(study_of(search, overrides), 4)


def test_two_workers_share_a_journal_file_study(tiny_root, tmp_path, monkeypatch):
    """No database server: the study is an append-only journal file on a (shared) filesystem."""
    search, overrides = tune_setup(tiny_root, tmp_path, trials=4)
    journal = tmp_path / "shared" / "studies" / "search.log"
    env = {"TUNE_STORAGE": f"journal://{journal}"}
    logs = [tmp_path / f"journal_worker{i}.log" for i in range(2)]
    procs = [worker(search, overrides, env=env, log=log) for log in logs]
    assert [p.wait(timeout=600) for p in procs] == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert journal.stat().st_size > 0 and not (tmp_path / "models" / "tune").exists()
    printed = "".join(log.read_text() for log in logs)
    assert printed.count("[tune search] trial") == 4 and "best so far" in printed
    monkeypatch.setenv("TUNE_STORAGE", f"journal://{journal}")
    check_all_finished_once(study_of(search, overrides), 4)


def test_an_unwritable_journal_folder_is_one_line(tiny_root, tmp_path, monkeypatch):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=1)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the journal's folder would be\n")
    monkeypatch.setenv("TUNE_STORAGE", f"journal://{blocker}/search.log")
    job = TuneJob.from_config(load_config(search, overrides), search, overrides)
    with pytest.raises(MaskcompError, match=r"^tune storage journal://.*not_a_folder/search.log: cannot write it"):
        open_storage(job)


def test_a_postgresql_worker_keeps_a_small_pool_of_checked_connections(tiny_root, tmp_path, postgres, monkeypatch):
    search, overrides = tune_setup(tiny_root, tmp_path, trials=1)
    monkeypatch.setenv("TUNE_STORAGE", postgres)
    storage = open_storage(TuneJob.from_config(load_config(search, overrides), search, overrides))
    pool = storage.engine.pool
    assert (pool.size(), pool._max_overflow, pool._pre_ping) == (2, 1, True)


def test_pruning_stops_a_trial_after_a_poor_fold(tiny_root, tmp_path, monkeypatch):
    """The objective's fold loop against the median pruner, with training stubbed to fixed fold scores: a trial whose
    first fold is below the reference's is stopped there, and its trained fold is kept in the study's record."""
    search, overrides = tune_setup(tiny_root, tmp_path, trials=2, pruner="median", startup_trials=1)
    fold_f1 = {0.003: 0.8, 0.001: 0.2}
    calls = []

    def fake_train(ctx, folds, wait, as_latest=True):
        calls.append((ctx.cfg.train.lr, folds))
        return [{"best_f1": fold_f1[ctx.cfg.train.lr], "trained_now": True}]

    monkeypatch.setattr("maskcomp.tune.study.train", fake_train)
    monkeypatch.setattr("maskcomp.tune.study.nested_cv", lambda cfg, ref: fold_f1[cfg.train.lr])
    cfg = load_config(search, overrides)
    job = TuneJob.from_config(cfg, search, overrides)
    study = optuna.create_study(study_name=job.study, storage=job.storage, direction="maximize")
    study.enqueue_trial({"train.lr": 0.003, "train.weight_decay": 0.0})
    study.enqueue_trial({"train.lr": 0.001, "train.weight_decay": 0.0})
    optimise(job.cfg, job)
    first, second = real_trials(study_of(search, overrides))
    assert (first.state, first.value, first.user_attrs["folds_done"]) == (TrialState.COMPLETE, 0.8, 2)
    assert (second.state, second.user_attrs["folds_done"], second.user_attrs["folds_trained"]) == (
        TrialState.PRUNED,
        1,
        1,
    )
    assert calls == [(0.003, [0]), (0.003, [1]), (0.001, [0])]


def test_the_dashboard_shows_a_live_study_in_chromium_and_refuses_a_missing_one(tiny_root, tmp_path, browser):
    """make tune-dashboard: optuna-dashboard over the study's own SQLite file on 127.0.0.1; a trial added while the
    page is open appears; a study not started yet is one line naming the command that starts it."""
    import threading

    import requests
    from selenium.webdriver.support.ui import WebDriverWait

    from maskcomp.tune.dashboard import dashboard_server

    cfg = config_for(tiny_root, tmp_path)
    with pytest.raises(MaskcompError, match=r"no study 'sample' in sqlite:.*make tune TUNE=configs/tune/sample.yaml"):
        dashboard_server(cfg, "configs/tune/sample.yaml")
    assert not list((tmp_path / "models").rglob("*.db")), "a refused dashboard creates no empty study"

    study = optuna.create_study(
        study_name="sample", storage=TuneJob.from_config(cfg, "configs/tune/sample.yaml").storage
    )
    study.enqueue_trial({"train.lr": 0.001})
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-4, 1e-2, log=True) * 100, n_trials=2)
    server = dashboard_server(cfg, "configs/tune/sample.yaml")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        assert host == "127.0.0.1"
        studies = requests.get(f"http://{host}:{port}/api/studies", timeout=10).json()["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("sample", ["minimize"])]
        url, body = f"http://{host}:{port}/", lambda b: b.find_element("tag name", "body").text
        browser.set_window_size(1400, 1000)
        browser.get(url + "dashboard")
        WebDriverWait(browser, 30).until(lambda b: "sample" in body(b) and "MINIMIZE" in body(b))
        browser.get(url + f"dashboard/studies/{studies[0]['study_id']}")
        WebDriverWait(browser, 30).until(lambda b: "train.lr" in body(b) and "Hyperparameter Importance" in body(b))
        study.optimize(lambda t: 42.0 + t.suggest_float("train.lr", 1e-4, 1e-2, log=True), n_trials=1)
        api = url + f"api/studies/{studies[0]['study_id']}?after=0"
        served = lambda _: requests.get(api, timeout=10).json()["trials"]  # noqa: E731
        trials = WebDriverWait(browser, 30, 1).until(lambda b: len(served(b)) == 3 and served(b))  # a cache of seconds
        assert trials[-1]["values"][0] > 42, "a trial finished while the page is open is served"
    finally:
        server.shutdown()
        server.server_close()
