"""Shared bits of the benchmarks: where results go, peak memory, a printed table."""

from __future__ import annotations

import datetime as dt
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maskcomp.core.fileio import write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data" / "aaf_masks"


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of its largest finished child (DataLoader and crop workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def save_results(name: str, rows: list[dict]) -> Path:
    path = RESULTS / f"{name}-{dt.date.today().isoformat()}.json"
    write_json(rows, path)
    return path


def print_table(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    width = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(width[c]) for c in cols))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
