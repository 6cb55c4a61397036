"""Face crops of every train and eval image: python preprocess/crop_faces.py [--config ...] [overrides]
Writes the crops and records.csv, then the crop report (reports/crop/)."""

import time

from maskcomp.core.cli import parse_stage_args, stage_parser
from maskcomp.core.errors import cli
from maskcomp.crop.stage import crop_faces
from maskcomp.report.crop_page import write_crop_report


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    start = time.perf_counter()
    records = crop_faces(ctx)
    write_crop_report(ctx.cfg, records, time.perf_counter() - start)


if __name__ == "__main__":
    main()
