"""python -m maskcomp <stage> [--config X] [overrides]: any stage of core/registry.py, through its script."""

from __future__ import annotations

import runpy
import sys

from .core.config import PROJECT_ROOT
from .core.registry import BY_NAME


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BY_NAME:
        given = f"unknown stage '{argv[0]}'; " if argv else ""
        print(f"error: {given}usage: python -m maskcomp <stage> [args]; stages: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    stage = BY_NAME[argv[0]]
    sys.argv = [stage.script, *argv[1:]]
    if stage.script.startswith("-m "):
        runpy.run_module(stage.script.removeprefix("-m "), run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(str(PROJECT_ROOT / stage.script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
