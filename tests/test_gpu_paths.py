"""The logic of the GPU paths that a CPU can exercise, the gpu-check orchestration on the CPU, and CUDA-only
checks (skipped, with the reason shown, where there is no GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup

from maskcomp.core.device import Placement, resolve_amp, start_distributed
from maskcomp.core.settings import LossSettings
from maskcomp.gpucheck import run_check, table
from maskcomp.train.losses import Criterion

pytestmark = pytest.mark.slow  # trains or runs whole stages

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bf16_without_native_support_falls_back_to_fp16_with_a_note():
    cuda = torch.device("cuda")
    assert resolve_amp("bf16", cuda, bf16_native=True) == (torch.bfloat16, "")
    dtype, note = resolve_amp("bf16", cuda, bf16_native=False)
    assert dtype == torch.float16 and "no native bf16" in note
    assert resolve_amp("fp16", cuda, bf16_native=False) == (torch.float16, "")
    assert resolve_amp("bf16", torch.device("cpu")) == (torch.bfloat16, "")  # autocast() ignores it on the CPU


def test_single_process_placement_starts_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_distributed("cpu") == Placement(torch.device("cpu"), 0, 1)
    assert not torch.distributed.is_initialized()


def test_label_smoothing_is_applied_once_with_mixup():
    """timm Mixup smooths its soft targets; the loss must not smooth them again."""
    smoothing, classes = 0.1, 18
    loss_cfg = LossSettings(label_smoothing=smoothing)
    criterion = Criterion(loss_cfg, {"label": classes})
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, classes, generator=g)
    hard = torch.randint(0, classes, (8,), generator=g)
    # mix_prob=0: Mixup leaves the images alone but still hands out its smoothed one-hot targets
    mixup = Mixup(mixup_alpha=0.2, prob=0.0, label_smoothing=smoothing, num_classes=classes)
    _, soft = mixup(torch.zeros(8, 3, 4, 4), hard)
    assert float(soft.max()) == pytest.approx(1 - smoothing + smoothing / classes)
    once = F.cross_entropy(logits, hard, label_smoothing=smoothing)
    assert float(criterion({"label": logits}, {"label": soft})) == pytest.approx(float(once), rel=1e-5)
    assert float(criterion({"label": logits}, {"label": hard})) == pytest.approx(float(once), rel=1e-5)


def test_gpu_check_without_cuda_says_so_and_exits_zero():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the message is for machines without one")
    proc = subprocess.run([sys.executable, "gpu_check.py"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("gpu-check: no CUDA device here, nothing to check")


def test_gpu_check_steps_run_on_the_cpu():
    rows = run_check("cpu", ddp_processes=2)
    assert [r.status for r in rows] == ["ok"] * len(rows), table(rows)
    assert [r.step.split(",")[0].split(" (")[0] for r in rows] == [
        "crop",
        "train 1 epoch",
        "train 1 epoch",
        "torchrun DDP x2",
        "infer",
        "ensemble",
    ]
    assert all(r.images_per_s and r.images_per_s > 0 for r in rows[:-1])


@needs_cuda
def test_gpu_check_on_cuda():
    rows = run_check("cuda")
    assert [r.status for r in rows] == ["ok"] * len(rows), table(rows)
    assert all(r.peak_gpu_mb for r in rows if r.step.startswith("train"))
