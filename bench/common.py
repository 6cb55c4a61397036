"""Shared bits of the benchmarks: where results go, peak memory, a printed table."""

from __future__ import annotations

import datetime as dt
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from maskcomp.core.fileio import write_json  # noqa: E402
from maskcomp.core.manifests import digest_of, file_digest  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHARED_DATA = ROOT.parent / "shared" / "data" / "aaf_masks"


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of its largest finished child (DataLoader and crop workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def data_fingerprint(data: Path) -> dict[str, str]:
    """Digests of a benchmark's data (its label tables, and every file under train/ and eval/ by relative path), so
    results stored on different days can tell a change of data from a change of code."""
    tables = ["train/train.csv", "eval/info.csv", "eval_answers.csv"]
    files = sorted(p for split in ("train", "eval") for p in (data / split).rglob("*") if p.is_file())
    return {
        **{name: file_digest(data / name)[:16] for name in tables if (data / name).is_file()},
        "all_files": digest_of([(p.relative_to(data).as_posix(), file_digest(p)) for p in files])[:16],
    }


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
