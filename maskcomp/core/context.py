"""The context of one stage call (a command line's process, or a test's or notebook's call of a stage function): its
settings with their absolute paths, the file-digest cache, and the records its checks derive from the raw data (the
training and eval listings with every image checked, the crops' expected manifest), each derived once however many
checks ask for it. The command line opens one context and passes it down; a stage function called with plain
settings opens its own. Data does not change under a running stage; the next stage call opens a fresh context, so a
change made between two calls is always seen. When a stage ends, the digests its context learned are written back
(the checks themselves write nothing)."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Concatenate, ParamSpec, TypeVar

from .manifests import DigestCache, digest_of
from .paths import Paths
from .settings import Settings

T = TypeVar("T")
P = ParamSpec("P")


@dataclass
class Context:
    """One stage call's settings, digest caches and derived records; contexts made by `with_settings` share the
    caches and records (a record is keyed by the settings sections it was derived from)."""

    cfg: Settings
    caches: dict[Path, DigestCache] = field(default_factory=dict)
    records: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def paths(self) -> Paths:
        return self.cfg.paths.resolved

    @property
    def digests(self) -> DigestCache:
        """The digest cache of these settings' cache folder, read once per context (entries are checked against each
        file's stat, so one kept in memory never answers for a changed file)."""
        path = self.paths.digest_cache
        if path not in self.caches:
            self.caches[path] = DigestCache(path)
        return self.caches[path]

    def with_settings(self, cfg: Settings) -> Context:
        """This context for other settings (a run's own, a search trial's): the same caches and records."""
        return Context(cfg, self.caches, self.records)

    def remembered(self, kind: str, sections: tuple[str, ...], compute: Callable[[], T]) -> T:
        """`compute()` once per context and value of the settings `sections` it reads; each caller gets its own copy
        (callers may change what they get)."""
        values = self.cfg.model_dump()
        key = (kind, digest_of({name: values[name] for name in sections}))
        if key not in self.records:
            self.records[key] = compute()
        return copy.deepcopy(self.records[key])

    def save(self) -> None:
        """Write back the digests learned."""
        for cache in self.caches.values():
            cache.save()


def stage(fn: Callable[Concatenate[Context, P], T]) -> Callable[Concatenate[Context | Settings, P], T]:
    """A stage function takes the context first. Called with plain settings (a test, a notebook) it opens a context
    of its own; called from the command line or another stage it uses theirs. When it ends, even by stopping, the
    digests learned are written back."""

    @functools.wraps(fn)
    def wrapped(first: Context | Settings, *args: P.args, **kwargs: P.kwargs) -> T:
        ctx = first if isinstance(first, Context) else Context(first)
        try:
            return fn(ctx, *args, **kwargs)
        finally:
            ctx.save()

    return wrapped
