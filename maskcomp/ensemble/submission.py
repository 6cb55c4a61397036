"""The submission: validated against info.csv, written with its JSON sidecar as one artifact, and listed in
submissions/index.csv."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.errors import MaskcompError
from ..core.fileio import atomic_pair, json_default, write_csv
from ..core.metrics import macro_f1
from ..runs import git_commit
from .blend import Blend, Experiment
from .decide import Decision
from .names import blended_experiments

log = logging.getLogger(__name__)


def validate_submission(sub: pd.DataFrame, info: pd.DataFrame, source: str) -> None:
    """Refuse a submission the leaderboard would reject or misread."""
    if list(sub.columns) != ["ImageID", "ans"]:
        raise MaskcompError(f"{source}: columns must be ImageID,ans, got {','.join(map(str, sub.columns))}")
    if len(sub) != len(info):
        raise MaskcompError(f"{source}: {len(sub)} rows but info.csv has {len(info)}; predict every eval image")
    if set(sub["ImageID"]) != set(info["ImageID"]):
        raise MaskcompError(f"{source}: ImageIDs differ from info.csv; predict exactly the listed images")
    if sub["ImageID"].tolist() != info["ImageID"].tolist():
        raise MaskcompError(f"{source}: rows are not in info.csv order; keep info.csv's row order")
    ans = pd.to_numeric(sub["ans"], errors="coerce")
    if ans.isna().any():
        raise MaskcompError(f"{source}: ans has missing or non-numeric values; every row needs a class 0..17")
    if (ans != ans.round()).any() or not ans.between(0, labels.NUM_CLASSES - 1).all():
        raise MaskcompError(f"{source}: ans must be whole numbers 0..17")


def submission_table(info: pd.DataFrame, ids: list[str], pred: np.ndarray, source: str) -> pd.DataFrame:
    by_id = dict(zip(ids, pred.tolist()))
    missing = [i for i in info["ImageID"] if i not in by_id]
    if missing:
        raise MaskcompError(
            f"{missing[0]}: eval image without a prediction ({len(missing)} in all); it has no crop because it "
            "is unreadable (data.skip_bad): replace the image, then run `make crop infer ensemble`"
        )
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans": [int(by_id[i]) for i in info["ImageID"]]})
    validate_submission(sub, info, source)
    return sub


def write_submission(sub: pd.DataFrame, sidecar: dict, path: Path) -> None:
    """The CSV and its JSON sidecar as one artifact (fileio.atomic_pair)."""
    with atomic_pair(path, path.with_suffix(".json")) as (csv_tmp, json_tmp):
        sub.to_csv(csv_tmp, index=False)
        json_tmp.write_text(json.dumps(sidecar, indent=2, default=json_default) + "\n")


@dataclass(frozen=True)
class SidecarSummary:
    """The sidecar's first block: when, which code and runs, the CV a leaderboard score is compared with."""

    written: str
    git_commit: str | None
    runs: list[str]
    folds: dict[str, list[int]]
    cv_macro_f1: float
    eval_rows: int
    person_grouping_applied: bool
    eval_models: str  # which models predicted eval (ensemble.models); the CV is always the fold models' OOF
    missing_folds: dict[str, list[int]]  # folds of each run that were not trained (partial_run=true), else empty


@dataclass(frozen=True)
class Sidecar:
    """The submission's JSON (<name>.json): the summary, then every decision's details. This is its schema."""

    summary: SidecarSummary
    person_grouping: dict | None
    age_cuts: dict | None
    experiments: list[str]
    weights: list[float]
    weights_note: str
    biases: list[float]
    bias_mode: str
    tta: list[str]
    oof_before_decision: dict
    oof_macro_f1_after_decision: float
    nested_bias_gain: dict
    biases_applied: bool
    cv_macro_f1: float
    class_distribution: dict[str, list[float]]
    heads: dict[str, str] | None = None  # ensemble.heads: the run each head's probabilities came from
    look_alike_persons: dict | None = None  # infer.neighbours: k and weight per head, nested gain, applied

    def as_json(self) -> dict:
        return asdict(self)


def class_shares(labels_: np.ndarray) -> list[float]:
    return (np.bincount(labels_, minlength=labels.NUM_CLASSES) / len(labels_)).round(4).tolist()


