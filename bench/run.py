"""`make bench`: every speed benchmark; prints a table per benchmark and writes bench/results/<name>-<date>.json.

Usage: python bench/run.py [crop train infer make_all digest contention engine]   (no names: all)
"""

from __future__ import annotations

import importlib
import sys

from common import print_table, save_results

BENCHES = {
    "crop": "crop_speed",
    "train": "train_speed",
    "infer": "infer_speed",
    "make_all": "make_all_time",
    "digest": "digest_speed",
    "contention": "contention",
    "engine": "engine_speed",
}


def main(names: list[str]) -> None:
    for name in names or list(BENCHES):
        rows = importlib.import_module(BENCHES[name]).run()
        print(f"\n== {name}")
        print_table(rows)
        print(f"wrote {save_results(name, rows)}")


if __name__ == "__main__":
    main(sys.argv[1:])
