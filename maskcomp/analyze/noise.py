"""Label-noise detection from a run's OOF predictions: one list of suspected label errors per person, ranked by an
estimated precision, and the label-fixes file of those confident enough to apply without a person looking.

Evidence is pooled per person and per head (a person's 7 images share gender and age; an incorrect/normal swap is
a pattern over two images). For a direction "labelled A, looks B" with pooled score s (the person's P(B)), the
confidence is the estimated share of real errors among persons labelled A scoring at least s:

    prior * S_B(s) / S_A(s),   S_X(s) = share of persons labelled X whose P(B) >= s,

because a person whose true class is B but whose label says A scores like the persons labelled B (mislabelled
persons are `prior` of those labelled A). A class the model rarely gets right (many persons labelled A look B)
makes S_A large, so its candidates get a low confidence; they are also marked `systematic` and ranked last, since
they are the model's failure rather than label noise. Swapped incorrect_mask/normal files score like the mirror
image of unswapped ones, so the swap reference is the negated score of every person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.context import Context, stage
from ..core.fileio import write_csv
from ..runs import read_oof, resolve_run

CANDIDATE_COLUMNS = ["person_id", "fix", "value", "confidence", "auto", "systematic", "current", "suggested", "note"]
FIX_FILE_COLUMNS = ["person_id", "fix", "value", "note"]
EPS = 1e-6
# The precision of each kind's automatic fixes as measured by the planted-noise benchmark (make bench-noise: errors
# planted in the real faces of ../shared/data, the quality recipe, every seed run): the lowest share of automatic fixes
# that undid a planted error. The estimated precision of a candidate is only a model of it; a kind is fixed
# automatically only where this measurement reached relabel.auto_min_confidence too, else its fixes go to review.
MEASURED_PRECISION = {
    "swap_incorrect_normal": (1.0, "12 of 12 right on each of 2 seeds, bench/results/noise-2026-11-25*.md"),
    "gender": (0.75, "3 of 4 right, bench/results/noise-2026-11-25.md; the fixed run scored 0.526 against 0.553"),
    "age": (None, "never confident enough to measure (0 automatic fixes on 2 seeds)"),
}
# an age label two groups off (<30 written for a person over 60, or the reverse) is a far rarer slip than one across a
# single boundary: such directions get this share of the prior
SKIP_GROUP_PRIOR = 0.1


@dataclass(frozen=True)
class NoiseSettings:
    prior: float = 0.03  # share of persons with a label error of one kind (2-3 % in the competition)
    auto_min_confidence: float = 0.8
    systematic_rate: float = 0.3  # a direction A -> B is the model's failure when it says B for this share of A
    top: int = 50  # rows shown on the analysis page
    # age fixes are reviewed by a person by default: the suggested age is the group's median, not the person's age
    auto_kinds: tuple[str, ...] = ("gender", "swap_incorrect_normal")

    def automatic_kinds(self) -> tuple[str, ...]:
        """The kinds fixed without review: asked for (auto_kinds) and measured precise enough (MEASURED_PRECISION)."""
        return tuple(kind for kind in self.auto_kinds if not self.why_reviewed(kind))

    def why_reviewed(self, kind: str) -> str:
        """Why `kind`'s confident candidates still go to review ('' when they are applied automatically)."""
        if kind not in self.auto_kinds:
            return f"{kind}: not in relabel.auto_kinds"
        measured, source = MEASURED_PRECISION[kind]
        if measured is None or measured < self.auto_min_confidence:
            shown = "unmeasured" if measured is None else f"{measured:.2f}"
            return (
                f"{kind}: automatic fixes measured precision {shown} on planted errors ({source}), below the "
                f"{self.auto_min_confidence} bar"
            )
        return ""

    @classmethod
    def from_config(cls, cfg: Settings) -> "NoiseSettings":
        return cls(**{**cfg.relabel.model_dump(), "auto_kinds": tuple(cfg.relabel.auto_kinds)})


