"""The names of a submission's files, made in one place: the ensemble and the vote write them, the analysis page and
the closing summary link them (the files beside it, <name>.groups.csv and <name>.probs.csv, are named in
data/pseudo.py, whose pseudo-labels read them)."""

from __future__ import annotations

from pathlib import Path

from ..core import labels
from ..core.config import Settings
from ..data.pseudo import groups_file, probs_file

__all__ = ["blended_experiments", "groups_file", "probs_file", "submission_file", "submission_name"]


def blended_experiments(cfg: Settings) -> list[str]:
    """The experiments an ensemble reads: each named once among ensemble.heads, else ensemble.experiments, else the
    config's own."""
    if cfg.ensemble.heads:
        return list(dict.fromkeys(cfg.ensemble.heads[h] for h in labels.HEADS))
    return list(cfg.ensemble.experiments or [cfg.experiment])


def submission_name(cfg: Settings) -> str:
    """The submission's file stem: ensemble.name, else the blended experiments joined (per head with ensemble.heads:
    mask-a+gender-b+age-a; a vote: `vote`)."""
    if cfg.ensemble.name:
        return cfg.ensemble.name
    if cfg.ensemble.vote:
        return "vote"
    if cfg.ensemble.heads:
        return "+".join(f"{h}-{cfg.ensemble.heads[h].replace('@', '-')}" for h in labels.HEADS)
    return "+".join(e.replace("@", "-") for e in blended_experiments(cfg))


def submission_file(cfg: Settings) -> Path:
    """submissions/<name>.csv: the one place its name is made (ensemble, vote, analysis page, closing summary)."""
    return cfg.paths.resolved.submissions / f"{submission_name(cfg)}.csv"
