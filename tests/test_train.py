import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core import labels
from maskcomp.core.errors import MaskcompError
from maskcomp.core.settings import ModelSettings
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.train.models import create_model, probs18
from maskcomp.train.trainer import train

from conftest import TINY_TRAIN, config_for, fold_dir

pytestmark = pytest.mark.slow  # trains or runs whole stages

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_cfg(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path, *TINY_TRAIN, "train.epochs=2")
    crop_faces(cfg)
    make_folds(cfg)
    return cfg


def test_run_writes_every_file(tiny_cfg):
    result = train(tiny_cfg, folds=[0])[0]
    run = fold_dir(tiny_cfg, 0)
    for name in ("best.pt", "last.pt", "config.yaml", "env.json", "metrics.csv", "oof.csv", "done.json"):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    for col in ("train_loss", "val_loss", "f1", "f1_mask", "f1_gender", "f1_age", "acc", "lr", "images_per_s"):
        assert metrics[col].notna().all(), col
    oof = pd.read_csv(run / "oof.csv")
    assert np.allclose(oof[[f"p{i}" for i in range(18)]].sum(axis=1), 1, atol=1e-4)
    assert np.allclose(oof[["mask_p0", "mask_p1", "mask_p2"]].sum(axis=1), 1, atol=1e-4)
    assert oof["fold"].eq(0).all() and result["best_f1"] == pytest.approx(metrics["f1"].max())
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 42 and "torch" in env["versions"]
    # a second call skips the finished fold
    before = (run / "last.pt").stat().st_mtime_ns
    train(tiny_cfg, folds=[0])
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_multi_head_product_maps_to_18_labels():
    g = torch.Generator().manual_seed(0)
    outputs = {
        "mask": torch.randn(5, 3, generator=g),
        "gender": torch.randn(5, 2, generator=g),
        "age": torch.randn(5, 3, generator=g),
    }
    p = probs18(outputs)
    assert p.shape == (5, 18) and torch.allclose(p.sum(1), torch.ones(5))
    pm, pg, pa = (outputs[k].softmax(1) for k in ("mask", "gender", "age"))
    for m, gd, a in [(0, 0, 0), (1, 1, 2), (2, 0, 1)]:
        assert torch.allclose(p[:, labels.encode(m, gd, a)], pm[:, m] * pg[:, gd] * pa[:, a])
    marg = labels.head_probs_from_18(p.numpy())
    assert np.allclose(marg["age"], pa.numpy(), atol=1e-6)


def test_single_head_model_shape():
    model = create_model(
        ModelSettings(backbone="mobilenetv3_small_050", pretrained=False, head="single", drop_rate=0.0)
    )
    out = model(torch.randn(2, 3, 48, 36))
    assert set(out) == {"label"} and out["label"].shape == (2, 18)


@pytest.mark.parametrize(
    "override,pattern",
    [
        ("model.backbone=resnet_nonexistent", "not a timm model"),
        ("loss.terms=[{name: hinge, weight: 1}]", "unknown loss 'hinge'"),
    ],
)
def test_bad_config_values_fail_with_one_line(tiny_cfg, tiny_root, tmp_path, override, pattern):
    cfg = config_for(tiny_root, tmp_path, *TINY_TRAIN, "train.epochs=1", override)
    with pytest.raises(MaskcompError, match=pattern) as err:
        train(cfg, folds=[0])
    assert "\n" not in str(err.value)


def test_bad_config_via_cli_prints_one_line(tiny_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", "configs/sample.yaml", "model.backbonee=x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: override 'model.backbonee=x': unknown config key 'model.backbonee'; "
        "known keys here: backbone, drop_rate, freeze_backbone_epochs, head, pretrained"
    ]


