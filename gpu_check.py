"""The GPU paths of the pipeline on a tiny generated dataset, one row per step: python gpu_check.py [--compile]
[--device cpu] [--ddp N]. Without CUDA it says so and exits 0."""

import argparse
import logging

import torch

from maskcomp.core.errors import cli
from maskcomp.gpucheck import run_check, table


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the same steps on the CPU)")
    parser.add_argument("--compile", action="store_true", help="also train one epoch with torch.compile")
    parser.add_argument("--ddp", type=int, default=None, help="torchrun processes (default: one per GPU)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here, nothing to check (on a GPU machine it tests crop, fp16/bf16 training, "
            "DDP, inference and the ensemble; --device cpu runs the same steps on the CPU)"
        )
        return
    logging.basicConfig(level=logging.WARNING)
    rows = run_check(args.device, args.compile, args.ddp)
    print(table(rows))
    failed = [r for r in rows if r.status != "ok"]
    print(
        f"gpu-check: {len(rows) - len(failed)} of {len(rows)} steps ok"
        + (f"; failed: {', '.join(r.step for r in failed)}" if failed else "")
    )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
