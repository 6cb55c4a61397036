"""One scope per stage call (a command line's process, or a test's call of a stage function): what a stage derives
from the raw data (the training and eval listings with every image checked, the crops' expected manifest) is derived
once while the stage runs, however many of its checks ask for it. Data does not change under a running stage; the
next stage call starts afresh, so a change made between two calls is always seen. When the outermost stage call ends,
the file digests it learned are written back to the digest cache (the checks themselves write nothing)."""

from __future__ import annotations

import copy
import functools
from contextvars import ContextVar
from typing import Any, Callable, TypeVar

from .manifests import digest_of, save_digest_caches
from .settings import Settings

T = TypeVar("T")
_memo: ContextVar[dict | None] = ContextVar("maskcomp_stage_memo", default=None)


def stage(fn: Callable[..., T]) -> Callable[..., T]:
    """Run a stage function in its own scope (a stage called from inside another shares the caller's)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs) -> T:
        if _memo.get() is not None:
            return fn(*args, **kwargs)
        token = _memo.set({})
        try:
            return fn(*args, **kwargs)
        finally:
            _memo.reset(token)
            save_digest_caches()  # the digests learned, even by a stage that stopped: its checks wrote nothing

    return wrapped


def settings_key(cfg: Settings, *sections: str) -> str:
    """A memo key from the settings sections a derivation reads."""
    values = cfg.model_dump()
    return digest_of({name: values[name] for name in sections})


def remembered(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()` once per stage scope and key (outside a stage: every time); each caller gets its own copy."""
    store = _memo.get()
    if store is None:
        return compute()
    if (kind, key) not in store:
        store[(kind, key)] = compute()
    return copy.deepcopy(store[(kind, key)])