def _cli(cfg_overrides: list[str], *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", "configs/sample.yaml", *cfg_overrides, *extra]


def _overrides(root: Path, work: Path, epochs: int) -> list[str]:
    outs = [f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache")]
    return [
        f"paths.data_root={root}",
        f"paths.folds={work / 'folds.csv'}",
        *outs,
        *TINY_TRAIN,
        f"train.epochs={epochs}",
    ]


def test_resume_after_kill_matches_uninterrupted_run(tiny_cfg, tiny_root, tmp_path):
    work = Path(tiny_cfg.paths.models).parent
    # persistent DataLoader workers: their base seed must not come from (and shift) the global RNG
    # threads pinned: a thread count chosen from the machine's load may differ between the runs, and with it the sums
    args = [*_overrides(tiny_root, work, epochs=4), "train.workers=2", "model.drop_rate=0.5", "train.threads=2"]
    straight = subprocess.run(
        _cli(args, "paths.models=" + str(work / "straight"), "--fold", "0"), cwd=ROOT, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_runs = work / "killed"
    proc = subprocess.Popen(
        _cli(args, f"paths.models={killed_runs}", "--fold", "0"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (
        (m := next(killed_runs.glob("sample/*/fold0/metrics.csv"), None)) and len(pd.read_csv(m)) >= 2
    ):
        time.sleep(0.05)
    metrics = next(killed_runs.glob("sample/*/fold0/metrics.csv"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (metrics.parent / "done.json").exists(), "run finished before it could be killed"
    resumed = subprocess.run(
        _cli(args, f"paths.models={killed_runs}", "--fold", "0", "--resume"), cwd=ROOT, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    cols = ["epoch", "train_loss", "val_loss", "f1", "f1_mask", "f1_gender", "f1_age", "acc", "lr"]
    a = pd.read_csv(next((work / "straight").glob("sample/*/fold0/metrics.csv")))[cols]
    b = pd.read_csv(metrics)[cols]
    assert len(a) == 4
    pd.testing.assert_frame_equal(a, b)
    # every step's learning rate once, in order, across the kill (no epoch lost or logged twice)
    lr_a = pd.read_csv(next((work / "straight").glob("sample/*/fold0/lr.csv")))
    lr_b = pd.read_csv(metrics.with_name("lr.csv"))
    assert lr_a["epoch"].is_monotonic_increasing and lr_a["epoch"].max() >= 3
    pd.testing.assert_frame_equal(lr_a, lr_b)


def test_ddp_two_gloo_processes(tiny_cfg, tiny_root):
    """Ranks see disjoint samples, draw different dropout seeds, report the same (reduced) loss and end with
    identical weights, also when the first epoch freezes the backbone; the CLI run writes rank 0's files."""
    work = Path(tiny_cfg.paths.models).parent
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*_overrides(tiny_root, work, epochs=2), "model.freeze_backbone_epochs=1", "model.drop_rate=0.5"]
    probe = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "ddp_probe.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    ranks = json.loads(next(line for line in probe.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"]
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    padding = len(seen0) + len(seen1) - len(set(seen0) | set(seen1))
    assert len(seen0) == len(seen1) and padding <= 1, "ranks trained on the same samples (beyond the sampler's padding)"
    assert ranks[0]["draw"] != ranks[1]["draw"], "ranks drew the same dropout/augmentation seeds"
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9), "ranks ended with different weights"
    assert ranks[0]["losses"] == ranks[1]["losses"], "the logged loss is not reduced over ranks"
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "train.py"),
            "--config",
            "configs/sample.yaml",
            *_overrides(tiny_root, work, epochs=1),
            f"paths.models={work / 'ddp'}",
            "--fold",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold1 = next((work / "ddp").glob("sample/*/fold1"))
    env_json = json.loads((fold1 / "env.json").read_text())
    assert env_json["world_size"] == 2
    assert len(pd.read_csv(fold1 / "metrics.csv")) == 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launch: list[str], args: list[str], env: dict) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("torchrun")), *launch, str(ROOT / "train.py"), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_torchrun_nodes_train_what_one_node_with_two_processes_trains(tiny_cfg, tiny_root):
    """Two launchers on 127.0.0.1 as two nodes of one process each (c10d rendezvous, gloo): the same checkpoint and
    OOF as one node with two processes; only global rank 0 writes (on node 1 that process's local rank is 0 too)."""
    work = Path(tiny_cfg.paths.models).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--config", "configs/sample.yaml", "--fold", "1", *_overrides(tiny_root, work, epochs=1)]
    finished(torchrun(["--standalone", "--nproc_per_node=2"], [*args, f"paths.models={work / 'one_node'}"], env))
    rdzv = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    nodes = [
        torchrun(
            [*rdzv, f"--node_rank={rank}", "--rdzv-id=maskcomp-two-nodes"], [*args, f"paths.models={work / 'two'}"], env
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        finished(node)
    one, two = (next((work / name).glob("sample/*/fold1")) for name in ("one_node", "two"))
    assert one.parent.name == two.parent.name  # the same run id: the node layout is not part of what a run is
    weights = [torch.load(d / "best.pt", map_location="cpu", weights_only=False)["model"] for d in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    pd.testing.assert_frame_equal(pd.read_csv(one / "oof.csv"), pd.read_csv(two / "oof.csv"))
    assert json.loads((two / "env.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (work / "two" / "sample").iterdir() if p.is_dir()) == [two.parent.name]