@dataclass(frozen=True)
class Direction:
    """All persons labelled A scored by P(B) (`mine`: person_id, score, current, suggested, value, note), the scores
    of persons whose truth is B (`reference`), and the score above which the model's pooled decision is B."""

    fix: str
    mine: pd.DataFrame
    reference: np.ndarray
    decision: float = 0.5
    prior_factor: float = 1.0  # this direction's share of the kind's prior

    def candidates(self, settings: NoiseSettings) -> pd.DataFrame:
        scores = self.mine["score"].to_numpy()
        confidence = estimated_precision(scores, self.reference, settings.prior * self.prior_factor)
        looks_other = scores > self.decision
        rate = float(looks_other.mean()) if len(scores) else 0.0
        out = self.mine.assign(
            fix=self.fix, confidence=confidence.round(3), systematic=rate >= settings.systematic_rate
        )
        out = out[looks_other]
        if rate >= settings.systematic_rate:
            out["note"] += f"; the model says this for {rate:.0%} of persons so labelled: likely its own failure"
        return out


def person_table(oof: pd.DataFrame) -> pd.DataFrame:
    """Per person: labels and the mean of the gender and age heads' probabilities over its images."""
    heads = [f"gender_p{i}" for i in range(2)] + [f"age_p{i}" for i in range(3)]
    return oof.groupby("person_id", sort=True).agg(
        gender_label=("gender_label", "first"),
        age_group=("age_group", "first"),
        age=("age", "first"),
        **{c: (c, "mean") for c in heads},
    )


def estimated_precision(mine: np.ndarray, reference: np.ndarray, prior: float) -> np.ndarray:
    """prior * S_ref(s) / S_mine(s) for each score s in `mine`, made non-increasing as s falls (like q-values)."""
    if len(reference) == 0 or len(mine) == 0:
        return np.zeros(len(mine))
    order = np.argsort(-mine, kind="stable")
    ranked = mine[order]
    # one pseudo-person in the candidate's own tail keeps a handful of extreme scores from claiming certainty
    at_least_mine = (len(mine) + 1 - np.searchsorted(np.sort(mine), ranked, side="left")) / (len(mine) + 1)
    at_least_ref = (len(reference) - np.searchsorted(np.sort(reference), ranked, side="left")) / len(reference)
    precision = np.minimum(1.0, prior * at_least_ref / at_least_mine)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    out = np.empty(len(mine))
    out[order] = precision
    return out


def gender_directions(per: pd.DataFrame) -> list[Direction]:
    out = []
    for a, b in ((0, 1), (1, 0)):
        mine, theirs = per[per["gender_label"] == a], per[per["gender_label"] == b]
        name_a, name_b = labels.GENDER_NAMES[a], labels.GENDER_NAMES[b]
        score = mine[f"gender_p{b}"].to_numpy()
        rows = pd.DataFrame(
            {
                "person_id": mine.index,
                "score": score,
                "current": name_a,
                "suggested": name_b,
                "value": name_b,
                "note": [f"labelled {name_a}; its images look {name_b} (mean p {s:.2f})" for s in score],
            }
        )
        out.append(Direction("gender", rows, theirs[f"gender_p{b}"].to_numpy()))
    return out


def age_directions(per: pd.DataFrame) -> list[Direction]:
    """Labelled group A, looks group B (B the pooled arg-max); the suggested age is the median age of persons
    labelled B."""
    probs = per[[f"age_p{i}" for i in range(3)]].to_numpy()
    predicted_group = probs.argmax(1)  # each person's pooled arg-max age group
    out = []
    for a in range(3):
        for b in range(3):
            mine, theirs = per[per["age_group"] == a], per[per["age_group"] == b]
            if a == b or mine.empty:
                continue
            suggested = int(theirs["age"].median()) if len(theirs) else None
            score = np.where(predicted_group[per["age_group"] == a] == b, mine[f"age_p{b}"].to_numpy(), 0.0)
            rows = pd.DataFrame(
                {
                    "person_id": mine.index,
                    "score": score,
                    "current": [f"{x} ({labels.AGE_NAMES[a]})" for x in mine["age"]],
                    "suggested": f"{suggested} ({labels.AGE_NAMES[b]})",
                    "value": "" if suggested is None else str(suggested),
                    "note": [
                        f"labelled {x}; its images look {labels.AGE_NAMES[b]} (mean p {s:.2f}); "
                        f"suggested: the median age of persons labelled {labels.AGE_NAMES[b]}"
                        for x, s in zip(mine["age"], score)
                    ],
                }
            )
            out.append(
                Direction(
                    "age",
                    rows,
                    theirs[f"age_p{b}"].to_numpy(),
                    decision=0.0,
                    prior_factor=1.0 if abs(a - b) == 1 else SKIP_GROUP_PRIOR,
                )
            )
    return out


