"""`make bench-quality`: the typical first submission (baseline) against the pipeline's recipe (ours) on real faces.

Data: ../shared/data/aaf_masks (competition layout, plus eval_answers.csv); absent -> a skip message.
Both recipes share configs/quality.yaml (backbone, resolution, epochs, folds); configs/quality_<recipe>.yaml
holds what differs. Each recipe runs in its own process (clean wall time and peak memory) through the
pipeline's own stages in a fresh work directory, then is scored on eval against the hidden answers.
Writes bench/results/quality-<date>.json (keys baseline, ours) and a markdown table beside it.

Usage: python bench/quality.py [--gpu] [--data DIR] [--work DIR] [--results DIR] [--recipes baseline ours]
                               [--set key=value ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maskcomp.core import labels
from maskcomp.core.config import Settings, load_config
from maskcomp.core.context import Context
from maskcomp.core.fileio import write_json, write_text
from maskcomp.core.metrics import bootstrap_macro_f1, f1_per_class, macro_f1, scores
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.blend import load_experiment
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.grouping import purity_completeness
from maskcomp.predict.infer import infer
from maskcomp.runs import RunRef, read_oof, read_test_probs
from maskcomp.train.trainer import train

from common import RESULTS, ROOT, SHARED_DATA, data_fingerprint, peak_rss_mb


@dataclass(frozen=True)
class Recipe:
    """A recipe's config files (layered on configs/quality.yaml in this order) and how it makes its submission:
    `first` (one fold model and argmax, as a first submission is made) or `pipeline` (infer, ensemble, decisions)."""

    file: str  # configs/<file>.yaml; its `base:` chain layers the shared settings (configs/quality.yaml) under it
    submission: str


RECIPES = {
    "baseline": Recipe("quality_baseline", "first"),
    "ours": Recipe("quality_ours", "pipeline"),
    "ours_ordinal": Recipe("quality_ours_ordinal", "pipeline"),
}
WORK_PATHS = ("models", "reports", "submissions")
# crops and decoded crop arrays are keyed by content and settings, so the recipes share them (MTCNN runs once)
SHARED_PATHS = ("crops", "cache")


def recipe_files(recipe: str) -> list[str]:
    return [f"configs/{RECIPES[recipe].file}.yaml"]


def recipe_config(recipe: str, data: Path, work: Path, gpu: bool, overrides: list[str]) -> Settings:
    files = [ROOT / f for f in recipe_files(recipe)]
    if gpu:
        files.append(ROOT / "configs" / "quality_gpu.yaml")
    return load_config(
        files,
        [
            f"paths.data_root={data}",
            f"paths.folds={work / 'folds.csv'}",
            *[f"paths.{name}={work / name}" for name in WORK_PATHS],
            *[f"paths.{name}={work.parent / name}" for name in SHARED_PATHS],
            *overrides,
        ],
    )


def eval_scores(pred: np.ndarray, ids: list[str], answers: pd.Series) -> dict:
    y = answers.loc[ids].to_numpy()
    onehot = np.eye(labels.NUM_CLASSES)[pred]
    s = scores(y, onehot)
    return {
        "eval_macro_f1": s["f1"],
        "eval_acc": s["acc"],
        "eval_f1_mask": s["f1_mask"],
        "eval_f1_gender": s["f1_gender"],
        "eval_f1_age": s["f1_age"],
        "eval_f1_per_class": f1_per_class(y, pred, labels.NUM_CLASSES).round(4).tolist(),
    }


def uncertainty(y_eval: np.ndarray, pred_eval: np.ndarray, eval_persons: np.ndarray, oof: pd.DataFrame) -> dict:
    """Person-bootstrap spread of the eval score and of the CV score, and the interval of their difference."""
    boot_eval = bootstrap_macro_f1(y_eval, pred_eval, eval_persons)
    boot_cv = bootstrap_macro_f1(
        oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1), oof["person_id"].to_numpy(), seed=1
    )
    return {
        "eval_macro_f1_boot_sd": float(boot_eval.std()),
        "eval_macro_f1_90ci": np.percentile(boot_eval, [5, 95]).tolist(),
        "cv_macro_f1_boot_sd": float(boot_cv.std()),
        "eval_minus_cv_90ci": np.percentile(boot_eval - boot_cv, [5, 95]).tolist(),
    }


@dataclass
class Submission:
    """What a recipe submitted and how it estimated itself."""

    pred: np.ndarray
    ids: list[str]
    cv: float
    oof: pd.DataFrame
    run: RunRef
    extra: dict


def first_submission(cfg: Settings) -> Submission:
    """One model and argmax, as a first submission is made; CV = the folds' best-epoch OOF predictions pooled."""
    run = infer(cfg, folds=[0])
    oof = read_oof(run, cfg.paths.resolved, tta=False)
    cv = macro_f1(oof["label"].to_numpy(), oof[labels.PROB_COLUMNS].to_numpy().argmax(1))
    probs, ids = read_test_probs(run, 0)
    return Submission(
        probs.argmax(1),
        ids,
        cv,
        oof,
        run,
        {"cv_macro_f1_note": "pooled OOF argmax of the k fold models; eval from fold 0's model"},
    )


