"""Atomic writes: every artifact appears whole or not at all, so an interrupted stage never leaves half a file.

Temporary files are named `.<name>.<pid>.<random>.tmp<suffix>` beside their target; an exception or SIGTERM
removes them, and a process's first write into a folder removes those a killed process (SIGKILL) left behind.
Finished files get the permissions of the process umask (0644 under umask 022), like any created file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .errors import MaskcompError


def file_mode() -> int:
    """The mode a newly created file gets under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_TMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp.*")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files in `folder` whose writing process no longer runs."""
    for entry in folder.glob(".*.tmp*"):
        match = _TMP_NAME.fullmatch(entry.name)
        if match and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


_SWEPT: set[Path] = set()  # folders this process has already swept: the crop stage writes thousands of files into one


def temporary_beside(path: Path) -> Path:
    """A new empty file next to `path`, named so that remove_stale_temporaries recognises it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent not in _SWEPT:
        remove_stale_temporaries(path.parent)
        _SWEPT.add(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    os.chmod(tmp, file_mode())
    return Path(tmp)


def require_writable(folder: Path) -> None:
    """Create `folder` if needed and check that files can be made in it; else one line naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise MaskcompError(
            f"{folder}: cannot write there ({err.strerror}); choose a writable folder (DATA=... or paths.*)"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_pair(first: str | os.PathLike, second: str | os.PathLike) -> Iterator[tuple[Path, Path]]:
    """Two files that belong together (a submission and its sidecar): both are written to temporaries; then
    the old `second` is removed, `first` renamed, `second` renamed. An interruption leaves either the old
    pair, or the new `first` alone, never a new `first` beside an old `second`."""
    first, second = Path(first), Path(second)
    tmp1, tmp2 = temporary_beside(first), temporary_beside(second)
    try:
        yield tmp1, tmp2
        second.unlink(missing_ok=True)
        os.replace(tmp1, first)
        os.replace(tmp2, second)
    except BaseException:
        for tmp in (tmp1, tmp2):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def write_csv(df: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")
