"""make clean and make clean-everything: what the pipeline can regenerate goes (crops, folds, trained runs, reports,
the crop cache); what a person or a long search made stays unless everything is asked for: the review decisions and
reviewed fixes inside runs, the tune studies (models/tune/) and the submissions. Both say what went and what stayed.

    python -m maskcomp.clean --config X [--everything]
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .core.cli import parse_stage_args, stage_parser
from .core.config import Settings
from .core.errors import cli
from .core.paths import Paths
from .runs import PERSON_MADE
from .tune.study import STUDIES


@dataclass
class Cleaned:
    """Files removed, and the person-made files by kind: kept, or with `--everything` removed too."""

    removed: int = 0
    person_made: dict[str, list[Path]] = field(default_factory=lambda: {"review": [], "study": [], "submission": []})


def folds_files(paths: Paths) -> list[Path]:
    """folds.csv and what make folds writes beside it (never the folder's scripts)."""
    folds = paths.folds
    siblings = ("fold_summary.csv", "fold_summary.md", "applied_fixes.csv", folds.stem + ".manifest.json")
    return [folds, *(folds.with_name(name) for name in siblings)]


def kind_kept(path: Path, models: Path) -> str | None:
    """'review' or 'study' for a file under models/ that nothing regenerates, else None."""
    relative = path.relative_to(models)
    if relative.parts[0] == STUDIES:
        return "study"
    return "review" if path.name in PERSON_MADE else None


def _remove(path: Path, done: Cleaned) -> None:
    if path.is_dir() and not path.is_symlink():
        done.removed += sum(1 for p in path.rglob("*") if not p.is_dir())
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        done.removed += 1
        path.unlink()


def clean_models(models: Path, everything: bool, done: Cleaned) -> None:
    """Every file under models/ but the kept kinds (all of them with `everything`); then the emptied folders."""
    if not models.is_dir():
        return
    for path in sorted(p for p in models.rglob("*") if not p.is_dir() or p.is_symlink()):
        kind = kind_kept(path, models)
        if kind:
            done.person_made[kind].append(path)
        if everything or not kind:
            _remove(path, done)
    for folder in sorted((p for p in models.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def clean(cfg: Settings, everything: bool = False) -> Cleaned:
    paths, done = cfg.paths.resolved, Cleaned()
    for path in (paths.crops, paths.reports, paths.cache, *folds_files(paths)):
        _remove(path, done)
    clean_models(paths.models, everything, done)
    submissions = sorted(p for p in paths.submissions.glob("*") if p.is_file() and not p.name.startswith("."))
    done.person_made["submission"] += submissions
    for path in submissions if everything else []:
        _remove(path, done)
    return done


def summary(done: Cleaned, everything: bool) -> str:
    made = ", ".join(f"{len(files)} {kind} file(s)" for kind, files in done.person_made.items())
    if everything:
        return f"clean-everything: removed {done.removed} files, among them {made}"
    return f"clean: removed {done.removed} regenerable files; kept {made} (`make clean-everything` removes those too)"


@cli
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--everything", action="store_true", help="also the review decisions, studies, submissions")
    ctx, args = parse_stage_args(parser, argv)
    print(summary(clean(ctx.cfg, args.everything), args.everything))


if __name__ == "__main__":
    main()
