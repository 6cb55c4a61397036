"""Per-fold predictions on the eval set with TTA (and TTA re-scored OOF): python infer.py --config ... [--fold K]"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.predict.infer import infer


@cli
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--fold", type=int, action="append", help="only this fold (repeatable)")
    ctx, args = parse_stage_args(parser, argv)
    infer(ctx, folds=args.fold)


if __name__ == "__main__":
    main()
