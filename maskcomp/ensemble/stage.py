"""Fold and experiment ensembling, the F1-optimised decision, and the submission file.

Decision: argmax of log p + b, where b are per-class biases tuned on OOF probabilities by
coordinate ascent to maximise macro F1 (bias_mode=head: b[mask, gender, age] = bm + bg + ba, 8
parameters). Its honest gain is measured nested: tune on k-1 folds' OOF, score the held-out fold.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..core import labels
from ..core.config import Config
from ..core.errors import MaskcompError
from ..core.fileio import atomic_pair, json_default, write_csv
from ..core.metrics import macro_f1, scores
from ..core.paths import Paths
from ..core.settings import EnsembleSettings
from ..predict.grouping import apply_grouping, compose, nested_grouping, thumbnails
from ..predict.infer import require_current_predictions
from ..runs import RunRef, git_commit, read_oof, read_test_probs, read_test_table, resolve_run

log = logging.getLogger(__name__)

BIAS_GRID = np.round(np.arange(-3.0, 3.01, 0.1), 2)


@dataclass
class Experiment:
    """One experiment's run as the ensemble sees it: TTA OOF of all folds, fold-averaged eval predictions."""

    oof: pd.DataFrame
    test_probs: np.ndarray
    test_ord: np.ndarray | None  # fold-averaged P(age >= k) of an ordinal age head, else None
    ids: list[str]
    ref: RunRef

    @property
    def oof_ord(self) -> np.ndarray | None:
        return self.oof[labels.AGE_ORD_COLUMNS].to_numpy() if self.test_ord is not None else None


def load_experiment(cfg: Config, spec: str) -> Experiment:
    """`spec` is an experiment (its run from the `run` key) or experiment@run-id. Predictions older than their
    fold's model or than the eval set are refused."""
    ref = resolve_run(Paths.from_config(cfg), spec, cfg.run if spec == cfg.experiment else "latest")
    require_current_predictions(cfg, ref)
    folds = ref.trained_folds()
    if not folds:
        raise ref.no_folds_error()
    oof = read_oof(ref, Paths.from_config(cfg), tta=True)
    ordinal = set(labels.AGE_ORD_COLUMNS) <= set(oof.columns)  # an ordinal age head: its P(age >= k) are needed too
    tests, ords, ids = [], [], None
    for fold in folds:
        if not (ref.fold_dir(fold) / "oof_tta.csv").exists():
            raise MaskcompError(
                f"{ref.fold_dir(fold) / 'oof_tta.csv'}: missing; run `make infer` for experiment '{ref.experiment}'"
            )
        probs, fold_ids = read_test_probs(ref, fold)
        if ids is not None and fold_ids != ids:
            raise MaskcompError(
                f"{ref.fold_dir(fold) / 'test_ids.csv'}: eval images differ between folds; run `make infer` again"
            )
        ids = fold_ids
        tests.append(probs)
        if ordinal:
            ords.append(read_test_table(ref, fold)[labels.AGE_ORD_COLUMNS].to_numpy())
    return Experiment(oof, np.mean(tests, axis=0), np.mean(ords, axis=0) if ordinal else None, ids, ref)


def with_age_cuts(probs: np.ndarray, p_at_least: np.ndarray, young: int, old: int) -> np.ndarray:
    """18-class probabilities whose age groups are cut at `young` and `old` years (mask and gender unchanged)."""
    heads = labels.head_probs_from_18(probs)
    heads["age"] = labels.age_groups_from_ordinal(p_at_least, young, old)
    return compose(heads)


AGE_CUT_CANDIDATES = ([k for k in labels.AGE_CUTS if k <= 35], [k for k in labels.AGE_CUTS if k >= 50])


