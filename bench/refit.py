"""`make bench-refit`: eval macro F1 of the fold models against refit models (every training person, the folds' best
epoch count) and both, with 90 % person-bootstrap intervals, on the quality recipe's `ours` run.

Needs a kept quality work folder (`python bench/quality.py --recipes ours --work DIR`); the refit models go into
its run. The CV of all three is the fold models' nested CV (refit models have no OOF). The paired difference to the
folds is bootstrapped over the same person draws. Writes bench/results/refit-<date>.json and .md.

Usage: python bench/refit.py --work DIR [--seeds N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from quality import recipe_config

from maskcomp.core.config import updated
from maskcomp.core.fileio import write_json, write_text
from maskcomp.core.metrics import bootstrap_macro_f1, macro_f1
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.train.refit import refit, refit_epochs

from common import RESULTS, SHARED_DATA

MODELS = ("folds", "refit", "both")


def submit(cfg, models: str) -> tuple[pd.DataFrame, dict]:
    path = ensemble(updated(cfg, {"ensemble.models": models, "ensemble.name": f"refit_bench_{models}"}))
    return pd.read_csv(path, dtype={"ImageID": str}), json.loads(path.with_suffix(".json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench/quality.py's --work folder (recipe ours)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not (args.work / "ours" / "models").exists():
        print(f"bench-refit: skipped, no trained `ours` run under {args.work}; run bench/quality.py --work first")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = recipe_config("ours", args.data, args.work / "ours", False, [f"refit.seeds={args.seeds}", *args.set])
    run, _ = refit(cfg)
    infer(cfg)
    answers = pd.read_csv(args.data / "eval_answers.csv", dtype={"ImageID": str, "person_id": str})
    answers = answers.set_index("ImageID")
    rows, draws = {}, {}
    for models in MODELS:
        sub, side = submit(cfg, models)
        y, pred = answers.loc[sub["ImageID"], "ans"].to_numpy(), sub["ans"].to_numpy()
        draws[models] = bootstrap_macro_f1(y, pred, answers.loc[sub["ImageID"], "person_id"].to_numpy())
        rows[models] = {
            "eval_macro_f1": macro_f1(y, pred),
            "eval_90ci": np.percentile(draws[models], [5, 95]).tolist(),
            "cv_macro_f1": side["cv_macro_f1"],
            "eval_models": side["summary"]["eval_models"],
        }
    for models in ("refit", "both"):
        rows[models]["minus_folds_90ci"] = np.percentile(draws[models] - draws["folds"], [5, 95]).tolist()
    result = {"date": dt.date.today().isoformat(), "run": run.label, "seeds": args.seeds,
              "refit_epochs": refit_epochs(cfg, run), "models": rows}  # fmt: skip
    path = args.results / f"refit-{result['date']}.json"
    write_json(result, path)
    write_text(markdown(result), path.with_suffix(".md"))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [
        f"# Refit benchmark {r['date']}",
        "",
        f"Run {r['run']} (configs/quality_ours.yaml on the shared faces, CPU); {r['seeds']} refit seeds, "
        f"{r['refit_epochs']} epochs each (the folds' median best epoch). CV: the fold models' nested CV.",
        "",
        "| eval models | eval macro F1 | 90 % person-bootstrap | minus folds, 90 % (paired) | CV |",
        "|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        diff = " to ".join(f"{x:+.4f}" for x in m["minus_folds_90ci"]) if "minus_folds_90ci" in m else "-"
        ci = " to ".join(f"{x:.4f}" for x in m["eval_90ci"])
        lines.append(f"| {name} | {m['eval_macro_f1']:.4f} | {ci} | {diff} | {m['cv_macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
