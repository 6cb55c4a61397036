"""Label-noise fixes from a trained run: python relabel.py --config ... [run=<id>]

Writes models/<exp>/<run>/label_fix_candidates.csv (every suspect, most likely first) and label_fixes_auto.csv (the
confident ones in the label-fixes format). Train again with data.label_fixes=[that file] to apply them."""

from maskcomp.analyze.noise import relabel
from maskcomp.core.cli import label_fixes_override, make_command, parse_stage_args, stage_parser
from maskcomp.core.errors import cli


@cli
def main(argv: list[str] | None = None) -> None:
    ctx, _ = parse_stage_args(stage_parser(__doc__), argv)
    result = relabel(ctx)
    print(
        f"label-noise candidates: {result.automatic} to apply automatically, {result.to_review} to review "
        f"(systematic ones listed last)\nall candidates: {result.candidates}\nautomatic fixes: {result.fixes}"
    )
    review = make_command("review")
    for why in result.held:
        print(f"held for review: {why}")
    if result.automatic:
        fixes = label_fixes_override(ctx.cfg.data.label_fixes, result.fixes)
        retrain = make_command("folds train infer ensemble", [fixes])
        print(f"next: {review} to check the candidates by eye, or apply the automatic fixes as they are: {retrain}")
        print("(train.csv is never changed)")
    else:
        print(f"next: no fix is both confident and of a kind measured precise enough to apply on its own; {review}")


if __name__ == "__main__":
    main()
