"""What keying stages on content costs: SHA-256 of every image on a first run and the stat-only check of a
repeated run (manifest.DigestCache), and the data layer's image check (header + end marker vs a full decode),
on the shared real-face data (`../shared/data/aaf_masks`, 7,000 images of 384x512), scaled to the
competition's 18,900 images."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.manifests import DigestCache
from maskcomp.data.tables import load_eval, load_train

from common import SHARED_DATA

COMPETITION_IMAGES = 18_900


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run() -> list[dict]:
    if not SHARED_DATA.exists():
        print(f"skipped: {SHARED_DATA} is absent")
        return []
    with tempfile.TemporaryDirectory(prefix="maskcomp-digest-") as tmp:
        cfg = load_config(
            None, [f"paths.data_root={SHARED_DATA}", f"paths.reports={tmp}/reports", "data.image_check=none"]
        )
        ctx = Context(cfg)
        files = list(load_train(ctx)["image_path"]) + list(load_eval(ctx)["image_path"])
        megabytes = sum(Path(f).stat().st_size for f in files) / 2**20
        rows = []
        for label in ("first run (empty cache)", "repeated run (cache hit)"):
            cache = DigestCache(Path(tmp) / "digests.json")
            seconds, _ = _timed(lambda: (cache.digests(files), cache.save()))
            rows.append({"step": f"digest images, {label}", "images": len(files), "MB": megabytes, "seconds": seconds})
        for check in ("none", "header", "decode"):
            checked = updated(cfg, {"data.image_check": check})
            seconds, _ = _timed(lambda: (load_train(Context(checked)), load_eval(Context(checked))))
            rows.append(
                {
                    "step": f"load train+eval, image_check={check}",
                    "images": len(files),
                    "MB": megabytes,
                    "seconds": seconds,
                }
            )
    for row in rows:
        row["ms_per_image"] = 1000 * row["seconds"] / row["images"]
        row["seconds_at_18900"] = row["ms_per_image"] * COMPETITION_IMAGES / 1000
    return rows
