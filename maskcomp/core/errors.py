"""One exception type for every user-facing failure, and the entry-point wrapper that prints it."""

from __future__ import annotations

import functools
import signal
import sys
from typing import Callable


class MaskcompError(Exception):
    """An error caused by input or configuration; its message is one line naming the file and the fix."""


def cli(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Wrap an entry point so a MaskcompError prints one line and exits 2 instead of a traceback, and Ctrl-C one line
    and exit 130."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> None:
        # a plain `kill` ends the stage through SystemExit, so half-written temporary files are removed
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            main(argv)
        except MaskcompError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # every artifact is written atomically, and finished work is skipped on a rerun
            print("interrupted; nothing half-written; rerun to continue", file=sys.stderr)
            sys.exit(130)
        except OSError as err:  # a read-only folder, a full disk: the file and the reason, not a traceback
            where = f"{err.filename}: " if err.filename else ""
            print(
                f"error: {where}{err.strerror or err}; check that the path exists, is writable and the disk has room",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapped


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)
