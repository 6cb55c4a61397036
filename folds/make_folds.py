"""Person-level stratified folds into folds/folds.csv: python folds/make_folds.py [--config ...] [overrides]"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.data.folds import make_folds


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    make_folds(ctx)


if __name__ == "__main__":
    main()
