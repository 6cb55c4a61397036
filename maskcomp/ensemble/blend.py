"""The blend of an ensemble: each experiment's OOF and eval probabilities (its folds averaged), their weights,
then the decision steps that act on probabilities, each measured nested (fitted on k-1 folds, scored on the held-out
one): the age groups' cut points of ordinal heads, and eval persons found by grouping their images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from ..core import labels
from ..core.cli import make_command
from ..core.config import Settings
from ..core.context import Context
from ..core.errors import MaskcompError
from ..core.fileio import write_csv
from ..core.metrics import macro_f1
from ..core.settings import EnsembleSettings
from ..predict.grouping import apply_grouping, compose, nested_grouping, thumbnails
from ..predict.infer import require_current_predictions, required_refits
from ..runs import RunRef, eval_models, read_oof, read_test_probs, read_test_table, resolve_run
from .names import groups_file
from .neighbours import look_alikes, read_shares

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """One experiment's run as the ensemble sees it: TTA OOF of all folds, fold-averaged eval predictions."""

    oof: pd.DataFrame
    test_probs: np.ndarray
    test_ord: np.ndarray | None  # fold-averaged P(age >= k) of an ordinal age head, else None
    ids: list[str]
    ref: RunRef
    eval_models: list[str] = field(default_factory=list)  # the models test_probs averages (folders in the run)

    @property
    def oof_ord(self) -> np.ndarray | None:
        return self.oof[labels.AGE_ORD_COLUMNS].to_numpy() if self.test_ord is not None else None


def load_experiment(ctx: Context, spec: str) -> Experiment:
    """`spec` is an experiment (its run from the `run` key) or experiment@run-id. Predictions older than their
    fold's model or than the eval set are refused."""
    cfg = ctx.cfg
    ref = resolve_run(ctx.paths, spec, cfg.run if spec == cfg.experiment else "latest")
    require_complete(cfg, ref)
    refits = required_refits(cfg, ref) if cfg.ensemble.models != "folds" else []  # refit.* are the invocation's
    require_current_predictions(ctx, ref, refits)
    folds = ref.trained_folds()
    if not folds:
        raise ref.no_folds_error()
    for fold in folds:
        if not ref.fold(fold).oof_tta.exists():
            raise MaskcompError(
                f"{ref.fold(fold).oof_tta}: missing; run `make infer` for experiment '{ref.experiment}'"
            )
    oof = read_oof(ref, cfg.paths.resolved, tta=True)
    ordinal = set(labels.AGE_ORD_COLUMNS) <= set(oof.columns)  # an ordinal age head: its P(age >= k) are needed too
    tests, ords, ids = [], [], None
    models = eval_models(ref, cfg.ensemble.models, refits)
    for files in models:
        probs, model_ids = read_test_probs(ref, files)
        if ids is not None and model_ids != ids:
            raise MaskcompError(f"{files.test_ids}: eval images differ between models; run `make infer` again")
        ids = model_ids
        tests.append(probs)
        if ordinal:
            ords.append(read_test_table(ref, files)[labels.AGE_ORD_COLUMNS].to_numpy())
    names = [str(files.dir.relative_to(ref.dir)) for files in models]
    return Experiment(oof, np.mean(tests, axis=0), np.mean(ords, axis=0) if ordinal else None, ids, ref, names)


def require_complete(cfg: Settings, ref: RunRef) -> None:
    """A run with folds left to train covers only part of the persons: refused unless `partial_run` allows it."""
    missing, expected = ref.missing_folds(), ref.expected_folds()
    if not missing:
        return
    names = ", ".join(map(str, missing))
    if cfg.partial_run:
        log.warning(
            "run %s: fold(s) %s of %d not trained; submitting it as a partial run", ref.label, names, len(expected)
        )
        return
    raise MaskcompError(
        f"run {ref.label}: fold(s) {names} of {len(expected)} not trained (its OOF and CV would cover only part of the "
        f"persons); train them with `{make_command('train infer ensemble')}`, or set partial_run=true to submit it "
        "as it is"
    )


