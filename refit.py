"""Refit on every training person: python refit.py --config configs/X.yaml [refit.seeds=N] [refit.epochs=E]

Trains refit.seeds models on all training persons for the epochs the run's folds chose (median best epoch), in the
run of the current config (train it first). `make infer` then predicts eval with them too, and
`make ensemble ARGS=ensemble.models=refit` (or both) submits with them; the CV stays the fold models'.
"""

from maskcomp.core.cli import make_command, parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.train.refit import refit


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    run, models = refit(ctx)
    folders = ", ".join(str(files.dir) for files in models)
    after = make_command("infer ensemble", ["ensemble.models=refit"])
    print(f"refit models of run {run.label}: {folders}\nnext: {after} (or ensemble.models=both)")


if __name__ == "__main__":
    main()
