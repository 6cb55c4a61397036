"""Hard cases of the experiment loop's state (issue 30): which run a plain `make infer` uses after a search, what a
refit or a vote may overwrite, what `make clean` deletes, and runs that are not whole."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from maskcomp.core.config import load_config, updated
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.train.refit import refit
from maskcomp.train.trainer import train
from maskcomp.tune.study import TuneJob, optimise

from conftest import TINY_MODEL, config_for, latest

ROOT = Path(__file__).resolve().parent.parent
TINY = (*TINY_MODEL, "infer.batch_size=32", "infer.tta=[identity]", "ensemble.stamped_copy=false")


def tiny_run(tiny_root: Path, work: Path, *overrides: str):
    """Crops, folds and a trained run (both folds) of the tiny data under `work`; its config."""
    cfg = config_for(tiny_root, work, *TINY, *overrides)
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    return cfg


def write_search(work: Path, space: dict, trials: int) -> Path:
    search = work / "search.yaml"
    spec = {"trials": trials, "pruner": "none", "space": space}
    search.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "sample.yaml"), "tune": spec}))
    return search


def search_overrides(tiny_root: Path, work: Path, *extra: str) -> list[str]:
    outs = [f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache")]
    paths = [f"paths.data_root={tiny_root}", f"paths.folds={work / 'folds.csv'}", *outs]
    return [*paths, "train.device=cpu", *TINY, *extra]


# 4. a search leaves `latest` alone


@pytest.mark.slow
def test_a_search_does_not_move_the_run_make_infer_uses(tiny_root, tmp_path):
    cfg = tiny_run(tiny_root, tmp_path, "train.epochs=1")
    mine = latest(cfg).run_id
    overrides = search_overrides(tiny_root, tmp_path, "train.epochs=1")
    search = write_search(tmp_path, {"train.lr": {"choices": [0.0123, 0.0234]}}, trials=2)
    job = TuneJob.from_config(load_config(search, overrides), search, overrides)
    study = optimise(job.cfg, job)
    trial_runs = {t.user_attrs["run_id"] for t in study.get_trials()}
    assert trial_runs and mine not in trial_runs, "the trials trained runs of their own"
    assert latest(cfg).run_id == mine, "a plain make infer still uses the run the user trained"
    infer(cfg)
    side = json.loads(ensemble(cfg).with_suffix(".json").read_text())
    assert side["summary"]["runs"] == [f"sample@{mine}"]


# 6. a setting in ARGS that the space searches


def test_a_setting_both_in_args_and_in_the_space_is_refused(tiny_root, tmp_path):
    overrides = search_overrides(tiny_root, tmp_path, "train.img_size=[48,36]")
    search = write_search(tmp_path, {"train.img_size": {"choices": [[64, 48], [96, 72]]}}, trials=2)
    job = TuneJob.from_config(load_config(search, overrides), search, overrides)
    with pytest.raises(
        MaskcompError, match=r"tune.space.train.img_size: also set in ARGS \(train.img_size=\[48, ?36\]\)"
    ):
        optimise(job.cfg, job)
    assert not (tmp_path / "models" / "sample").exists(), "no trial trained"


# 10. a trial that fails, and a search whose every trial would fail


@pytest.mark.slow
def test_a_failure_that_no_searched_setting_causes_stops_the_search_in_one_line(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY)
    crop_faces(cfg)
    make_folds(cfg)
    overrides = search_overrides(tiny_root, tmp_path, "train.epochs=1", "train.drop_age_bands=[[0,120]]")
    search = write_search(tmp_path, {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}}, trials=4)
    done = subprocess.run(
        [sys.executable, "tune.py", "--config", str(search), *overrides], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "[tune search] trial 0: failed: fold 0: no training image is left" in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "names none of the searched settings (train.lr)" in errors[0]
    job = TuneJob.from_config(load_config(search, overrides), search, overrides)
    trials = optuna.load_study(study_name=job.study, storage=job.storage).get_trials()
    assert len(trials) == 1, "the search stopped after the first failure"


# 1. and 8. refit


@pytest.mark.slow
def test_a_second_refit_keeps_the_first_and_the_ensemble_names_its_models(tiny_root, tmp_path):
    cfg = tiny_run(tiny_root, tmp_path, "train.epochs=1")
    run, (first,) = refit(updated(cfg, {"refit.epochs": 2}))
    first_bytes = first.best.read_bytes()
    _, (second,) = refit(updated(cfg, {"refit.epochs": 1}))
    assert second.dir != first.dir and first.best.read_bytes() == first_bytes, "the first refit model is untouched"
    assert len(pd.read_csv(second.metrics)) == 1
    one_epoch = updated(cfg, {"refit.epochs": 1, "ensemble.models": "refit"})
    infer(one_epoch)
    side = json.loads(ensemble(one_epoch).with_suffix(".json").read_text())
    assert f"{run.label} refit/{second.dir.name} averaged" in side["summary"]["eval_models"]
    with pytest.raises(MaskcompError, match=r"no such refit model \(refit.seeds=2"):
        ensemble(updated(one_epoch, {"refit.seeds": 2}))


@pytest.mark.slow
def test_a_refit_of_a_run_with_a_fold_left_to_train_is_refused_unless_asked(tiny_root, tmp_path, caplog):
    cfg = config_for(tiny_root, tmp_path, *TINY, "train.epochs=1")
    crop_faces(cfg)
    make_folds(cfg)
    train(updated(cfg, {"train.folds": [0]}))
    with pytest.raises(MaskcompError, match=r"fold\(s\) 1 of 2 not trained, so the refit's epoch count"):
        refit(cfg)
    with caplog.at_level(logging.INFO):
        refit(updated(cfg, {"partial_run": True}))
    assert "of fold(s) 0 (1 of 2 folds)" in caplog.text
    assert "refit seed 0 done: 1 epochs" in caplog.text and "best macro F1 -1" not in caplog.text


# 5. a run with a missing fold


@pytest.mark.slow
def test_a_run_with_a_missing_fold_is_not_submitted_unless_asked(tiny_root, tmp_path):
    cfg = tiny_run(tiny_root, tmp_path, "train.epochs=1", "ensemble.stamped_copy=true")
    infer(cfg)
    run = latest(cfg)
    for path in sorted(run.fold_dir(1).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    run.fold_dir(1).rmdir()
    subs = cfg.paths.resolved.submissions
    with pytest.raises(MaskcompError, match=r"fold\(s\) 1 of 2 not trained .*`make train infer ensemble"):
        ensemble(cfg)
    assert not any(subs.glob("*.csv")), "nothing submitted"
    out = ensemble(updated(cfg, {"partial_run": True}))
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["summary"]["missing_folds"] == {run.label: [1]}
    assert [p.name for p in subs.glob("sample_partial_cv*.csv")], "the stamped name says the run is partial"


# 2. and 9. votes


def submission_files(cfg, names: dict[str, int]) -> list[str]:
    """Submissions (every row the given class) with sidecars, under the config's submissions folder."""
    subs = cfg.paths.resolved.submissions
    subs.mkdir(parents=True, exist_ok=True)
    ids = pd.read_csv(cfg.paths.resolved.eval_csv, dtype=str)["ImageID"]
    for name, answer in names.items():
        pd.DataFrame({"ImageID": ids, "ans": answer}).to_csv(subs / f"{name}.csv", index=False)
        summary = {"cv_macro_f1": 0.5, "runs": [f"{name}@run"]}
        (subs / f"{name}.json").write_text(json.dumps({"summary": summary}))
    return [str(subs / f"{name}.csv") for name in names]


