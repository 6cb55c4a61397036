"""Progress bars for long loops: one style everywhere, shown by the main process only, and redrawn rarely when
the output is a log file rather than a terminal (a bar per second would bloat it)."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")
TERMINAL_INTERVAL_S = 0.1
LOG_INTERVAL_S = 30.0


def progress(
    items: Iterable[T],
    desc: str,
    rank: int = 0,
    unit: str = "batch",
    total: int | None = None,
    leave: bool = False,
    disable: bool = False,
) -> tqdm:
    """A bar over `items`; none on other ranks than 0, or with `disable` (short loops)."""
    interval = TERMINAL_INTERVAL_S if sys.stderr.isatty() else LOG_INTERVAL_S
    return tqdm(
        items,
        desc=desc,
        unit=unit,
        total=total,
        disable=disable or rank != 0,
        leave=leave,
        mininterval=interval,
        maxinterval=max(interval, 10.0),
        dynamic_ncols=True,
    )