def pipeline_submission(cfg: Settings, answer_table: pd.DataFrame) -> Submission:
    """The pipeline's own: every fold inferred with TTA, then the ensemble and its nested decision steps."""
    run = infer(cfg)
    oof = load_experiment(Context(cfg), cfg.experiment).oof
    sub_path = ensemble(cfg)
    side = json.loads(sub_path.with_suffix(".json").read_text())
    sub = pd.read_csv(sub_path, dtype={"ImageID": str})
    extra = {
        "cv_macro_f1_note": "pooled TTA OOF of the fold models, with age cut points, person grouping and biases "
        "each fitted on the other folds where applied (nested); eval is the fold ensemble",
        "biases_applied": side["biases_applied"],
        "nested_bias_gain": (side["nested_bias_gain"] or {}).get("gain"),
        "cv_macro_f1_before_decision": side["oof_before_decision"]["f1"],
        "cv_macro_f1_biases_in_sample": side["oof_macro_f1_after_decision"],
        **grouping_scores(side, sub_path, answer_table),
        **age_cut_scores(side),
    }
    return Submission(sub["ans"].to_numpy(), sub["ImageID"].tolist(), side["cv_macro_f1"], oof, run, extra)


def run_recipe(recipe: str, cfg: Settings) -> dict:
    """All stages of one recipe; returns its CV and eval scores."""
    paths = cfg.paths.resolved
    answer_table = pd.read_csv(paths.eval_answers, dtype={"ImageID": str, "person_id": str}).set_index("ImageID")
    answers = answer_table["ans"]
    records = crop_faces(cfg)
    readable = records[~records["unreadable"]]
    make_folds(cfg)
    train(cfg)
    sub = first_submission(cfg) if RECIPES[recipe].submission == "first" else pipeline_submission(cfg, answer_table)
    # each fold model alone on eval: what the OOF estimate measures, so the fold ensemble's gain shows beside it
    fold_models = []
    for f in sub.run.trained_folds():
        if (sub.run.fold_dir(f) / "test_probs.npy").exists():
            probs, fold_ids = read_test_probs(sub.run, f)
            fold_models.append(macro_f1(answers.loc[fold_ids].to_numpy(), probs.argmax(1)))
    detected = readable["source"].isin(["mtcnn", "mtcnn_relaxed"])
    return {
        "recipe": recipe,
        "config_files": recipe_files(recipe),
        "cv_macro_f1": sub.cv,
        **eval_scores(sub.pred, sub.ids, answers),
        **uncertainty(
            answers.loc[sub.ids].to_numpy(), sub.pred, answer_table.loc[sub.ids, "person_id"].to_numpy(), sub.oof
        ),
        "eval_macro_f1_fold_models": fold_models,
        "eval_macro_f1_fold_models_mean": float(np.mean(fold_models)),
        "crop_mode": cfg.crop.mode,
        "crop_detection_rate": float(detected.mean()),
        "crop_detection_rate_eval": float(detected[readable["split"] == "eval"].mean()),
        "backbone": cfg.model.backbone,
        "img_size": cfg.train.img_size,
        "epochs": cfg.train.epochs,
        "folds": cfg.folds.k,
        "train_images": int((readable["split"] == "train").sum()),
        **sub.extra,
    }


def grouping_scores(side: dict, sub_path: Path, answer_table: pd.DataFrame) -> dict:
    """Person grouping as the sidecar reports it on OOF, and its purity/completeness on eval against the answers."""
    grouping = side.get("person_grouping")
    if not grouping:
        return {}
    folds = grouping["per_fold"]
    out = {
        "grouping_applied": grouping["applied"],
        "grouping_nested_gain": grouping["nested_gain"],
        "grouping_oof_purity": float(np.mean([f["purity"] for f in folds])),
        "grouping_oof_completeness": float(np.mean([f["completeness"] for f in folds])),
    }
    groups_csv = sub_path.with_name(sub_path.stem + ".groups.csv")
    if groups_csv.exists():
        groups = pd.read_csv(groups_csv, dtype={"ImageID": str, "group": str})
        found = purity_completeness(
            groups["group"].to_numpy(), answer_table.loc[groups["ImageID"], "person_id"].to_numpy()
        )
        out.update(grouping_eval_purity=found["purity"], grouping_eval_completeness=found["completeness"])
    return out


def age_cut_scores(side: dict) -> dict:
    cuts = side.get("age_cuts")
    if not cuts:
        return {}
    return {"age_cuts_applied": cuts["applied"], "age_cuts_nested_gain": cuts["gain"], "age_cuts": cuts["cuts"]}


