"""`make bench-tune`: what pruning saves in a search on real faces, and what the search finds against the hand-set
recipe.

configs/tune/quality.yaml around configs/quality_ours.yaml, at folds.k=5 (pruning acts after each fold, so it can
save at most (k-1)/k of a trial; at the quality recipe's k=3 the target of half the compute needs 3 of 4 trials stopped
after their first fold). Trial 0 is the hand-set recipe. Phase 1 is the pruned search (successive halving) within
--minutes; phase 2 replays the same trials, in order, without pruning: the unpruned search of the same trials, whose
folds already trained in phase 1 are reused (content-keyed runs) and whose extra folds are what pruning saved. The
best trial of each phase is compared; the best config and the recipe are scored on eval once, for the record.
Writes bench/results/tune-<date>.json and .md.

Usage: python bench/tune.py [--data DIR] [--work DIR] [--trials N] [--minutes M] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.fileio import write_json, write_text
from maskcomp.core.metrics import macro_f1
from maskcomp.core.settings import value_of
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.runs import open_run
from maskcomp.train.trainer import run_manifest
from maskcomp.tune.page import best_config, write_study_page
from maskcomp.tune.space import search_space
from maskcomp.tune.study import TuneJob, open_storage, optimise

from common import RESULTS, ROOT, SHARED_DATA

SEARCH = ROOT / "configs" / "tune" / "quality.yaml"
K = 5


def phase(search: Path, overrides: list[str], queue: list[dict]) -> tuple[optuna.Study, float, TuneJob]:
    """One search: its trials queued first (`queue`), then sampled ones; returns the study and its wall time."""
    cfg = load_config(search, overrides)
    job = TuneJob.from_config(cfg, search, overrides)
    storage = open_storage(job)
    study = optuna.create_study(study_name=job.study, storage=storage, direction="maximize", load_if_exists=True)
    for params in queue[len(study.get_trials(deepcopy=False)) :]:  # a rerun continues: only the trials it lacks
        study.enqueue_trial(params)
    start = time.perf_counter()
    study = optimise(cfg, job)
    wall = time.perf_counter() - start
    write_study_page(study, job)
    best_config(study, job)
    return study, wall, job


def trials_of(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if not t.user_attrs.get("over_budget") and t.state != TrialState.FAIL]


def summary(study: optuna.Study, wall: float) -> dict:
    trials = trials_of(study)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value)
    return {
        "trials": len(trials),
        "complete": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trial_folds_run": sum(t.user_attrs.get("folds_done", 0) for t in trials),
        "trial_folds_trained": sum(t.user_attrs.get("folds_trained", 0) for t in trials),
        "wall_s": round(wall, 1),
        "best_trial": best.number,
        "best_cv": best.value,
        "best_run": best.user_attrs["run_id"],
        "best_params": best.params,
    }


def eval_score(cfg, answers: pd.Series) -> dict:
    """The pipeline's submission for this config's run (infer with TTA, ensemble with its nested decisions) on eval."""
    cfg = updated(cfg, {"run": open_run(cfg, run_manifest(Context(cfg)), write=False).run_id})
    infer(cfg)
    sub = pd.read_csv(ensemble(cfg), dtype={"ImageID": str})
    side = json.loads(Path(cfg.paths.resolved.submissions / f"{cfg.experiment}.json").read_text())
    return {"cv": side["cv_macro_f1"], "eval_macro_f1": macro_f1(answers.loc[sub["ImageID"]].to_numpy(), sub["ans"])}


def markdown(r: dict) -> str:
    p, u = r["pruned"], r["unpruned"]
    lines = [
        f"# Tuning benchmark {r['date']}",
        "",
        f"Data {r['data']}, {r['device']}; search {r['search']} at folds.k={K}, {p['trials']} trials, "
        f"successive halving after each fold. Phase 2 replays the same trials without pruning.",
        "",
        "| | pruned search | unpruned search of the same trials |",
        "|---|---|---|",
        f"| trial-folds trained | {p['trial_folds_run']} | {u['trial_folds_run']} |",
        f"| wall time (s) | {p['wall_s']:.0f} | {p['wall_s'] + u['wall_s']:.0f} (phase 1 + the folds it skipped) |",
        f"| trials complete / pruned | {p['complete']} / {p['pruned']} | {u['complete']} / {u['pruned']} |",
        f"| best trial (CV) | {p['best_trial']} ({p['best_cv']:.4f}) | {u['best_trial']} ({u['best_cv']:.4f}) |",
        "",
        f"Compute saved by pruning: **{r['folds_saved']:.0%}** of the trial-folds "
        f"({r['wall_saved']:.0%} of the wall time); same best trial found: **{r['same_best']}**.",
        "",
        "| | hand-set recipe (trial 0) | best of the search |",
        "|---|---|---|",
        f"| CV (nested decision, the objective) | {r['recipe_cv']:.4f} | {u['best_cv']:.4f} |",
        f"| submission CV (TTA, grouping, biases) | {r['recipe_eval']['cv']:.4f} | {r['best_eval']['cv']:.4f} |",
        f"| eval macro F1 (once, for the record) | {r['recipe_eval']['eval_macro_f1']:.4f} | "
        f"{r['best_eval']['eval_macro_f1']:.4f} |",
        "",
        f"Best settings: `{json.dumps(u['best_params'])}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskcomp-bench-tune"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=40)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-eval", action="store_true", help="leave out the eval scoring (a quick check)")
    parser.add_argument("--study", default="bench_pruned", help="the pruned search's study (a rerun continues it)")
    args = parser.parse_args(argv)
    if not (args.data / "eval_answers.csv").exists():
        print(f"bench-tune: skipped, no benchmark data at {args.data}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work
    outs = [f"paths.{n}={work / n}" for n in ("crops", "models", "reports", "submissions", "cache")]
    common = [f"paths.data_root={args.data}", f"paths.folds={work / 'folds.csv'}", *outs, f"folds.k={K}", *args.set]
    base = load_config(SEARCH, common)
    crop_faces(base)
    make_folds(base)
    recipe = {d.key: _stored(value_of(base, d.key)) for d in search_space(base)}
    budget = [f"tune.trials={args.trials}", f"tune.minutes={args.minutes}"]
    pruned, wall_p, _ = phase(SEARCH, [*common, *budget, f"tune.study={args.study}"], [recipe])
    queue = [t.params for t in sorted(trials_of(pruned), key=lambda t: t.number)]
    full_args = [*common, f"tune.trials={len(queue)}", "tune.pruner=none", "tune.study=bench_unpruned"]
    unpruned, wall_u, _ = phase(SEARCH, full_args, queue)
    p, u = summary(pruned, wall_p), summary(unpruned, wall_u)
    u["trial_folds_run"] = u["trials"] * K
    answers = pd.read_csv(args.data / "eval_answers.csv", dtype={"ImageID": str}).set_index("ImageID")["ans"]
    best_params = {d.key: d.value(u["best_params"][d.key]) for d in search_space(base)}
    result = {
        "date": dt.date.today().isoformat(),
        "data": str(args.data),
        "device": "CPU, 2 cores",
        "search": str(SEARCH.relative_to(ROOT)),
        "pruned": p,
        "unpruned": u,
        "folds_saved": 1 - p["trial_folds_run"] / u["trial_folds_run"],
        "wall_saved": 1 - p["wall_s"] / (p["wall_s"] + u["wall_s"]),
        "same_best": p["best_run"] == u["best_run"],
        "recipe_cv": next(t.value for t in trials_of(unpruned) if t.params == queue[0]),
    }
    skipped = {"cv": float("nan"), "eval_macro_f1": float("nan")}
    result["recipe_eval"] = skipped if args.skip_eval else eval_score(base, answers)
    result["best_eval"] = skipped if args.skip_eval else eval_score(updated(base, best_params), answers)
    path = args.results / f"tune-{result['date']}.json"
    write_json(result, path)
    write_text(markdown(result), path.with_suffix(".md"))
    print(markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def _stored(value):
    """A setting's value as the study stores it (list or mapping choices as their YAML text)."""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return value


if __name__ == "__main__":
    sys.exit(main())