def test_a_vote_is_never_written_over_one_of_its_inputs(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path)
    files = submission_files(cfg, {"sample": 1, "b": 2, "c": 2})
    before = Path(files[0]).read_bytes()
    with pytest.raises(MaskcompError, match=r"sample.csv: the vote would be written over this file"):
        ensemble(updated(cfg, {"ensemble.vote": files, "ensemble.name": "sample"}))
    assert Path(files[0]).read_bytes() == before


def test_a_vote_over_another_submission_keeps_that_one(tiny_root, tmp_path, caplog):
    cfg = config_for(tiny_root, tmp_path)
    files = submission_files(cfg, {"a": 1, "b": 2, "c": 3, "vote": 5})
    earlier = Path(files[3]).read_bytes()
    out = ensemble(updated(cfg, {"ensemble.vote": files[:3]}))
    kept = list(out.parent.glob("vote_replaced_*.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == earlier and kept[0].with_suffix(".json").exists()
    assert "held the submission of vote@run" in caplog.text
    assert pd.read_csv(out)["ans"].tolist() != pd.read_csv(kept[0])["ans"].tolist()


def test_a_vote_that_lists_a_file_twice_or_a_copy_is_refused(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path)
    a, b = submission_files(cfg, {"a": 1, "b": 2})
    with pytest.raises(MaskcompError, match="is listed twice or has the same content"):
        ensemble(updated(cfg, {"ensemble.vote": [a, b, a]}))
    copy = Path(a).with_name("a_copy.csv")
    copy.write_bytes(Path(a).read_bytes())
    with pytest.raises(MaskcompError, match=r"a_copy.csv is listed twice or has the same content as .*a.csv"):
        ensemble(updated(cfg, {"ensemble.vote": [a, b, str(copy)]}))


# 3. make clean


def plant_work(work: Path) -> dict[str, list[Path]]:
    """A work tree with regenerable files and person-made ones."""
    regenerable = [
        work / "models" / "sample" / "abc" / "fold0" / "best.pt",
        work / "models" / "sample" / "abc" / "label_fix_candidates.csv",
        work / "models" / "sample" / "latest",
        work / "crops" / "crop-1" / "records.csv",
        work / "reports" / "index.html",
        work / "cache" / "digests.json",
        work / "folds.csv",
        work / "folds.manifest.json",
    ]
    made = [
        work / "models" / "sample" / "abc" / "review_decisions.csv",
        work / "models" / "sample" / "abc" / "label_fixes_reviewed.csv",
        work / "models" / "tune" / "search.db",
        work / "submissions" / "sample.csv",
        work / "submissions" / "sample.json",
    ]
    for path in regenerable + made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return {"regenerable": regenerable, "made": made}


def make_clean(tiny_root: Path, work: Path, target: str) -> str:
    args = " ".join(f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache"))
    done = subprocess.run(
        ["make", "--no-print-directory", target, "SKIP_SETUP=1", f"DATA={tiny_root}", f"PY={sys.executable}",
         f"ARGS={args} paths.folds={work / 'folds.csv'}"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_make_clean_keeps_review_decisions_studies_and_submissions(tiny_root, tmp_path):
    planted = plant_work(tmp_path)
    line = make_clean(tiny_root, tmp_path, "clean")
    assert not any(p.exists() for p in planted["regenerable"])
    assert all(p.exists() for p in planted["made"])
    assert "removed 8 regenerable files" in line and "2 review file(s), 1 study file(s), 2 submission file(s)" in line
    assert "make clean-everything" in line
    line = make_clean(tiny_root, tmp_path, "clean-everything")
    assert not any(p.exists() for p in planted["made"])
    assert "removed 5 files, among them 2 review file(s), 1 study file(s), 2 submission file(s)" in line
    assert (ROOT / "folds" / "make_folds.py").exists()


# 11. W&B online without a key or a server


def closed_port() -> int:
    """A local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """No key (no WANDB_API_KEY, no ~/.netrc) and a W&B server address that nothing answers on."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")


def test_wandb_online_without_a_key_or_a_server_stops_before_training(tiny_root, tmp_path, monkeypatch, no_wandb_login):
    cfg = config_for(tiny_root, tmp_path, *TINY, "train.loggers=[wandb]", "train.wandb_mode=online")
    with pytest.raises(MaskcompError, match=r"no W&B API key .*run `wandb login`, or set train.wandb_mode=offline"):
        train(cfg)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with pytest.raises(MaskcompError, match=r"cannot reach W&B at http://127.0.0.1:\d+ .*train.wandb_mode=offline"):
        train(cfg)
    assert not (tmp_path / "models").exists(), "nothing trained or written"


def test_wandb_auto_with_a_key_but_no_server_tracks_offline(monkeypatch, no_wandb_login, caplog):
    from maskcomp.train.track import wandb_mode

    monkeypatch.setenv("WANDB_API_KEY", "y" * 40)
    cfg = load_config(None, ["train.loggers=[wandb]"])
    assert wandb_mode(cfg) == "offline"
    assert "cannot be reached" in caplog.text


# 14. Ctrl-C


@pytest.mark.slow
def test_ctrl_c_during_training_prints_one_line_and_exits_130(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY)
    crop_faces(cfg)
    make_folds(cfg)
    overrides = search_overrides(tiny_root, tmp_path, "train.epochs=200", "train.patience=200")  # never ends early
    proc = subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/sample.yaml", *overrides],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a suite run in the background ignores
    )  # fmt: skip                                                          # SIGINT; its children would inherit that
    seen = ""
    while "epoch 2/200" not in seen:  # the progress bar: training is under way
        chunk = proc.stderr.read(1)
        assert chunk, "train.py ended before training"
        seen += chunk
    proc.send_signal(2)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    assert "Traceback" not in seen + rest and "KeyboardInterrupt" not in rest
    assert rest.strip().splitlines()[-1] == "interrupted; nothing half-written; rerun to continue"
    assert not list((tmp_path / "models").rglob("*.tmp*")), "no temporary file left behind"


# 16. a data root with a space


@pytest.mark.slow
def test_make_with_a_data_root_that_has_a_space(tiny_root, tmp_path):
    data = tmp_path / "my data"
    shutil.copytree(tiny_root, data)
    done = subprocess.run(
        ["make", "--no-print-directory", "eda", "SKIP_SETUP=1", f"DATA={data}", f"PY={sys.executable}",
         f"ARGS=paths.reports={tmp_path / 'reports'}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "reports" / "eda" / "index.html").exists()
