"""Content digests and stage manifests: the one place that decides whether a stage's outputs still hold.

A stage writes `manifest.json` beside its outputs, its lock: the digests of everything those outputs depend on
(input files by content, upstream manifests) and the config keys the stage read, and the digests of the files it wrote
that others read (its outs: a hand-edited records.csv or test_probs.npy is seen). It skips its work only
when the manifest it would write now equals the one on disk, and a downstream stage refuses upstream
outputs whose manifest no longer matches the current inputs.

File digests are SHA-256 of the bytes. They are remembered in `cache/digests.json` under the file's
(size, mtime, ctime, inode): a repeated run stats every file but reads only those whose stat changed. The checks only
read that file; a stage writes what it learned back when it ends (core/context.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import MaskcompError
from .fileio import write_json
from .progress import progress
from .settings import Settings, added_defaults, identity_keys

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_READ_SIZE = 1 << 20


def digest_of(obj: Any) -> str:
    """SHA-256 of a JSON-able value (keys sorted), for config subsets and lists of digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_keys(cfg: Settings, stage: str) -> dict[str, Any]:
    """The values of the settings `stage`'s outputs depend on (settings.identity_keys), by dotted name; a nested
    section (folds.oversample) is one value."""
    values, added = cfg.model_dump(), added_defaults(stage)
    out: dict[str, Any] = {}
    for key in identity_keys(stage):
        node: Any = values
        for part in key.split("."):
            node = node[part]
        if key in added and node == added[key]:
            continue
        out[key] = node
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_SIZE):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """File digests remembered by stat signature; `save()` writes the cache back (atomically)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.changed = False
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                log.warning("%s: unreadable digest cache; every file is hashed again", path)

    @staticmethod
    def _signature(st: os.stat_result) -> list:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def digest(self, path: str | Path) -> str:
        key = str(Path(path).resolve())
        signature = self._signature(os.stat(key))
        entry = self.entries.get(key)
        if entry and entry[0] == signature:
            return entry[1]
        value = file_digest(Path(key))
        self.entries[key] = [signature, value]
        self.changed = True
        return value

    def digests(self, paths: Iterable[str | Path], what: str = "files") -> list[str]:
        paths = list(paths)
        bar = progress(paths, f"digest {what}", unit="file", disable=len(paths) < 500)
        return [self.digest(p) for p in bar]

    def save(self) -> None:
        if self.path is not None and self.changed:
            write_json(self.entries, self.path)
            self.changed = False


@dataclass
class Manifest:
    """What a stage's outputs were made from: named input digests and the config keys it read."""

    stage: str
    inputs: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(asdict(self))

    def as_dict(self) -> dict:
        return {**asdict(self), "digest": self.digest}


def manifest_path(place: Path) -> Path:
    """A folder's manifest is `manifest.json` inside it; a path ending in .json is the manifest file itself."""
    return place if place.suffix == ".json" else place / MANIFEST


def read_manifest(place: Path) -> dict | None:
    path = manifest_path(place)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_manifest(place: Path, manifest: Manifest, outs: Iterable[Path] = ()) -> Path:
    """Write the stage's lock: what it consumed (`manifest`) and, under "outs", the content digests of the files it
    wrote that downstream stages read (named relative to the lock's folder). The outs stay out of the lock's digest:
    a downstream stage consumed the same lock whether or not the outs were checked."""
    path = manifest_path(place)
    record = manifest.as_dict()
    if outs:
        record["outs"] = {str(Path(out).relative_to(path.parent)): file_digest(Path(out)) for out in outs}
    return write_json(record, path)


def changed_outputs(place: Path, stored: dict | None) -> list[str]:
    """The outs of the lock `stored` (read from `place`) whose bytes are no longer those the stage wrote
    ('records.csv changed'); a lock written before outs were recorded vouches for none."""
    folder = manifest_path(place).parent
    return [
        f"{name} changed"
        for name, digest in sorted((stored or {}).get("outs", {}).items())
        if not (folder / name).is_file() or file_digest(folder / name) != digest
    ]


def is_current(place: Path, manifest: Manifest) -> bool:
    """The stored lock was made from what `manifest` says the stage would consume now, and its outs are intact."""
    stored = read_manifest(place)
    return stored is not None and stored.get("digest") == manifest.digest and not changed_outputs(place, stored)


def differences(place: Path, manifest: Manifest) -> list[str]:
    """Names of the inputs and config keys that differ from the stored manifest, and the outs changed since (for
    messages)."""
    stored = read_manifest(place)
    if stored is None:
        return ["no manifest yet"]
    names = [
        k
        for k in set(manifest.inputs) | set(stored.get("inputs", {}))
        if manifest.inputs.get(k) != stored.get("inputs", {}).get(k)
    ]
    names += [
        k
        for k in set(manifest.config) | set(stored.get("config", {}))
        if manifest.config.get(k) != stored.get("config", {}).get(k)
    ]
    return sorted(names) + changed_outputs(place, stored)


def require_current(place: Path, manifest: Manifest, subject: str, mismatch: str, fix: str) -> None:
    """The one staleness check: outputs at `place` are used only while their stored manifest equals `manifest`, the
    one they would be made from now; else one line: `<subject>: <mismatch> (<what changed>); <fix>`."""
    if not is_current(place, manifest):
        changed = ", ".join(differences(place, manifest))
        raise MaskcompError(f"{subject}: {mismatch} ({changed}); {fix}")
