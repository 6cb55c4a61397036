"""A fair share of a busy CPU: OpenMP threads that sleep instead of spinning when other processes run as a stage
starts (every entry point), and thread counts capped by the container's CPU quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskcomp.core.device import usable_cpus
from maskcomp.core.openmp import choose_wait_policy

ROOT = Path(__file__).resolve().parent.parent


def openmp_spin_count(command: list[str], busy: int = 0, **env: str) -> set[str]:
    """How long torch's OpenMP threads spin before they sleep, as the runtime set it when it loaded in `command`
    (libgomp prints it on request: 0 under the passive wait policy), with `busy` CPU-bound processes beside it."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env={**environ, "OMP_DISPLAY_ENV": "VERBOSE", **env}, capture_output=True, text=True
        )
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.split("=")[1].strip(" '") for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line}


@pytest.mark.slow
def test_an_entry_point_on_a_busy_machine_loads_openmp_with_threads_that_sleep_while_waiting():
    """Every entry point imports maskcomp before torch (tests/test_layout.py checks the root hook imports nothing)."""
    assert openmp_spin_count([sys.executable, "train.py", "--help"], busy=1) == {"0"}
    assert openmp_spin_count([sys.executable, "-c", "import torch"], busy=1) != {"0"}  # torch alone would spin


@pytest.mark.slow
def test_a_wait_policy_the_user_set_is_kept_on_a_busy_machine():
    assert openmp_spin_count([sys.executable, "train.py", "--help"], busy=1, OMP_WAIT_POLICY="ACTIVE") != {"0"}


def loadavg(tmp_path: Path, running: int) -> Path:
    path = tmp_path / "loadavg"
    path.write_text(f"1.50 1.20 0.90 {running}/250 12345\n")
    return path


def test_threads_sleep_only_when_others_run_as_the_process_starts(tmp_path):
    idle, busy = {}, {}
    assert choose_wait_policy(idle, loadavg(tmp_path, 1)) is None and idle == {}  # only this process runs
    assert choose_wait_policy(busy, loadavg(tmp_path, 3)) == "PASSIVE"
    assert busy == {"OMP_WAIT_POLICY": "PASSIVE"}  # in the environment, so workers and ranks inherit it
    for said in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        before = dict(said)
        assert choose_wait_policy(said, loadavg(tmp_path, 5)) is None and said == before
    assert choose_wait_policy({}, tmp_path / "absent") is None


@pytest.mark.parametrize(
    "cpu_max, cap",
    [("150000 100000\n", 2), ("50000 100000\n", 1), ("400000 100000\n", 4), ("max 100000\n", None), ("junk", None)],
)
def test_threads_are_capped_by_the_container_cpu_quota(tmp_path, cpu_max, cap):
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus(quota) == (cpus if cap is None else min(cpus, cap))


def test_no_quota_file_means_the_affinity():
    assert usable_cpus(Path("/nonexistent/cpu.max")) == len(os.sched_getaffinity(0))
