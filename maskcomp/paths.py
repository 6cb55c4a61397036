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
        """An image's place under the data root (train/images/<person>/mask1.jpg): what crops, their manifest and the
        crop cache know an image by, so a data folder moved with the same contents keeps them."""
        path = Path(image_path)
        return path.relative_to(self.data_root).as_posix() if path.is_relative_to(self.data_root) else image_path

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
