"""Where every stage reads and writes: the config's `paths` section made absolute (`cfg.paths.resolved`, built once per
settings object)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # relative paths in a config are relative to it
LEGACY_MODELS = "runs"  # where trained runs lived before models/
_ADOPTED: set[Path] = set()


def absolute(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else PROJECT_ROOT / path


@dataclass(frozen=True)
class Paths:
    data_root: Path
    crops: Path
    folds: Path
    models: Path
    reports: Path
    submissions: Path
    cache: Path

    def image_key(self, image_path: str) -> str:
        """An image's place under the data root (train/images/<person>/mask1.jpg): what crops, OOF tables and every
        other artifact know an image by, so a data folder moved or reached by another path keeps them. A key stays a
        key; an absolute path under another root (OOF files written before keys were stored) gets its key from the
        competition layout, whose last parts are the key: train/images/<person>/<file> or eval/images/<file>."""
        path = Path(image_path)
        if not path.is_absolute():
            return path.as_posix()
        if path.is_relative_to(self.data_root):
            return path.relative_to(self.data_root).as_posix()
        for split, depth in (("train", 4), ("eval", 3)):
            tail = path.parts[-depth:]
            if len(path.parts) > depth and tail[:2] == (split, "images"):
                return "/".join(tail)
        return image_path

    def image_file(self, key: str) -> str:
        """The file of an image key under the current data root."""
        return str(self.data_root / key)

    @classmethod
    def absolute(cls, values: dict[str, str]) -> "Paths":
        """The `paths` section's values, absolute; nothing on disk is looked at or moved (adopt_legacy_runs is the
        command line's)."""
        return cls(**{name: absolute(value) for name, value in values.items()})

    @property
    def digest_cache(self) -> Path:
        """File digests remembered by stat signature (core/manifests.py DigestCache)."""
        return self.cache / "digests.json"

    @property
    def train_csv(self) -> Path:
        return self.data_root / "train" / "train.csv"

    @property
    def train_images(self) -> Path:
        return self.data_root / "train" / "images"

    @property
    def eval_csv(self) -> Path:
        return self.data_root / "eval" / "info.csv"

    @property
    def eval_images(self) -> Path:
        return self.data_root / "eval" / "images"

    @property
    def eval_answers(self) -> Path:
        """Ground truth of generated or benchmark data; it sits beside eval/, never inside it."""
        return self.data_root / "eval_answers.csv"


def adopt_legacy_runs(models: Path) -> None:
    """Trained runs of an older checkout sit in runs/ beside models/: moved into models/ when it does not exist yet,
    else named in a warning (never ignored silently, never deleted). An explicit step of the command line (cli.py),
    once per process and folder."""
    legacy = models.parent / LEGACY_MODELS
    if models in _ADOPTED:
        return
    _ADOPTED.add(models)
    if legacy == models or not any(legacy.glob("*/*/run.json")):
        return
    if not models.exists():
        os.replace(legacy, models)
        log.info("moved the trained runs of %s to %s (paths.models): trained runs now live there", legacy, models)
    else:
        log.warning(
            "%s holds trained runs from before %s existed; they are not read: move them with "
            "`mv %s/* %s/` (an experiment folder in both: move its run folders one by one)",
            legacy,
            models,
            legacy,
            models,
        )
