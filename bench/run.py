"""`make bench`: every speed benchmark; prints a table per benchmark and writes bench/results/<name>-<date>.json.

Usage: python bench/run.py [crop train infer make_all digest contention engine]   (no names: all)
"""

from __future__ import annotations

import importlib
import sys

from common import print_table, save_results

BENCHES = {  # name -> the modules it runs, each with its own table
    "crop": ("crop_speed",),
    "train": ("train_speed",),
    "infer": ("infer_speed", "engine_speed"),  # TTA views, then the engines side by side
    "make_all": ("make_all_time",),
    "digest": ("digest_speed",),
    "contention": ("contention",),
    "engine": ("engine_speed",),
}


def main(names: list[str]) -> None:
    for name in names or [n for n in BENCHES if n != "engine"]:
        for module in BENCHES[name]:
            rows = importlib.import_module(module).run()
            result = name if len(BENCHES[name]) == 1 else module.removesuffix("_speed")  # infer.json, engine.json
            print(f"\n== {result}")
            print_table(rows)
            print(f"wrote {save_results(result, rows)}")


if __name__ == "__main__":
    main(sys.argv[1:])
