"""W&B tracking in offline mode: what each fold's run wrote (config, per-step and per-epoch history, summary), read
back from its transaction log, and no prompt or network without a login."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.runs import resolve_run
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

BLOCK = 32768  # the log's block size (LevelDB's log format, which W&B's .wandb files use)
HEADER = 7  # ":W&B", a 2-byte magic number, a version byte


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of an offline run's .wandb file: chunks of (crc32, length, type) + data in 32 KiB blocks; a
    record split over blocks comes as FIRST, MIDDLE..., LAST."""
    data, pos, records, pending = path.read_bytes(), HEADER, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def items_of(records, kind: str) -> list[dict]:
    out = []
    for r in records:
        if r.WhichOneof("record_type") == kind:
            part = getattr(r, kind)
            items = part.item if kind == "history" else part.update
            out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return out


def test_a_fold_run_is_tracked_offline_with_config_history_and_summary(tiny_root, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="maskcomp.train.track")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no login stored anywhere
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=2", "train.loggers=[wandb]")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg, folds=[0])
    run = resolve_run(cfg.paths.resolved, "sample")
    logs = list((run.dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, "one offline W&B run for the one fold trained"
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B run"))
    assert said.endswith(f" in {logs[0].parent}")  # the folder `wandb sync` takes, not its files/ inside
    records = wandb_records(logs[0])
    meta = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (meta.run_id, meta.display_name, meta.run_group) == (f"{run.run_id}-fold0",) * 2 + ("sample",)
    config = {i.key: json.loads(i.value_json) for i in meta.config.update}  # the run record carries the config
    assert config["run_id"] == run.run_id and config["git_commit"]
    assert config["train"]["lr"] == cfg.train.lr and config["train"]["loggers"] == ["wandb"]
    history = items_of(records, "history")
    epochs = [h for h in history if "epoch/f1" in h]
    assert [h["epoch/epoch"] for h in epochs] == [1, 2]
    assert all({"epoch/f1_mask", "epoch/f1_gender", "epoch/f1_age", "epoch/val_loss"} <= set(h) for h in epochs)
    assert any("train/loss" in h and "train/lr" in h for h in history)
    summary = {k: v for update in items_of(records, "summary") for k, v in update.items()}
    done = json.loads(run.done(0).read_text())
    assert summary["best_f1"] == done["best_f1"] and summary["best_epoch"] == done["best_epoch"]


def test_the_analysis_stage_adds_oof_scores_confusion_and_plots(tiny_root, tmp_path, monkeypatch):
    from maskcomp.analyze.pages import analyze
    from maskcomp.predict.infer import infer

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=1", "train.loggers=[wandb]")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    analyze(cfg)
    run = resolve_run(cfg.paths.resolved, "sample")
    logs = list((run.dir / "wandb").glob(f"offline-run-*-{run.run_id}-analysis/run-*.wandb"))
    assert len(logs) == 1
    records = wandb_records(logs[0])
    summary = {k: v for update in items_of(records, "summary") for k, v in update.items()}
    assert 0 <= summary["oof/f1"] <= 1 and "oof/f1_age" in summary
    logged = {k for h in items_of(records, "history") for k in h}
    assert "oof/confusion_table/_type" in logged and any(k.startswith("plots/confusion_18") for k in logged)
