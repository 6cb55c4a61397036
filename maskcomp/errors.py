"""One exception type for every user-facing failure, and the entry-point wrapper that prints it."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class MaskcompError(Exception):
    """An error caused by input or configuration; its message is one line naming the file and the fix."""


def cli(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Wrap an entry point so a MaskcompError prints one line and exits 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except MaskcompError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapped
