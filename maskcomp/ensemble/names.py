"""The names of a submission's files, made in one place: the ensemble and the vote write them, the analysis page and
the closing summary link them."""

from __future__ import annotations

from pathlib import Path

from ..core.config import Settings


def submission_name(cfg: Settings) -> str:
    """The submission's file stem: ensemble.name, else the blended experiments joined (a vote: `vote`)."""
    if cfg.ensemble.name:
        return cfg.ensemble.name
    if cfg.ensemble.vote:
        return "vote"
    return "+".join(e.replace("@", "-") for e in (cfg.ensemble.experiments or [cfg.experiment]))


def submission_file(cfg: Settings) -> Path:
    """submissions/<name>.csv: the one place its name is made (ensemble, vote, analysis page, closing summary)."""
    return cfg.paths.resolved.submissions / f"{submission_name(cfg)}.csv"


def groups_file(submission: Path) -> Path:
    """The person groups beside a submission (<name>.groups.csv)."""
    return submission.with_name(submission.stem + ".groups.csv")