def best_age_cuts(probs: np.ndarray, p_at_least: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """The cut points (young, old) from AGE_CUTS whose age groups give the highest macro F1 (ties: 30/60 first)."""
    pairs = [(labels.YOUNG_THRESHOLD, labels.OLD_THRESHOLD)] + [
        (a, b) for a in AGE_CUT_CANDIDATES[0] for b in AGE_CUT_CANDIDATES[1]
    ]
    scores = [macro_f1(y, with_age_cuts(probs, p_at_least, a, b).argmax(1)) for a, b in pairs]
    return pairs[int(np.argmax(scores))]


def nested_age_cuts(probs: np.ndarray, p_at_least: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    """Cut points chosen on k-1 folds and applied to the held-out one: the honest gain over 30/60, the pooled
    held-out probabilities, and the cut points chosen on all folds (for the eval set)."""
    pooled, per_fold = probs.copy(), []
    for f in np.unique(folds):
        held = folds == f
        young, old = best_age_cuts(probs[~held], p_at_least[~held], y[~held])
        pooled[held] = with_age_cuts(probs[held], p_at_least[held], young, old)
        per_fold.append(
            {
                "fold": int(f),
                "cuts": [young, old],
                "macro_f1_before": macro_f1(y[held], probs[held].argmax(1)),
                "macro_f1_after": macro_f1(y[held], pooled[held].argmax(1)),
            }
        )
    gain = float(np.mean([r["macro_f1_after"] - r["macro_f1_before"] for r in per_fold]))
    return {"cuts": list(best_age_cuts(probs, p_at_least, y)), "gain": gain, "per_fold": per_fold, "pooled": pooled}


def fit_weights(oof_probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the OOF log loss of the blended probabilities."""
    stack = np.stack(oof_probs)

    def loss(theta):
        w = np.exp(theta) / np.exp(theta).sum()
        blend = np.tensordot(w, stack, 1)
        return -np.log(np.clip(blend[np.arange(len(y)), y], 1e-9, None)).mean()

    res = minimize(loss, np.zeros(len(oof_probs)), method="Nelder-Mead" if len(oof_probs) > 1 else "BFGS")
    w = np.exp(res.x)
    return w / w.sum()


def bias_basis(mode: str) -> np.ndarray:
    """(parameters, 18) matrix: biases = theta @ basis."""
    if mode == "class":
        return np.eye(labels.NUM_CLASSES)
    if mode == "head":
        m, g, a = labels.decode(np.arange(labels.NUM_CLASSES))
        return np.concatenate([np.eye(3)[m].T, np.eye(2)[g].T, np.eye(3)[a].T])
    raise MaskcompError(f"ensemble.bias_mode '{mode}' is unknown; use class or head")


def tune_biases(logp: np.ndarray, y: np.ndarray, rounds: int = 3, mode: str = "class") -> np.ndarray:
    """Coordinate ascent on per-class log-probability biases; only strict improvements are kept, so OOF macro F1
    never drops."""
    basis = bias_basis(mode)
    theta = np.zeros(len(basis))
    best = macro_f1(y, logp.argmax(1))
    for _ in range(rounds):
        improved = False
        for k in range(len(basis)):
            keep = theta[k]
            for value in BIAS_GRID:
                theta[k] = value
                score = macro_f1(y, (logp + theta @ basis).argmax(1))
                if score > best + 1e-12:
                    best, keep, improved = score, value, True
            theta[k] = keep
        if not improved:
            break
    return theta @ basis


def nested_bias_gain(logp: np.ndarray, y: np.ndarray, folds: np.ndarray, rounds: int, mode: str) -> dict:
    """Macro F1 per held-out fold with and without biases tuned on the other folds, and the macro F1 of all
    held-out decisions pooled (the honest CV estimate of the whole pipeline, comparable to OOF macro F1)."""
    before, after = [], []
    pooled = np.empty(len(y), dtype=np.int64)
    for f in np.unique(folds):
        held = folds == f
        bias = tune_biases(logp[~held], y[~held], rounds, mode)
        pooled[held] = (logp[held] + bias).argmax(1)
        before.append(macro_f1(y[held], logp[held].argmax(1)))
        after.append(macro_f1(y[held], pooled[held]))
    return {
        "per_fold_before": before,
        "per_fold_after": after,
        "mean_before": float(np.mean(before)),
        "mean_after": float(np.mean(after)),
        "gain": float(np.mean(after) - np.mean(before)),
        "pooled_after": macro_f1(y, pooled),
    }


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


@dataclass
class Decision:
    """The F1-tuned decision on blended log-probabilities, and what it is honestly worth."""

    biases: np.ndarray
    nested: dict | None
    before: dict
    after_f1: float
    cv_f1: float


def decide(logp_oof: np.ndarray, y: np.ndarray, folds: np.ndarray, ec: EnsembleSettings) -> Decision:
    biases = np.zeros(labels.NUM_CLASSES)
    nested = None
    before = scores(y, np.exp(logp_oof))
    cv_f1 = before["f1"]
    if ec.tune_biases and len(np.unique(folds)) < 2:
        # the nested check tunes on the other folds: with one fold there are none, and in-sample biases would be
        # applied blind; `true` still applies them, and the CV stays the plain OOF score
        log.info(
            "biases %s: measuring them needs OOF of 2 or more folds",
            "applied unmeasured" if ec.tune_biases is True else "not applied",
        )
        if ec.tune_biases is True:
            biases = tune_biases(logp_oof, y, ec.bias_rounds, ec.bias_mode)
    elif ec.tune_biases:
        biases = tune_biases(logp_oof, y, ec.bias_rounds, ec.bias_mode)
        nested = nested_bias_gain(logp_oof, y, folds, ec.bias_rounds, ec.bias_mode)
        if ec.tune_biases == "auto" and nested["gain"] <= 0:
            log.info("biases not applied: tuned on k-1 folds they lower held-out macro F1 (%+.4f)", nested["gain"])
            biases = np.zeros(labels.NUM_CLASSES)
        else:
            cv_f1 = nested["pooled_after"]
    return Decision(biases, nested, before, macro_f1(y, (logp_oof + biases).argmax(1)), cv_f1)


def _load_all(cfg: Config, experiments: list[str]) -> list[Experiment]:
    loaded = [load_experiment(cfg, e) for e in experiments]
    base = loaded[0]
    for exp, other in zip(experiments[1:], loaded[1:]):
        if other.oof["image_path"].tolist() != base.oof["image_path"].tolist() or other.ids != base.ids:
            raise MaskcompError(
                f"experiment '{exp}' covers other OOF or eval images than '{experiments[0]}'; "
                "ensemble only runs trained on the same folds and data"
            )
    return loaded


def tune_age_cuts(
    ec: EnsembleSettings,
    loaded: list[Experiment],
    weights: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    oof_blend: np.ndarray,
    test_blend: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """With ordinal age heads in every experiment: the age groups' cut points tuned for macro F1
    (ensemble.tune_age_cuts;
    auto applies them only when the nested gain is positive). The OOF blend returned is the held-out one."""
    if ec.tune_age_cuts is False or any(e.test_ord is None for e in loaded):
        return oof_blend, test_blend, None
    if len(np.unique(folds)) < 2:
        log.info("age cut points stay at 30/60: tuning them needs OOF of 2 or more folds")
        return oof_blend, test_blend, None
    oof_ord = np.tensordot(weights, np.stack([e.oof_ord for e in loaded]), 1)
    test_ord = np.tensordot(weights, np.stack([e.test_ord for e in loaded]), 1)
    nested = nested_age_cuts(oof_blend, oof_ord, y, folds)
    summary = {k: v for k, v in nested.items() if k != "pooled"}
    if ec.tune_age_cuts == "auto" and nested["gain"] <= 0:
        log.info(
            "age cut points stay at 30/60: tuned on k-1 folds they change held-out macro F1 by %+.4f", nested["gain"]
        )
        return oof_blend, test_blend, {**summary, "applied": False}
    young, old = nested["cuts"]
    log.info("age groups cut at %d/%d (nested gain %+.4f)", young, old, nested["gain"])
    return nested["pooled"], with_age_cuts(test_blend, test_ord, young, old), {**summary, "applied": True}


@dataclass(frozen=True)
class StepResult:
    """The OOF and eval blends after a decision step, and what the step did (for the sidecar; None: skipped)."""

    oof: np.ndarray
    test: np.ndarray
    summary: dict | None


def grouping_mode(cfg: Config) -> str:
    """infer.person_grouping as auto | on | off (YAML reads on/off as true/false)."""
    return {True: "on", False: "off"}.get(cfg.infer.person_grouping, cfg.infer.person_grouping)


def write_groups(eval_ids: list[str], groups, out: Path) -> Path:
    """<name>.groups.csv: each eval image's group (the ImageID of its anchor), similarity and whether it joined."""
    table = pd.DataFrame(
        {
            "ImageID": eval_ids,
            "group": [eval_ids[g] for g in groups.group],
            "confidence": groups.confidence.round(4),
            "grouped": groups.grouped,
        }
    )
    return write_csv(table, out.with_name(out.stem + ".groups.csv"))


def person_grouping(
    cfg: Config, first: Experiment, oof_blend: np.ndarray, test_blend: np.ndarray, out: Path
) -> StepResult:
    """Group images into persons on both sides (infer.person_grouping); the OOF blend comes back pooled with view
    weights fitted on the other folds, the eval blend grouped when the nested gain allows it."""
    mode, min_sim, oof = grouping_mode(cfg), cfg.infer.group_min_similarity, first.oof
    if mode == "off" or oof["fold"].nunique() < 2:
        if mode != "off":
            log.info("person grouping skipped: measuring it needs OOF of 2 or more folds")
        return StepResult(oof_blend, test_blend, None)
    result = nested_grouping(
        oof_blend,
        oof["fold"].to_numpy(),
        thumbnails(oof["image_path"].tolist()),
        oof["person_id"].to_numpy(),
        oof["label"].to_numpy(),
        min_sim,
    )
    summary = {
        "mode": mode,
        "nested_gain": result.gain,
        "per_fold": result.per_fold,
        "min_similarity": min_sim,
        "view_weights": {h: w.round(3).tolist() for h, w in result.weights.items()},
        "applied": False,
    }
    if mode == "auto" and result.gain <= 0:
        log.info("person grouping not applied: on held-out folds it changes macro F1 by %+.4f", result.gain)
        return StepResult(oof_blend, test_blend, summary)
    eval_paths = [str(Paths.from_config(cfg).eval_images / i) for i in first.ids]
    test_blend, groups = apply_grouping(test_blend, thumbnails(eval_paths), result.weights, min_sim)
    groups_csv = write_groups(first.ids, groups, out)
    log.info(
        "person grouping applied (nested gain %+.4f): %d of %d eval images in groups; groups in %s",
        result.gain,
        int(groups.grouped.sum()),
        len(first.ids),
        groups_csv,
    )
    summary.update(applied=True, groups_csv=str(groups_csv), eval_grouped_share=float(groups.grouped.mean()))
    return StepResult(result.oof_probs, test_blend, summary)


@dataclass
class Blend:
    """The experiments' probabilities combined, on OOF and eval, with what was applied on the way."""

    oof: np.ndarray
    test: np.ndarray
    weights: np.ndarray
    age_cuts: dict | None
    grouping: dict | None


def blend(cfg: Config, loaded: list[Experiment], out: Path) -> Blend:
    """Weighted mean of the experiments (ensemble.weights), then the age cut points and person grouping steps."""
    ec = cfg.ensemble
    y, folds = loaded[0].oof["label"].to_numpy(), loaded[0].oof["fold"].to_numpy()
    oof_probs = [e.oof[labels.PROB_COLUMNS].to_numpy() for e in loaded]
    weights = fit_weights(oof_probs, y) if ec.weights == "fit" else np.full(len(loaded), 1 / len(loaded))
    oof_blend = np.tensordot(weights, np.stack(oof_probs), 1)
    test_blend = np.tensordot(weights, np.stack([e.test_probs for e in loaded]), 1)
    oof_blend, test_blend, age_cuts = tune_age_cuts(ec, loaded, weights, y, folds, oof_blend, test_blend)
    grouped = person_grouping(cfg, loaded[0], oof_blend, test_blend, out)
    return Blend(grouped.oof, grouped.test, weights, age_cuts, grouped.summary)


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

    def as_json(self) -> dict:
        return asdict(self)


def class_shares(labels_: np.ndarray) -> list[float]:
    return (np.bincount(labels_, minlength=labels.NUM_CLASSES) / len(labels_)).round(4).tolist()


def sidecar_of(
    cfg: Config, loaded: list[Experiment], mix: Blend, decision: Decision, sub: pd.DataFrame, y: np.ndarray
) -> Sidecar:
    runs, ec = [e.ref for e in loaded], cfg.ensemble
    summary = SidecarSummary(
        time.strftime("%Y-%m-%d %H:%M:%S"),
        git_commit(),
        [r.label for r in runs],
        {r.label: r.trained_folds() for r in runs},
        decision.cv_f1,
        len(sub),
        bool(mix.grouping["applied"]) if mix.grouping else False,
    )
    return Sidecar(
        summary,
        mix.grouping,
        mix.age_cuts,
        ec.experiments or [cfg.experiment],
        mix.weights.tolist(),
        WEIGHTS_NOTE if ec.weights == "fit" else "equal weights",
        decision.biases.round(3).tolist(),
        ec.bias_mode,
        cfg.infer.tta,
        decision.before,
        decision.after_f1,
        decision.nested,
        bool(decision.biases.any()),
        decision.cv_f1,
        {"train_oof": class_shares(y), "submission": class_shares(sub["ans"].to_numpy())},
    )


# ensemble.weights=fit chooses the weights on all OOF rows, and the CV is then measured on those same rows
WEIGHTS_NOTE = "weights fitted on all OOF rows (not nested): the CV estimate is optimistic by the weights' fit"


def ensemble(cfg: Config) -> Path:
    """Blend the experiments, decide (biases, nested), write the submission, its sidecar and an index row; with
    ensemble.stamped_copy also <name>_cv<CV>_<date>.csv, a file name a leaderboard upload can be told apart by."""
    paths = Paths.from_config(cfg)
    ec = cfg.ensemble
    experiments = ec.experiments or [cfg.experiment]
    loaded = _load_all(cfg, experiments)
    y, folds = loaded[0].oof["label"].to_numpy(), loaded[0].oof["fold"].to_numpy()
    out = paths.submissions / f"{ec.name or '+'.join(e.replace('@', '-') for e in experiments)}.csv"
    mix = blend(cfg, loaded, out)
    decision = decide(np.log(np.clip(mix.oof, 1e-9, None)), y, folds, ec)
    info = pd.read_csv(paths.eval_csv, dtype=str, keep_default_na=False)
    sub = submission_table(
        info, loaded[0].ids, (np.log(np.clip(mix.test, 1e-9, None)) + decision.biases).argmax(1), str(out)
    )
    sidecar = sidecar_of(cfg, loaded, mix, decision, sub, y).as_json()
    written = [out] + (
        [out.with_name(f"{out.stem}_cv{decision.cv_f1:.4f}_{time.strftime('%Y-%m-%d')}.csv")] if ec.stamped_copy else []
    )
    for path in written:
        write_submission(sub, sidecar, path)
    append_index(paths.submissions / "index.csv", written, sidecar)
    warn_never_predicted(sub, y)
    gain = f"; nested gain {decision.nested['gain']:+.4f}" if decision.nested else ""
    print(f"OOF macro F1 {decision.before['f1']:.4f} -> {decision.after_f1:.4f} after the decision step{gain}")
    log.info(
        "wrote %s (%d rows) and its .json sidecar; listed in %s",
        " and ".join(map(str, written)),
        len(sub),
        paths.submissions / "index.csv",
    )
    return out


def warn_never_predicted(sub: pd.DataFrame, y: np.ndarray) -> None:
    share = np.bincount(sub["ans"], minlength=labels.NUM_CLASSES)
    never = [labels.class_name(c) for c in range(labels.NUM_CLASSES) if not share[c] and (y == c).any()]
    if never:
        log.warning(
            "the submission never predicts %d class(es) that the training data has: %s", len(never), ", ".join(never)
        )


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
                "cv_macro_f1": round(summary["cv_macro_f1"], 4),
                "git_commit": summary["git_commit"],
                "biases_applied": sidecar["biases_applied"],
                "person_grouping": summary["person_grouping_applied"],
            }
        ]
    )
    table = pd.concat([pd.read_csv(index, dtype=str), row.astype(str)], ignore_index=True) if index.exists() else row
    write_csv(table, index)
