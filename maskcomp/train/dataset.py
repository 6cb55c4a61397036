"""The training/inference data path: crops decoded once into a uint8 memmap at model resolution.

cache/<crop-hash>-<h>x<w>-<crop manifest digest>/images.npy holds every train and eval crop; epochs read
arrays, never JPEGs. The folder name carries the crop manifest's digest, so crops of changed images never
reuse an old array.
EpochSampler yields (index, seed) pairs so that each sample's augmentation depends only on
(run seed, epoch, position): a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.context import Context
from ..core.errors import MaskcompError
from ..core.fileio import atomic_path, write_csv
from ..core.paths import Paths
from ..core.progress import progress
from ..crop.boxes import FACE_COLUMNS, faces_in_input
from ..crop.stage import crop_dir, load_crops, require_current_crops
from .augment import BackgroundSuppression

log = logging.getLogger(__name__)


class CropCache:
    """Row lookup into a (N, H, W, 3) uint8 memmap of crops. Rows are keyed by each image's place under the data
    root (the crop records' `key`), not by its absolute path: a data folder moved or copied elsewhere, with the
    same contents, keeps using the same rows (the crop manifest, which vouches for them, holds those keys too)."""

    def __init__(
        self, array: np.ndarray, keys: list[str], paths: Paths, manifest: dict, faces: np.ndarray | None = None
    ):
        self.array, self.manifest, self.paths = array, manifest, paths
        self.row_of_key = {k: i for i, k in enumerate(keys)}
        self.faces = faces  # (N, 4) each crop's face box in the array's pixels (crop records), or None

    def has(self, image_paths) -> np.ndarray:
        return np.array([self.paths.image_key(p) in self.row_of_key for p in image_paths], dtype=bool)

    def rows(self, image_paths) -> np.ndarray:
        keys = [self.paths.image_key(p) for p in image_paths]
        missing = [p for p, k in zip(image_paths, keys) if k not in self.row_of_key]
        if missing:
            raise MaskcompError(
                f"{missing[0]}: no face crop for this image ({len(missing)} missing); "
                "run `make crop` again, or set data.skip_bad=true if it is unreadable"
            )
        return np.array([self.row_of_key[k] for k in keys], dtype=np.int64)


def build_cache(ctx: Context, size: tuple[int, int]) -> CropCache:
    """Open (building once if needed) the crop array for the current crop config at size (h, w)."""
    h, w = size
    cfg, paths = ctx.cfg, ctx.paths
    manifest = require_current_crops(ctx)
    folder = paths.cache / f"{crop_dir(cfg).name}-{h}x{w}-{manifest['digest'][:12]}"
    array_path, index_path = folder / "images.npy", folder / "index.csv"
    crops = load_crops(cfg)
    faces = faces_in_cache(crops, size)
    if index_path.exists() and array_path.exists():
        index = pd.read_csv(index_path, dtype=str, keep_default_na=False)
        if "key" in index and index["key"].tolist() == crops["key"].tolist():  # older layouts are rebuilt
            return CropCache(np.load(array_path, mmap_mode="r"), index["key"].tolist(), paths, manifest, faces)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(array_path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(crops), h, w, 3))
        for i, path in enumerate(progress(crops["crop_path"], f"cache crops {h}x{w}", unit="img")):
            img = cv2.imread(path, cv2.IMREAD_COLOR)
            if img is None:
                raise MaskcompError(f"{path}: crop unreadable; delete {crop_dir(cfg)} and run `make crop` again")
            array[i] = cv2.cvtColor(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        array.flush()
        del array
        index_path.unlink(missing_ok=True)
    write_csv(pd.DataFrame({"key": crops["key"]}), index_path)
    log.info("cached %d crops at %dx%d in %s", len(crops), h, w, array_path)
    return CropCache(np.load(array_path, mmap_mode="r"), crops["key"].tolist(), paths, manifest, faces)


def faces_in_cache(crops: pd.DataFrame, size: tuple[int, int]) -> np.ndarray | None:
    """Each crop's face box in the cached array's pixels (None for records made before face boxes were kept)."""
    if not set(FACE_COLUMNS) <= set(crops.columns):
        return None
    return faces_in_input(crops, size)


class CropDataset(Dataset):
    """Items are (image tensor, targets dict, position); an index may come with a per-sample augmentation seed."""

    def __init__(
        self,
        array: np.ndarray,
        rows: np.ndarray,
        targets: dict[str, np.ndarray],
        transform,
        background: BackgroundSuppression | None = None,
        faces: np.ndarray | None = None,
    ):
        self.array, self.rows, self.targets, self.transform = array, rows, targets, transform
        self.background, self.faces = background, faces  # faces: the array's face boxes, by array row

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            self.transform.set_random_seed(seed)
        image = np.asarray(self.array[self.rows[index]])
        if self.background is not None:  # before the geometric steps: they move the face and its background together
            image = self.background(image, self.faces[self.rows[index]], seed)
        image = self.transform(image=image)["image"]
        return image, {k: int(v[index]) for k, v in self.targets.items()}, index


class EpochSampler(Sampler):
    """Shuffled (or weighted) order fixed by (seed, epoch), sharded over DDP ranks, with per-sample seeds."""

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.weights = n, seed, weights
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(
                torch.as_tensor(self.weights, dtype=torch.double), self.n, replacement=True, generator=g
            )
        order = order.tolist()
        order += order[: self.per_rank * self.world_size - self.n]
        mine = order[self.rank :: self.world_size]
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        for pos, index in enumerate(mine):
            yield index, (base + pos * self.world_size + self.rank) % (2**32)


def targets_of(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "label": df["label"].to_numpy(),
        "mask": df["mask"].to_numpy(),
        "gender": df["gender_label"].to_numpy(),
        "age": df["age_group"].to_numpy(),
        "age_years": df["age"].to_numpy(),
    }


def existing_crops_only(df: pd.DataFrame, cache: CropCache, skip_bad: bool, what: str) -> pd.DataFrame:
    """With skip_bad, rows without a crop are left out (and counted); otherwise CropCache.rows raises."""
    if not skip_bad:
        return df
    keep = cache.has(df["image_path"])
    if (~keep).any():
        log.warning("%s: leaving out %d image(s) without a crop (data.skip_bad=true)", what, int((~keep).sum()))
    return df[keep].reset_index(drop=True)


FILLED = 0.85  # a face box this share of its crop leaves little background to suppress (centre crops: 0.9)


def warn_nothing_to_suppress(cache: CropCache, rows: np.ndarray) -> None:
    """augment.background needs face boxes inside the crops: refused without any, a warning where they fill them."""
    if cache.faces is None:
        raise MaskcompError(
            "augment.background needs the crops' face boxes, which these crop records lack; run `make crop` again"
        )
    height, width = cache.array.shape[1:3]
    boxes = cache.faces[rows]
    share = float(np.median((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width)))
    if share >= FILLED:
        log.warning(
            "augment.background: the face boxes fill the crops (median %.0f%% of each, as centre crops do), so little "
            "is suppressed; use crop.mode=mtcnn",
            100 * share,
        )


@dataclass(frozen=True)
class LoaderSpec:
    """How a loader batches and feeds: batch size, worker processes, pinned memory, and the seed of the workers'
    base seed (None: drawn from the global RNG, as a plain DataLoader does)."""

    batch_size: int
    workers: int
    pin_memory: bool = False
    seed: int | None = None
    drop_last: bool = False


def crop_loader(
    cache: CropCache,
    df: pd.DataFrame,
    transform,
    spec: LoaderSpec,
    sampler: Sampler | None = None,
    with_targets: bool = True,
    background: BackgroundSuppression | None = None,
) -> DataLoader:
    """The one way a loader over cached crops is built (training, validation, inference, benchmarks): rows of `df`
    in order (or in the sampler's order), with their targets unless `with_targets` is false (eval images)."""
    if background is not None:
        warn_nothing_to_suppress(cache, cache.rows(df["image_path"]))
    targets = targets_of(df) if with_targets else {}
    dataset = CropDataset(cache.array, cache.rows(df["image_path"]), targets, transform, background, cache.faces)
    generator = torch.Generator().manual_seed(spec.seed) if spec.seed is not None else None
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=spec.drop_last,
        num_workers=spec.workers,
        pin_memory=spec.pin_memory,
        persistent_workers=spec.workers > 0,
        generator=generator,
    )
