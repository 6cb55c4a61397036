"""Blend folds and experiments, tune the F1 decision on OOF, write submissions/<name>.csv + .json:
python ensemble.py --config ... [ensemble.experiments=[a,b]] [ensemble.weights=fit]"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.ensemble.stage import ensemble


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    ensemble(ctx)


if __name__ == "__main__":
    main()
