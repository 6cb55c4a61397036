"""Where every stage reads and writes; all paths come from the config's `paths` section."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import PROJECT_ROOT, Config


def _abs(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else PROJECT_ROOT / path


@dataclass(frozen=True)
class Paths:
    data_root: Path
    crops: Path
    folds: Path
    runs: Path
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
    def from_config(cls, cfg: Config) -> "Paths":
        return cls(**{name: _abs(value) for name, value in cfg["paths"].items()})

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
