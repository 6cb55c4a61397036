"""Hard voting of submission files (ensemble.vote): per eval image the class most files predict, a tie going to
the file with the highest CV in its sidecar, as the strongest teams of this competition voted their best
submissions. Every file must be a valid submission for the current info.csv."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import PROJECT_ROOT, Settings
from ..core.context import Context, stage
from ..core.errors import MaskcompError
from ..core.manifests import file_digest
from ..runs import git_commit
from .names import submission_file
from .submission import append_index, keep_replaced, validate_submission, write_submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ballot:
    """One voted submission: its answers in info.csv order and the CV its sidecar reports (None: no sidecar)."""

    path: Path
    answers: np.ndarray
    cv: float | None


def read_ballot(path: Path, info: pd.DataFrame) -> Ballot:
    """A submission file checked against the current info.csv (a file made for another eval set is refused)."""
    if not path.is_file():
        raise MaskcompError(f"{path}: no such submission; ensemble.vote lists submission CSV files")
    sub = pd.read_csv(path, dtype={"ImageID": str}, keep_default_na=False)
    validate_submission(sub, info, f"{path} (ensemble.vote: made for another info.csv?)")
    sidecar = path.with_suffix(".json")
    cv = json.loads(sidecar.read_text())["summary"].get("cv_macro_f1") if sidecar.exists() else None
    if cv is None:
        log.warning("%s: no sidecar with a CV beside it; its answers count, but break no tie", path)
    return Ballot(path, pd.to_numeric(sub["ans"]).to_numpy(int), cv)


def hard_vote(answers: np.ndarray, cvs: list[float | None]) -> np.ndarray:
    """(files, rows) answers -> per row the most voted class; among tied classes, the one the highest-CV file
    voting for a tied class chose."""
    rows = np.arange(answers.shape[1])
    counts = np.zeros((answers.shape[1], labels.NUM_CLASSES), int)
    for file_answers in answers:
        np.add.at(counts, (rows, file_answers), 1)
    tied = counts == counts.max(1, keepdims=True)
    out = np.full(len(rows), -1)
    for f in sorted(range(len(cvs)), key=lambda i: np.inf if cvs[i] is None else -cvs[i]):
        take = (out < 0) & tied[rows, answers[f]]
        out[take] = answers[f][take]
    return out


@dataclass(frozen=True)
class VoteSidecar:
    """The voted submission's JSON: the summary block every submission has, then the vote's details."""

    summary: dict
    vote: dict

    def as_json(self) -> dict:
        return asdict(self)


def vote_sidecar(ballots: list[Ballot], answers: np.ndarray, voted: np.ndarray) -> VoteSidecar:
    agree = (answers == answers[0]).all(0)
    best_cv = max((b.cv for b in ballots if b.cv is not None), default=None)
    summary = {
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": git_commit(),
        "runs": [b.path.name for b in ballots],
        "folds": {},
        "cv_macro_f1": None,
        "eval_rows": len(voted),
        "person_grouping_applied": False,
    }
    vote = {
        "files": [str(b.path) for b in ballots],
        "cv_macro_f1": [b.cv for b in ballots],
        "best_file_cv": best_cv,
        "all_agree_share": round(float(agree.mean()), 4),
        "changed_from_best_file": int((voted != answers[0]).sum()) if ballots else 0,
        "note": "a hard vote has no OOF predictions: its CV is unknown; the files' own CVs are listed",
    }
    return VoteSidecar(summary, vote)


def vote_files(cfg: Settings) -> list[Path]:
    return [Path(p) if Path(p).is_absolute() else PROJECT_ROOT / p for p in cfg.ensemble.vote]


def require_distinct(files: list[Path], out: Path) -> None:
    """Each voted file once (by path and by content: a copy would count twice), and none of them the output."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.resolve() == out.resolve():
            raise MaskcompError(
                f"{path}: the vote would be written over this file, one of its own inputs; set ensemble.name to "
                "another name"
            )
        if path.is_file():
            digest = file_digest(path)
            if digest in seen or path.resolve() in {p.resolve() for p in seen.values()}:
                twin = seen.get(digest, path)
                raise MaskcompError(
                    f"ensemble.vote: {path} is listed twice or has the same content as {twin}; each file must be "
                    "another submission (a copy would count twice)"
                )
            seen[digest] = path


@stage
def vote(ctx: Context) -> Path:
    """Write the hard vote of ensemble.vote's files as submissions/<name>.csv (name default: vote) with its sidecar,
    and list it in submissions/index.csv."""
    cfg, paths = ctx.cfg, ctx.paths
    info = pd.read_csv(paths.eval_csv, dtype=str, keep_default_na=False)
    files = vote_files(cfg)
    if len(files) < 2:
        raise MaskcompError(f"ensemble.vote={cfg.ensemble.vote}: a vote needs two or more submission files")
    out = submission_file(cfg)
    require_distinct(files, out)
    ballots = [read_ballot(path, info) for path in files]
    order = sorted(range(len(ballots)), key=lambda i: np.inf if ballots[i].cv is None else -ballots[i].cv)
    ballots = [ballots[i] for i in order]  # best CV first: answers[0] is the best single file
    answers = np.stack([b.answers for b in ballots])
    voted = hard_vote(answers, [b.cv for b in ballots])
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans": voted})
    validate_submission(sub, info, "the vote")
    sidecar = vote_sidecar(ballots, answers, voted).as_json()
    keep_replaced(out, sidecar["summary"]["runs"])
    write_submission(sub, sidecar, out)
    append_index(paths.submissions / "index.csv", [out], sidecar)
    log.info(
        "wrote %s: hard vote of %d submissions (%.1f%% of rows unanimous, %d rows differ from the best file)",
        out,
        len(ballots),
        100 * sidecar["vote"]["all_agree_share"],
        sidecar["vote"]["changed_from_best_file"],
    )
    return out
