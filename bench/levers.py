"""`make bench-levers`: the winners' levers, one row each, on the quality recipe (configs/quality_ours.yaml, real
faces, the CPU budget), then the combination of those whose CV gain is positive.

Rows, in the order they run (each in its own process, all in one work folder so later rows reuse earlier runs):
  ours         the recipe as it is
  pseudo       ours' submission's eval images of confidence >= 0.7 added to every fold's training split (a second
               round: its wall time counts ours' too)
  background   augment.background=0.5 (grey outside the jittered face box)
  heads        ensemble.heads: each head from ours or background, whichever has the higher OOF F1 of that head
  neighbours   infer.neighbours=true on ours' run (no training: infer and ensemble)
  best         the levers with a positive CV gain together (written as configs/quality_best.yaml)
Each row: CV (nested, the sidecar's), eval macro F1 and its 90 % person-bootstrap interval, the paired difference to
ours (the same person resamples), per-head eval F1, wall time. Choose on CV; eval is scored once per row.

The greyed-background check of the analysis page (each head's OOF macro F1 with everything outside the face box
greyed) is measured for every trained row afterwards: `--causal RESULTS.json` adds it to a finished run's table
(background suppression should shrink the drop).

Usage: python bench/levers.py [--data DIR] [--work DIR] [--results DIR] [--rows ours pseudo ...] [--set key=value ...]
       python bench/levers.py --causal bench/results/levers-<date>.json --work DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from quality import eval_scores, pipeline_submission, recipe_config, run_recipe

from maskcomp.core import labels
from maskcomp.core.context import Context
from maskcomp.core.fileio import write_json, write_text
from maskcomp.core.metrics import bootstrap_macro_f1, macro_f1
from maskcomp.ensemble.names import submission_file

from common import RESULTS, ROOT, SHARED_DATA, data_fingerprint

ROWS = ("ours", "pseudo", "background", "heads", "neighbours", "best")
LEVERS = {  # each lever's own settings (the rows add a name so their runs and submissions stay apart)
    # 0.7: at the default 0.9 no eval image of ours' submission qualifies (its highest confidence is below 0.9)
    "pseudo": ["pseudo.submission={ours_submission}", "pseudo.threshold=0.7"],
    "background": ["augment.background=0.5"],
    "neighbours": ["infer.neighbours=true"],
}
NAMES = {"pseudo": "experiment=lever_pseudo", "background": "experiment=lever_background",
         "neighbours": "ensemble.name=lever_neighbours", "heads": "ensemble.name=lever_heads",
         "best": "experiment=lever_best"}  # fmt: skip
OURS_SUBMISSION = "submissions/quality_ours.csv"  # where `make ensemble CONFIG=configs/quality_ours.yaml` writes it


def row_overrides(row: str, work: Path, chosen: dict) -> list[str]:
    """The settings a row adds to the recipe (chosen: what earlier rows decided: heads, the best combination)."""
    if row == "ours":
        return []
    if row == "heads":
        return [f"ensemble.heads={json.dumps(chosen['heads'])}", NAMES[row]]
    own = [s for lever in chosen["best"] for s in LEVERS[lever]] if row == "best" else LEVERS[row]
    ours_submission = (work / OURS_SUBMISSION).as_posix()
    return [s.format(ours_submission=ours_submission) for s in own] + [NAMES[row]]


def score(result: dict, ours: dict | None, answers: pd.DataFrame) -> dict:
    """Eval macro F1, its 90 % person-bootstrap interval and the paired difference to ours on the same resamples."""
    ids, pred = result["eval_ids"], np.array(result["eval_pred"])
    y, persons = answers.loc[ids, "ans"].to_numpy(), answers.loc[ids, "person_id"].to_numpy()
    boot = bootstrap_macro_f1(y, pred, persons)
    out = {"eval_macro_f1_90ci": np.percentile(boot, [5, 95]).round(4).tolist()}
    if ours is not None:
        base = bootstrap_macro_f1(y, np.array(ours["eval_pred"]), persons)
        out["eval_minus_ours"] = macro_f1(y, pred) - macro_f1(y, np.array(ours["eval_pred"]))
        out["eval_minus_ours_90ci"] = np.percentile(boot - base, [5, 95]).round(4).tolist()
        out["cv_minus_ours"] = result["cv_macro_f1"] - ours["cv_macro_f1"]
    return out


def run_row(row: str, data: Path, work: Path, overrides: list[str]) -> dict:
    """One row in this process: train where its settings make a new run, else infer and ensemble only; scored on
    eval once."""
    cfg = recipe_config("ours", data, work, False, overrides)
    answers = pd.read_csv(cfg.paths.resolved.eval_answers, dtype={"ImageID": str, "person_id": str})
    if row in ("heads", "neighbours"):
        result = {"cv_macro_f1": pipeline_submission(cfg, answers.set_index("ImageID")).cv}
    else:
        result = run_recipe("ours", cfg)  # crops and folds are shared: only training and the submission run
    side = json.loads(submission_file(cfg).with_suffix(".json").read_text())
    sub = pd.read_csv(submission_file(cfg), dtype={"ImageID": str})
    pred, ids = sub["ans"].to_numpy(), sub["ImageID"].tolist()
    return {
        **result, **eval_scores(pred, ids, answers.set_index("ImageID")["ans"]), "cv_macro_f1": side["cv_macro_f1"],
        "look_alike_persons": side.get("look_alike_persons"), "heads": side.get("heads"),
        "oof_head_f1": oof_head_f1(cfg), "eval_pred": pred.tolist(), "eval_ids": ids, "overrides": overrides,
    }  # fmt: skip


def oof_head_f1(cfg) -> dict[str, float]:
    """Each head's macro F1 on the experiment's OOF (how the heads row picks its experiments: on CV)."""
    from maskcomp.ensemble.blend import load_experiment

    oof = load_experiment(Context(cfg), cfg.experiment).oof
    truth = labels.head_labels(oof["label"].to_numpy())
    guess = labels.head_labels(oof[labels.PROB_COLUMNS].to_numpy().argmax(1))
    return {h: macro_f1(truth[h], guess[h]) for h in labels.HEADS}


def choose_heads(results: dict) -> dict[str, str]:
    experiments = {"ours": "quality_ours", "background": "lever_background"}
    return {h: experiments[max(experiments, key=lambda r: results[r]["oof_head_f1"][h])] for h in labels.HEADS}


def choose_best(results: dict) -> list[str]:
    """The levers whose CV beat ours (chosen on CV only)."""
    return [lever for lever in LEVERS if results.get(lever, {}).get("cv_minus_ours", 0) > 0]


def write_best_config(best: list[str], path: Path) -> None:
    """configs/quality_best.yaml: the recipe with the levers CV chose (pseudo-labels from ours' submission where
    `make ensemble CONFIG=configs/quality_ours.yaml` writes it)."""
    tree: dict = {"base": "quality_ours.yaml"}
    for item in (s.format(ours_submission=OURS_SUBMISSION) for lever in best for s in LEVERS[lever]):
        key, value = item.split("=", 1)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    header = "# The quality recipe with the levers whose CV gain was positive (make bench-levers, bench/levers.py)\n"
    write_text(header + yaml.safe_dump(tree, sort_keys=False), path)


def greyed_drop(data: Path, work: Path, overrides: list[str]) -> dict[str, float]:
    """Each head's OOF macro F1 lost when the background is greyed (the analysis page's causal check)."""
    from maskcomp.analyze.attention import attention_report
    from maskcomp.runs import read_oof, resolve_run

    cfg = recipe_config("ours", data, work, False, overrides)
    run = resolve_run(cfg.paths.resolved, cfg.experiment)
    report = attention_report(cfg, run, read_oof(run, cfg.paths.resolved), work / "attention" / cfg.experiment)
    return {h: c["f1"] - c["f1_background_greyed"] for h, c in (report or {}).get("causal", {}).items()}


def add_causal(path: Path, data: Path, work: Path) -> None:
    """The greyed-background drop of every trained row, added to a finished results file and its table."""
    saved = json.loads(path.read_text())
    meta = saved.pop("meta")
    for row, result in saved.items():
        if row not in ("heads", "neighbours"):
            drops = greyed_drop(data, work, result["overrides"])
            result.update({f"greyed_drop_{h}": d for h, d in drops.items()})
    write_json({**saved, "meta": meta}, path)
    write_text(markdown(saved, meta), path.with_suffix(".md"))
    print(markdown(saved, meta))


def markdown(results: dict, meta: dict) -> str:
    cols = [("CV (nested)", "cv_macro_f1"), ("CV - ours", "cv_minus_ours"), ("eval macro F1", "eval_macro_f1"),
            ("eval 90 % interval", "eval_macro_f1_90ci"), ("eval - ours", "eval_minus_ours"),
            ("eval - ours, paired 90 %", "eval_minus_ours_90ci"), ("eval F1 mask", "eval_f1_mask"),
            ("eval F1 gender", "eval_f1_gender"), ("eval F1 age", "eval_f1_age"), ("wall (s)", "wall_s"),
            ("greyed drop mask", "greyed_drop_mask"), ("greyed drop gender", "greyed_drop_gender"),
            ("greyed drop age", "greyed_drop_age")]  # fmt: skip
    out = [f"# Levers benchmark {meta['date']}", "", f"Data: {meta['data']} ({meta['device']}).", "",
           "| row | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    for name in [row for row in ROWS if row in results]:  # a JSON read back has its keys sorted
        out.append(f"| {name} | " + " | ".join(_cell(results[name].get(k)) for _, k in cols) + " |")
    return "\n".join(out + ["", *meta.get("notes", [])]) + "\n"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return " to ".join(f"{x:+.4f}" if x < 0 else f"{x:.4f}" for x in v)
    return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.0f}" if isinstance(v, float) else str(v))


def run_child(row: str, args, work: Path, overrides: list[str]) -> dict:
    """One row in its own process (its JSON, with the wall time, kept in the work folder: --reuse reads it back)."""
    out = work / f"{row}.json"
    if args.reuse and out.exists() and "wall_s" in json.loads(out.read_text()):
        return json.loads(out.read_text())
    start = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", row, "--data", str(args.data), "--work", str(work), "--out", str(out),
           "--set", *args.set, *overrides]  # fmt: skip
    subprocess.run(cmd, check=True)
    result = {**json.loads(out.read_text()), "wall_s": round(time.perf_counter() - start, 1), "work": str(work)}
    write_json(result, out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="keep stage outputs here (default: a temporary folder, kept)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides for every row")
    parser.add_argument("--reuse", action="store_true", help="rows finished in --work before are read, not rerun")
    parser.add_argument("--merge", type=Path, help="an earlier results JSON whose other rows join this table")
    parser.add_argument("--causal", type=Path, help="add the greyed-background check to this finished results file")
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        write_json(run_row(args.child, args.data, args.work, args.set), args.out)
        return 0
    if args.causal:
        add_causal(args.causal, args.data, args.work)
        return 0
    if not (args.data / "eval_answers.csv").exists():
        print(f"bench-levers: skipped, no benchmark data at {args.data} (needs eval_answers.csv)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="maskcomp-levers-"))
    answers = pd.read_csv(args.data / "eval_answers.csv", dtype={"ImageID": str, "person_id": str}).set_index("ImageID")
    earlier = json.loads(args.merge.read_text()) if args.merge else {}
    chosen = earlier.pop("meta", {}).get("chosen", {})
    results = {row: r for row, r in earlier.items() if row not in args.rows}
    for row in args.rows:
        if row == "heads":
            chosen["heads"] = choose_heads(results)
        if row == "best":
            chosen["best"] = choose_best(results)  # the levers, by name
            if not chosen["best"]:
                print("best: no lever raised the CV; nothing to combine")
                continue
            write_best_config(chosen["best"], ROOT / "configs" / "quality_best.yaml")
        results[row] = run_child(row, args, work, row_overrides(row, work, chosen))
        if row == "pseudo" and not results[row].get("counts_first_round"):
            results[row].update(wall_s=results[row]["wall_s"] + results["ours"]["wall_s"], counts_first_round=True)
        results[row].update(score(results[row], results.get("ours") if row != "ours" else None, answers))
        print(f"{row}: CV {results[row]['cv_macro_f1']:.4f}, eval {results[row]['eval_macro_f1']:.4f}", flush=True)
    meta = {"date": dt.date.today().isoformat(), "data": str(args.data), "data_digests": data_fingerprint(args.data),
            "device": "CPU", "chosen": chosen}  # fmt: skip
    path = args.results / f"levers-{meta['date']}.json"
    slim = {
        r: {k: v for k, v in results[r].items() if k not in ("eval_pred", "eval_ids")} for r in ROWS if r in results
    }
    write_json({**slim, "meta": meta}, path)
    write_text(markdown(slim, meta), path.with_suffix(".md"))
    print(markdown(slim, meta))
    print(f"wrote {path} and {path.with_suffix('.md')}; work in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
