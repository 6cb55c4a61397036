"""How torch's OpenMP threads wait for each other, decided once per process before torch loads its OpenMP runtime
(which reads the setting once, when it loads). Threads spin while they wait by default: the fastest on an idle
machine, but when other processes take a core away a parallel step waits on a thread that is not running, and runs
several times slower than a serial one. bench/contention.py on 2 cores, training steps of the quality recipe with 2
threads: spinning 100 img/s alone and 16 beside one busy process; sleeping (OMP_WAIT_POLICY=PASSIVE) 75 alone and
51 beside it. So threads sleep when the machine is busy as the process starts, and spin when it is idle. This module
imports nothing heavy: maskcomp/__init__.py runs it before anything can import torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

LOADAVG = Path("/proc/loadavg")
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # what the user may have said; never replaced


def others_running(loadavg: Path = LOADAVG) -> int:
    """Tasks other than this process running or ready to run right now (/proc/loadavg's 4th field, which counts
    this process too); 0 where the file does not exist."""
    try:
        running = int(loadavg.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - 1)


def choose_wait_policy(environ: MutableMapping[str, str] = os.environ, loadavg: Path = LOADAVG) -> str | None:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` when other processes are running (children inherit it); the policy
    set, or None where the user chose one or the machine is idle."""
    if any(key in environ for key in USER_KEYS) or others_running(loadavg) == 0:
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"
