"""Exploratory data analysis into reports/eda/: python preprocess/eda.py [--config ...]"""

from maskcomp.analyze.eda import run_eda
from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    run_eda(ctx)


if __name__ == "__main__":
    main()