def compose_heads(heads: dict[str, str], loaded: dict[str, Experiment]) -> Experiment:
    """One experiment whose 18 classes are composed per head (ensemble.heads): each head's marginal, on OOF and eval,
    from the experiment named for it; an ordinal age head's P(age >= k) comes with the age experiment."""
    age = loaded[heads["age"]]

    def composed(probs_of) -> np.ndarray:
        return compose({h: labels.head_probs_from_18(probs_of(loaded[heads[h]]))[h] for h in labels.HEADS})

    oof = age.oof.copy()
    oof[labels.PROB_COLUMNS] = composed(lambda e: e.oof[labels.PROB_COLUMNS].to_numpy())
    return Experiment(oof, composed(lambda e: e.test_probs), age.test_ord, age.ids, age.ref, age.eval_models)


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


def load_all(ctx: Context, experiments: list[str]) -> list[Experiment]:
    loaded = [load_experiment(ctx, e) for e in experiments]
    base = loaded[0]
    for exp, other in zip(experiments[1:], loaded[1:]):
        if other.oof["image_path"].tolist() != base.oof["image_path"].tolist() or other.ids != base.ids:
            raise MaskcompError(
                f"experiment '{exp}' covers other OOF or eval images than '{experiments[0]}'; "
                "ensemble only runs trained on the same folds and data"
            )
    return loaded


def tune_age_cuts(
    ens_cfg: EnsembleSettings,
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
    if ens_cfg.tune_age_cuts is False or any(e.test_ord is None for e in loaded):
        return oof_blend, test_blend, None
    if len(np.unique(folds)) < 2:
        log.info("age cut points stay at 30/60: tuning them needs OOF of 2 or more folds")
        return oof_blend, test_blend, None
    oof_ord = np.tensordot(weights, np.stack([e.oof_ord for e in loaded]), 1)
    test_ord = np.tensordot(weights, np.stack([e.test_ord for e in loaded]), 1)
    nested = nested_age_cuts(oof_blend, oof_ord, y, folds)
    summary = {k: v for k, v in nested.items() if k != "pooled"}
    if ens_cfg.tune_age_cuts == "auto" and nested["gain"] <= 0:
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


def grouping_mode(cfg: Settings) -> str:
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
    return write_csv(table, groups_file(out))


def person_grouping(
    cfg: Settings, first: Experiment, oof_blend: np.ndarray, test_blend: np.ndarray, out: Path
) -> StepResult:
    """Group images into persons on both sides (infer.person_grouping); the OOF blend comes back pooled with view
    weights fitted on the other folds, the eval blend grouped when the nested gain allows it."""
    mode, min_sim, oof = grouping_mode(cfg), cfg.infer.group_min_similarity, first.oof
    groups_file(out).unlink(missing_ok=True)  # an earlier submission's groups never pass for this one's
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
    eval_paths = [str(cfg.paths.resolved.eval_images / i) for i in first.ids]
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
    neighbours: dict | None = None  # the look-alike persons step (infer.neighbours), when it ran


def blend(cfg: Settings, loaded: list[Experiment], out: Path) -> Blend:
    """Weighted mean of the experiments (ensemble.weights), then the age cut points and person grouping steps."""
    ens_cfg = cfg.ensemble
    y, folds = loaded[0].oof["label"].to_numpy(), loaded[0].oof["fold"].to_numpy()
    oof_probs = [e.oof[labels.PROB_COLUMNS].to_numpy() for e in loaded]
    weights = fit_weights(oof_probs, y) if ens_cfg.weights == "fit" else np.full(len(loaded), 1 / len(loaded))
    oof_blend = np.tensordot(weights, np.stack(oof_probs), 1)
    test_blend = np.tensordot(weights, np.stack([e.test_probs for e in loaded]), 1)
    oof_blend, test_blend, age_cuts = tune_age_cuts(ens_cfg, loaded, weights, y, folds, oof_blend, test_blend)
    first = loaded[0]
    shares = (
        read_shares(first.ref, first.oof["image_path"].tolist(), cfg.paths.resolved) if cfg.infer.neighbours else None
    )
    oof_blend, test_blend, alike = look_alikes(shares, y, folds, oof_blend, test_blend)
    grouped = person_grouping(cfg, loaded[0], oof_blend, test_blend, out)
    return Blend(grouped.oof, grouped.test, weights, age_cuts, grouped.summary, alike)
