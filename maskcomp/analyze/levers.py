"""What to try next, from this run's own evidence: where its age errors lie by true age (a boundary problem or a
whole-group one), what its decision steps tried and gained (nested, from the submission's sidecar), and the levers
it does not use yet, each with the number that motivates it. A lever the run already uses is not suggested."""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..core import labels
from ..core.settings import Settings, target_class
from ..report import htmlpage

# true-age bands of the age error table: the groups' inner ages and the years beside the 30 and 60 boundaries
AGE_BANDS = ((0, 24), (25, 29), (30, 34), (35, 54), (55, 59), (60, 64), (65, 200))
NEAR_BOUNDARY = ((25, 29), (30, 34), (55, 59), (60, 64))
BOUNDARY_RATIO = 1.5  # errors beside the boundaries this many times those inside the groups: a boundary problem


def age_errors_by_band(oof: pd.DataFrame, pred: np.ndarray) -> pd.DataFrame:
    """Per true-age band: persons' images, and the share whose age group the model got wrong."""
    wrong = labels.head_labels(pred)["age"] != oof["age_group"].to_numpy()
    rows = []
    for low, high in AGE_BANDS:
        inside = (oof["age"] >= low) & (oof["age"] <= high)
        if inside.any():
            band = f"{low}-{high}" if high < 200 else f"{low}+"
            rows.append({"true age": band, "images": int(inside.sum()), "age wrong": round(wrong[inside].mean(), 3)})
    return pd.DataFrame(rows)


def boundary_problem(table: pd.DataFrame) -> bool | None:
    """Whether the age errors gather beside the 30/60 boundaries (None: too few bands to say)."""
    near = {f"{low}-{high}" for low, high in NEAR_BOUNDARY}
    beside, inner = table[table["true age"].isin(near)], table[~table["true age"].isin(near)]
    if beside.empty or inner.empty:
        return None
    return bool(beside["age wrong"].mean() >= BOUNDARY_RATIO * max(inner["age wrong"].mean(), 1e-9))


@dataclass(frozen=True)
class Evidence:
    """What the suggestions rest on: the run's training settings, its OOF, and the submission's sidecar."""

    run_cfg: Settings
    oof: pd.DataFrame
    pred: np.ndarray
    sidecar: dict

    def head_recall(self, head: str, cls: int) -> float:
        truth = labels.head_labels(self.oof["label"].to_numpy())[head]
        mine = truth == cls
        return float((labels.head_labels(self.pred)[head][mine] == cls).mean()) if mine.any() else float("nan")


def uses_old_oversampling(cfg: Settings) -> bool:
    over = cfg.folds.oversample
    return over.strategy != "none" and over.head == "age" and any(target_class("age", k) == 2 for k in over.targets)


def age_levers(ev: Evidence, table: pd.DataFrame) -> list[str]:
    cfg, out = ev.run_cfg, []
    old_recall = ev.head_recall("age", 2)
    if not uses_old_oversampling(cfg):
        where = "folds.oversample.strategy=repeat, folds.oversample.targets={2: 0.15}"
        out.append(f">=60 is found in {old_recall:.0%} of its images: oversample it ({where})")
    if not any(term["name"] == "f1" for term in cfg.loss.terms):
        out.append("a soft-F1 loss term (loss.terms with name f1): macro F1 weighs every class equally, CE does not")
    if cfg.model.head != "ordinal":
        out.append("model.head=ordinal: the age groups are ordered (compare CV; nested age cut points come with it)")
    if not ev.sidecar.get("look_alike_persons"):
        wrong = 1 - np.nanmean([ev.head_recall("age", c) for c in range(3)])
        out.append(
            f"the age group is wrong on {wrong:.0%} of images (mean over groups): blend in look-alike persons' ages "
            "(infer.neighbours=true, then make infer ensemble; applied only on a positive nested gain)"
        )
    boundary = boundary_problem(table)
    if boundary and cfg.train.age_old_threshold == 60 and not cfg.train.drop_age_bands:
        out.append("errors gather beside 30 and 60: train.age_old_threshold=58 or train.drop_age_bands=[[57, 59]]")
    elif boundary is False:
        out.append(
            "the age errors are spread over whole groups, not beside 30 and 60 (table above): moving "
            "train.age_old_threshold will not help; class balance and biases will"
        )
    return out


def gender_levers(ev: Evidence) -> list[str]:
    wrong = 1 - np.nanmean([ev.head_recall("gender", c) for c in range(2)])
    if ev.run_cfg.data.known_label_fixes:
        return [f"gender is wrong on {wrong:.1%} of images: review the label-noise candidates (make review)"]
    return [f"gender is wrong on {wrong:.1%} of images: data.known_label_fixes=true, then the label-noise candidates"]


def decision_steps(sidecar: dict) -> pd.DataFrame:
    """What the ensemble's decision steps tried, their nested (held-out fold) gain and whether they were applied."""
    rows = []
    biases = sidecar.get("nested_bias_gain") or {}
    if biases:
        applied = sidecar.get("biases_applied")
        rows.append({"step": "per-class biases", "nested gain": biases.get("gain"), "applied": applied})
    grouping = sidecar.get("person_grouping") or {}
    if grouping.get("nested_gain") is not None:
        applied = grouping.get("applied")
        rows.append({"step": "person grouping", "nested gain": grouping["nested_gain"], "applied": applied})
    alike = sidecar.get("look_alike_persons") or {}
    if alike.get("gain") is not None:
        rows.append({"step": "look-alike persons", "nested gain": alike["gain"], "applied": alike.get("applied")})
    cuts = sidecar.get("age_cuts") or {}
    if cuts.get("gain") is not None:
        rows.append(
            {"step": f"age cut points {cuts.get('cuts')}", "nested gain": cuts["gain"], "applied": cuts.get("applied")}
        )
    table = pd.DataFrame(rows, columns=["step", "nested gain", "applied"])
    table["nested gain"] = table["nested gain"].astype(float).round(4)
    return table


def levers_section(ev: Evidence, score_on_eval: float | None) -> list[str]:
    """The page's evidence and suggestions, as HTML blocks."""
    table = age_errors_by_band(ev.oof, ev.pred)
    steps = decision_steps(ev.sidecar)
    cv = ev.sidecar.get("cv_macro_f1")
    scores = [f"nested CV {cv:.4f}" if cv is not None else "no submission yet (make ensemble)"]
    scores += [f"eval macro F1 {score_on_eval:.4f}"] if score_on_eval is not None else []
    tips = [*age_levers(ev, table), *gender_levers(ev)]
    return [
        f"<p>Submission: {'; '.join(scores)}.</p>",
        "<p>Age group wrong, by true age (OOF images):</p>",
        htmlpage.table(table),
        *(["<p>Decision steps (gain on held-out folds):</p>", htmlpage.table(steps)] if len(steps) else []),
        "<p>Levers this run does not use yet:</p><ul>",
        *[f"<li>{html.escape(tip)}</li>" for tip in tips],
        "</ul>",
    ]
