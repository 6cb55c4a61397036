"""Face crops of every train and eval image: python preprocess/crop_faces.py [--config ...] [overrides]"""
from maskcomp.cli import parse_stage_args, stage_parser
from maskcomp.crop import crop_faces
from maskcomp.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    cfg, _ = parse_stage_args(stage_parser(__doc__), argv)
    crop_faces(cfg)


if __name__ == "__main__":
    main()