def swap_direction(oof: pd.DataFrame) -> list[Direction]:
    """Per person, the log-odds that its incorrect_mask and normal images are swapped: the image labelled incorrect
    looks not worn and the one labelled not worn looks incorrect."""
    pair = oof[oof["mask"].isin([1, 2])]
    p_incorrect, p_not_worn = np.log(pair["mask_p1"].clip(EPS)), np.log(pair["mask_p2"].clip(EPS))
    evidence = np.where(pair["mask"] == 1, p_not_worn - p_incorrect, p_incorrect - p_not_worn)
    log_odds = pd.Series(evidence, index=pair["person_id"].to_numpy()).groupby(level=0).sum()
    score = (1 / (1 + np.exp(-log_odds))).to_numpy()
    rows = pd.DataFrame(
        {
            "person_id": log_odds.index,
            "score": score,
            "current": "as named",
            "suggested": "swapped",
            "value": "",
            "note": [f"incorrect_mask looks not worn and normal looks incorrect (p {s:.2f})" for s in score],
        }
    )
    return [Direction("swap_incorrect_normal", rows, 1 - score)]


def candidates(oof: pd.DataFrame, settings: NoiseSettings) -> pd.DataFrame:
    """Every suspected label error, most likely real first (systematic ones last); `auto` marks the fixes confident
    enough to apply without review."""
    per = person_table(oof)
    directions = [*gender_directions(per), *swap_direction(oof), *age_directions(per)]
    found = [f for f in (d.candidates(settings) for d in directions) if len(f)]
    out = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=[*CANDIDATE_COLUMNS, "score"])
    out["systematic"] = out["systematic"].astype(bool)
    out["auto"] = (
        (out["confidence"] >= settings.auto_min_confidence)
        & ~out["systematic"]
        & out["fix"].isin(settings.automatic_kinds())
        & ((out["fix"] != "age") | (out["value"] != ""))
    )
    out = out.sort_values(["systematic", "confidence", "score"], ascending=[True, False, False], kind="stable")
    return out[CANDIDATE_COLUMNS].reset_index(drop=True)


def held_for_review(found: pd.DataFrame, settings: NoiseSettings) -> list[str]:
    """Why the kinds with confident candidates that are not applied automatically go to review, one line each."""
    confident = found[(found["confidence"] >= settings.auto_min_confidence) & ~found["systematic"] & ~found["auto"]]
    return [why for why in map(settings.why_reviewed, sorted(set(confident["fix"]))) if why]


def fix_file_rows(found: pd.DataFrame) -> pd.DataFrame:
    """The automatic fixes in the label-fixes format (data.label_fixes)."""
    auto = found[found["auto"]]
    return auto.assign(note=[f"automatic (confidence {c:.2f}): {n}" for c, n in zip(auto["confidence"], auto["note"])])[
        FIX_FILE_COLUMNS
    ]


@dataclass(frozen=True)
class RelabelResult:
    candidates: Path  # every candidate, for review
    fixes: Path  # the automatic ones, in the label-fixes format
    automatic: int
    to_review: int
    held: list[str]  # why confident candidates of some kinds still go to review


@stage
def relabel(ctx: Context) -> RelabelResult:
    """Candidates of the configured experiment's run, written beside its OOF: label_fix_candidates.csv (all) and
    label_fixes_auto.csv (those to apply without review). The raw train.csv is never changed."""
    cfg, paths = ctx.cfg, ctx.paths
    run = resolve_run(paths, cfg.experiment, cfg.run)
    settings = NoiseSettings.from_config(cfg)
    found = candidates(read_oof(run, paths, tta=True), settings)
    all_path = write_csv(found, run.fix_candidates)
    fixes = write_csv(fix_file_rows(found), run.auto_fixes)
    review = ~found["auto"].astype(bool) & ~found["systematic"]
    return RelabelResult(all_path, fixes, int(found["auto"].sum()), int(review.sum()), held_for_review(found, settings))