def markdown(results: dict, meta: dict) -> str:
    rows = [
        ("CV (OOF) macro F1", "cv_macro_f1"),
        ("eval macro F1", "eval_macro_f1"),
        ("eval macro F1, 90 % person-bootstrap interval", "eval_macro_f1_90ci"),
        ("eval - CV, 90 % person-bootstrap interval", "eval_minus_cv_90ci"),
        ("eval macro F1, single fold models (mean)", "eval_macro_f1_fold_models_mean"),
        ("eval F1 mask", "eval_f1_mask"),
        ("eval F1 gender", "eval_f1_gender"),
        ("eval F1 age", "eval_f1_age"),
        ("person grouping: nested gain on OOF", "grouping_nested_gain"),
        ("person grouping applied", "grouping_applied"),
        ("grouping purity / completeness, OOF", "grouping_oof_purity", "grouping_oof_completeness"),
        ("grouping purity / completeness, eval", "grouping_eval_purity", "grouping_eval_completeness"),
        ("age cut points (nested gain, applied)", "age_cuts", "age_cuts_nested_gain", "age_cuts_applied"),
        ("biases: nested gain", "nested_bias_gain"),
        ("crop detection rate", "crop_detection_rate"),
        ("wall time (s)", "wall_s"),
        ("peak RSS (MB)", "peak_rss_mb"),
    ]
    names = list(results)
    out = [
        f"# Quality benchmark {meta['date']}",
        "",
        f"Data: {meta['data']} ({meta['device']}). Shared: {meta['shared']}.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for title, *keys in rows:
        cells = [" / ".join(_cell(results[n].get(k)) for k in keys) for n in names]
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Per-class eval F1 (class = mask*6 + gender*3 + age):",
        "",
        "| class | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for c in range(labels.NUM_CLASSES):
        out.append(f"| {c} | " + " | ".join(_cell(results[n]["eval_f1_per_class"][c]) for n in names) + " |")
    return "\n".join(out) + "\n"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return "/".join(map(str, v))
    if isinstance(v, list):
        return " to ".join(_cell(x) for x in v)
    return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.0f}" if isinstance(v, float) else str(v))


def child(recipe: str, data: Path, work: Path, gpu: bool, overrides: list[str], out: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_recipe(recipe, recipe_config(recipe, data, work, gpu, overrides))
    result["peak_rss_mb"] = peak_rss_mb()
    write_json(result, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--gpu", action="store_true", help="add configs/quality_gpu.yaml (CUDA, full resolution, 5 folds)"
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="competition-layout data with eval_answers.csv")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the JSON and markdown go (default bench/results)"
    )
    parser.add_argument("--work", type=Path, help="keep stage outputs here (default: a temporary directory, removed)")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--merge", type=Path, help="an earlier results JSON whose other recipes join this report")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides for both recipes")
    parser.add_argument("--child", choices=RECIPES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.data, args.work, args.gpu, args.set, args.out)
        return 0
    if not (args.data / "train" / "train.csv").exists() or not (args.data / "eval_answers.csv").exists():
        print(f"bench-quality: skipped, no benchmark data at {args.data} (needs train/, eval/ and eval_answers.csv)")
        return 0
    work_root = args.work or Path(tempfile.mkdtemp(prefix="maskcomp-quality-"))
    earlier = json.loads(args.merge.read_text()) if args.merge else {}
    results = {name: r for name, r in earlier.items() if name in RECIPES and name not in args.recipes}
    try:
        for recipe in args.recipes:
            work = work_root / recipe
            work.mkdir(parents=True, exist_ok=True)
            out = work / "result.json"
            start = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "--child",
                recipe,
                "--data",
                str(args.data.resolve()),
                "--work",
                str(work),
                "--out",
                str(out),
                *(["--gpu"] if args.gpu else []),
                "--set",
                *args.set,
            ]
            subprocess.run(cmd, check=True)
            results[recipe] = {**json.loads(out.read_text()), "wall_s": round(time.perf_counter() - start, 1)}
            print(
                f"{recipe}: eval macro F1 {results[recipe]['eval_macro_f1']:.4f}, "
                f"CV {results[recipe]['cv_macro_f1']:.4f}, "
                f"{results[recipe]['wall_s']:.0f} s",
                flush=True,
            )
    finally:
        if args.work is None:
            shutil.rmtree(work_root, ignore_errors=True)
    import torch

    meta = {
        "date": dt.date.today().isoformat(),
        "data": str(args.data),
        "data_digests": data_fingerprint(args.data),
        "gpu_config": args.gpu,
        "device": torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else f"CPU, {_cores()} cores",
        "shared": "configs/quality.yaml"
        + (" + configs/quality_gpu.yaml" if args.gpu else "")
        + "".join(f" {o}" for o in args.set),
    }
    if "baseline" in results and "ours" in results:
        meta["eval_gain"] = results["ours"]["eval_macro_f1"] - results["baseline"]["eval_macro_f1"]
        meta["ours_cv_minus_eval"] = results["ours"]["cv_macro_f1"] - results["ours"]["eval_macro_f1"]
        meta["total_wall_s"] = sum(r["wall_s"] for r in results.values())
    suffix = "-gpu" if args.gpu else ""
    path = args.results / f"quality{suffix}-{meta['date']}.json"
    write_json({**results, "meta": meta}, path)
    write_text(markdown(results, meta), path.with_suffix(".md"))
    print(markdown(results, meta))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in meta.items()}))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
