"""A hyperparameter search (Optuna): python tune.py --config configs/tune/<name>.yaml [overrides]

The file is a config with a `tune:` section (its space, budget and pruner); the overrides apply to every trial.
Several workers (on one machine or many) share a study through TUNE_STORAGE=postgresql://...; each trial is an
ordinary training run, so a repeated configuration trains nothing.
"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.tune.page import best_config, train_command, write_study_page
from maskcomp.tune.study import TuneJob, optimise


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, args = parse_stage_args(stage_parser(__doc__), argv)
    job = TuneJob.from_config(ctx.cfg, args.config, args.overrides)
    study = optimise(ctx, job)
    best = best_config(study, job)
    page = write_study_page(study, job, best)
    print(f"study {job.study}: page {page}" + (f"; best config {best} ({train_command(best)})" if best else ""))


if __name__ == "__main__":
    main()