def sidecar_of(
    cfg: Settings, loaded: list[Experiment], mix: Blend, decision: Decision, sub: pd.DataFrame, y: np.ndarray
) -> Sidecar:
    runs, ens_cfg = [e.ref for e in loaded], cfg.ensemble
    summary = SidecarSummary(
        time.strftime("%Y-%m-%d %H:%M:%S"),
        git_commit(),
        [r.label for r in runs],
        {r.label: r.trained_folds() for r in runs},
        decision.cv_f1,
        len(sub),
        bool(mix.grouping["applied"]) if mix.grouping else False,
        f"{ens_cfg.models}: "
        + "; ".join(f"{e.ref.label} {', '.join(e.eval_models)}" for e in loaded)
        + " averaged on eval; the CV comes from the fold models' OOF",
        {r.label: missing for r in runs if (missing := r.missing_folds())},
    )
    return Sidecar(
        summary,
        mix.grouping,
        mix.age_cuts,
        blended_experiments(cfg),
        mix.weights.tolist(),
        WEIGHTS_NOTE if ens_cfg.weights == "fit" else "equal weights",
        decision.biases.round(3).tolist(),
        ens_cfg.bias_mode,
        cfg.infer.tta,
        decision.before,
        decision.after_f1,
        decision.nested,
        bool(decision.biases.any()),
        decision.cv_f1,
        {"train_oof": class_shares(y), "submission": class_shares(sub["ans"].to_numpy())},
        head_runs(cfg, loaded),
        mix.neighbours,
    )


def head_runs(cfg: Settings, loaded: list[Experiment]) -> dict[str, str] | None:
    """Each head's run (ensemble.heads), by the experiments loaded in blended_experiments' order."""
    if not cfg.ensemble.heads:
        return None
    runs = dict(zip(blended_experiments(cfg), (e.ref.label for e in loaded)))
    return {h: runs[cfg.ensemble.heads[h]] for h in labels.HEADS}


# ensemble.weights=fit chooses the weights on all OOF rows, and the CV is then measured on those same rows
WEIGHTS_NOTE = "weights fitted on all OOF rows (not nested): the CV estimate is optimistic by the weights' fit"


def warn_never_predicted(sub: pd.DataFrame, y: np.ndarray) -> None:
    share = np.bincount(sub["ans"], minlength=labels.NUM_CLASSES)
    never = [labels.class_name(c) for c in range(labels.NUM_CLASSES) if not share[c] and (y == c).any()]
    if never:
        log.warning(
            "the submission never predicts %d class(es) that the training data has: %s", len(never), ", ".join(never)
        )


def keep_replaced(out: Path, runs: list[str]) -> None:
    """Before `out` is written for `runs`: when it holds a submission of other runs (or other voted files), say so,
    and when no copy beside it has its bytes (a stamped copy), keep it as <name>_replaced_<when>.csv (+ .json)."""
    sidecar = out.with_suffix(".json")
    if not out.exists():
        return
    before = json.loads(sidecar.read_text()).get("summary", {}).get("runs", []) if sidecar.exists() else []
    if sorted(before) == sorted(runs):
        return
    content = out.read_bytes()
    copy = next((p for p in sorted(out.parent.glob(f"{out.stem}_*.csv")) if p.read_bytes() == content), None)
    if copy is None:
        copy = out.with_name(f"{out.stem}_replaced_{time.strftime('%Y-%m-%d_%H%M%S')}.csv")
        os.replace(out, copy)
        if sidecar.exists():
            os.replace(sidecar, copy.with_suffix(".json"))
    log.warning(
        "%s held the submission of %s; it now holds that of %s (the earlier one is kept as %s)",
        out, " ".join(before) or "unknown runs", " ".join(runs), copy,
    )  # fmt: skip


def append_index(index: Path, written: list[Path], sidecar: dict) -> None:
    """One row per submission ever written: when, which file (and its stamped copy), runs, CV, and what the
    decision applied."""
    summary = sidecar["summary"]
    row = pd.DataFrame(
        [
            {
                "written": summary["written"],
                "submission": written[0].name,
                "copy": written[1].name if len(written) > 1 else "",
                "runs": " ".join(summary["runs"]),
                "cv_macro_f1": "" if summary["cv_macro_f1"] is None else round(summary["cv_macro_f1"], 4),
                "git_commit": summary["git_commit"],
                "biases_applied": sidecar.get("biases_applied", False),
                "person_grouping": summary["person_grouping_applied"],
            }
        ]
    )
    table = pd.concat([pd.read_csv(index, dtype=str), row.astype(str)], ignore_index=True) if index.exists() else row
    write_csv(table, index)


def read_sidecar(submission: Path) -> dict:
    """A submission's sidecar (<name>.json) as written, or {} where there is none or it cannot be read."""
    path = submission.with_suffix(".json")
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def eval_score(submission: Path, answers: Path) -> float | None:
    """The submission's macro F1 on eval answers (benchmark and generated data carry them); None without answers,
    or when they do not cover the submission's images."""
    if not (submission.exists() and answers.exists()):
        return None
    sub = pd.read_csv(submission, dtype={"ImageID": str})
    truth = pd.read_csv(answers, dtype={"ImageID": str}).set_index("ImageID").reindex(sub["ImageID"])["ans"]
    return None if truth.isna().any() else float(macro_f1(truth.to_numpy(), sub["ans"].to_numpy()))
