"""Where computation runs: device choice, process group, mixed-precision dtype, CUDA switches and CPU threads,
for training and inference."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import MaskcompError
from .settings import TrainSettings

log = logging.getLogger(__name__)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """auto -> CUDA when present, else CPU; `key` names the config entry in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaskcompError(f"{key}={name} but CUDA is not available here; use {key}=auto or cpu")
    return torch.device(name)


def amp_dtype_of(name: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[name]


def bf16_is_native(device: torch.device) -> bool:
    """Compute capability 8.0+ (Ampere, Hopper) has bf16 units; V100 and T4 would only emulate it, slowly."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp(name: str, device: torch.device, bf16_native: bool | None = None) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, note): bf16 on a GPU without native bf16 falls back to fp16 (with GradScaler); CPU runs fp32."""
    dtype = amp_dtype_of(name)
    if device.type != "cuda" or dtype != torch.bfloat16:
        return dtype, ""
    if bf16_native if bf16_native is not None else bf16_is_native(device):
        return dtype, ""
    return (
        torch.float16,
        "train.amp=bf16 but this GPU has no native bf16 (compute capability < 8): using fp16 with GradScaler",
    )


def autocast(device: torch.device, amp_dtype):
    """bf16/fp16 autocast on CUDA; CPU always runs fp32."""
    if device.type == "cuda" and amp_dtype is not None:
        return torch.autocast("cuda", dtype=amp_dtype)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Placement:
    """This process's share of a (possibly distributed) run."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(device_name: str) -> Placement:
    """Rank, world size and device; under torchrun starts the process group: NCCL when this run's device is CUDA
    (one GPU per local rank), gloo otherwise, so train.device=cpu on a GPU host stays on gloo."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Placement(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Placement(device, dist.get_rank(), world)


def configure_cuda(train_cfg: TrainSettings, device: torch.device) -> dict:
    """cuDNN autotuning and TF32 matmul/convolutions (train.cudnn_benchmark, train.tf32) on CUDA; what was set."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = bool(train_cfg.cudnn_benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(train_cfg.tf32)
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": bool(train_cfg.tf32),
        "gpu": torch.cuda.get_device_name(device),
        "capability": list(torch.cuda.get_device_capability(device)),
    }


def configure_threads(threads: int) -> int:
    """Intra-op threads of this process: `threads` when > 0, OMP_NUM_THREADS when set, else one per usable CPU that
    other processes are not keeping busy. Measured on 2 cores (`make bench ARGS=contention`, training steps of the
    quality recipe): beside one busy process, 1 thread keeps 0.59 of the 2-thread speed alone, 2 threads 0.55 when
    they sleep while waiting (openmp.py) and 0.20 when they spin. Returns the count."""
    if threads > 0:
        count = threads
    elif os.environ.get("OMP_NUM_THREADS"):
        count = torch.get_num_threads()
    else:
        count = choose_threads(usable_cpus(), busy_cpus_of_others())
    torch.set_num_threads(count)
    return count


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" in microseconds, or "max <period>"


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on (its affinity), capped by its container's CPU quota (docker --cpus=1.5 sees
    every core of the host but may use 1.5 of them: threads beyond the quota only wait for each other)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return cpus if quota == "max" else max(1, min(cpus, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        return cpus


def choose_threads(usable_cpus: int, busy_others: float) -> int:
    return max(1, min(usable_cpus, round(usable_cpus - busy_others)))


def busy_cpus_of_others(window_s: float = 0.3) -> float:
    """How many CPUs other processes kept busy over a short window (system-wide busy time minus this process's),
    from /proc/stat; 0 where that file does not exist."""

    def busy_and_total() -> tuple[float, float]:
        with open("/proc/stat") as fh:
            values = [float(v) for v in fh.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = busy_and_total()
        own0, t0 = sum(os.times()[:2]), time.perf_counter()
        time.sleep(window_s)
        busy1, total1 = busy_and_total()
        own1, t1 = sum(os.times()[:2]), time.perf_counter()
    except OSError:
        return 0.0
    cpus = os.cpu_count() or 1
    busy = cpus * (busy1 - busy0) / max(total1 - total0, 1e-9)
    return max(0.0, busy - (own1 - own0) / max(t1 - t0, 1e-9))
