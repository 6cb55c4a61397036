"""Train every fold (or one): python train.py --config configs/X.yaml [overrides] [--fold K] [--resume]

Several GPUs: torchrun --nproc_per_node=N train.py --config ... (DistributedDataParallel).
"""

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.train.trainer import train


@cli
def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--fold", type=int, action="append", help="train only this fold (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from each fold's last.pt")
    ctx, args = parse_stage_args(parser, argv)
    train(ctx, folds=args.fold, resume=args.resume)


if __name__ == "__main__":
    main()
