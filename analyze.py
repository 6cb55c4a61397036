"""Fold-level analysis pages from run files: python analyze.py --config ... [ensemble.experiments=[a,b]]"""

from maskcomp.analyze.pages import analyze, closing_summary
from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    print(closing_summary(ctx.cfg, analyze(ctx)))


if __name__ == "__main__":
    main()
