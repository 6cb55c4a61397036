"""Generate the sample dataset in the competition layout: python preprocess/make_sample.py [--config ...]"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.data.sample import make_sample


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    cfg = ctx.cfg
    make_sample(cfg.paths.resolved, cfg.sample.persons, cfg.sample.eval_persons, cfg.sample.seed)


if __name__ == "__main__":
    main()
