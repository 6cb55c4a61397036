"""Face crops for every train and eval image (facenet-pytorch MTCNN), cached, resumable, with fallbacks.

Layout under paths.crops:
  det-<hash>/detections.jsonl   raw MTCNN boxes per image content (SHA-256 of the file; appended per batch,
                                a torn last line is ignored)
  crop-<hash>/<split>/<name>-<digest>.jpg  the crops; crop-<hash>/records.csv one record per image;
                                crop-<hash>/manifest.json what they were made from
The detection hash covers the detector settings only, the crop hash also margin/aspect/mode, so
changing the margin re-crops from cached detections without running the detector again. Detections
and crop files are keyed by the image's content, so an image replaced in place is detected and cut anew.

The stage's jobs live in four modules: the images to crop (items.py), detection with resume (detect.py), the box
policy and fallbacks (boxes.py), crop writing and the stage itself (here); its report is report/crop_page.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..core.config import Settings
from ..core.context import Context, stage
from ..core.errors import MaskcompError
from ..core.fileio import atomic_path, write_csv
from ..core.manifests import (
    MANIFEST,
    Manifest,
    config_keys,
    digest_of,
    require_current,
    write_manifest,
)
from ..core.progress import progress
from ..core.settings import CropSettings, added_defaults, section_keys
from ..data.csvfiles import read_csv_with
from ..data.tables import EVAL_COLUMNS
from .boxes import FACE_COLUMNS, expand_box, fixed_box, resolve_boxes
from .detect import DETECTOR_KEYS, detector_hash, read_image_rgb, run_detection, settings_hash
from .items import Item, list_items

log = logging.getLogger(__name__)

# the face box (detected, or the fallback box) in image pixels; x1..y2 are the crop box it grew into
ITEMS = "items.csv"  # the crop stage's record of what it consumed: every image's key, split, person and digest
ITEM_COLUMNS = ["key", "split", "person_id", "digest"]
CROP_KEYS = tuple(k for k in section_keys("crop", "crop") if k not in DETECTOR_KEYS)  # how a box becomes a crop
DIGEST_CHARS = 16


def crop_hash(crop_cfg: CropSettings) -> str:
    """The crop folder's name part: the crop settings, a setting added later left out while at its default (crop
    folders made before it stay where they are)."""
    keys = CROP_KEYS + (DETECTOR_KEYS if crop_cfg.mode == "mtcnn" else ())
    added = {key.removeprefix("crop."): value for key, value in added_defaults("crop").items()}
    return settings_hash({k: getattr(crop_cfg, k) for k in keys if k not in added or getattr(crop_cfg, k) != added[k]})


def crop_dir(cfg: Settings) -> Path:
    return cfg.paths.resolved.crops / f"crop-{crop_hash(cfg.crop)}"


def crop_manifest(cfg: Settings, items: list[Item]) -> Manifest:
    """What the crops depend on: every image's place, person and content per split, and the crop settings."""
    inputs = {
        split: digest_of([(it.key, it.person_id, it.digest) for it in items if it.split == split])
        for split in ("train", "eval")
    }
    return Manifest("crop", inputs, config_keys(cfg, "crop"))


def train_crops_digest(crops: dict) -> str:
    """What the training crops depend on (training images and crop settings; eval images never enter them)."""
    return digest_of([crops["inputs"]["train"], crops["config"]])


def recorded_items(ctx: Context, folder: Path) -> list[Item] | None:
    """The images the crop stage consumed (its items.csv), each with the digest its file has now: a stat per image
    (the digest cache), no folder listed, no image opened unless its stat changed. A missing file gets the digest
    'missing'; info.csv naming other images than those cropped marks every eval item changed. None for a crop folder
    written before items.csv was kept."""
    path = folder / ITEMS
    if not path.exists():
        return None
    cfg, paths, cache = ctx.cfg, ctx.paths, ctx.digests
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    listed = set(read_csv_with(paths.eval_csv, EVAL_COLUMNS, "eval info.csv")["ImageID"])
    cropped = {Path(k).name for k in table.loc[table["split"] == "eval", "key"]}
    eval_moved = not cropped <= listed or (listed != cropped and not cfg.data.skip_bad)  # skip_bad leaves bad ones out
    items = []
    for key, split, person in zip(table["key"], table["split"], table["person_id"]):
        file = paths.image_file(key)
        digest = cache.digest(file) if Path(file).is_file() else "missing"
        items.append(Item(key, split, file, person, "info.csv changed" if eval_moved and split == "eval" else digest))
    return items


def expected_crop_manifest(ctx: Context) -> Manifest:
    """The crop manifest the current images and settings give: from the crop stage's items.csv when there is one
    (only `make crop` lists and opens the images), else from listing them (once per context)."""

    def compute() -> Manifest:
        recorded = recorded_items(ctx, crop_dir(ctx.cfg))
        return crop_manifest(ctx.cfg, recorded if recorded is not None else list_items(ctx))

    return ctx.remembered("crop manifest", ("paths", "data", "crop"), compute)


def require_current_crops(ctx: Context) -> dict:
    """The crop manifest on disk, after checking that it matches the current images and crop settings."""
    folder = crop_dir(ctx.cfg)
    manifest = expected_crop_manifest(ctx)
    require_current(
        folder, manifest, str(folder), "crops were made from other images or settings", "run `make crop` first"
    )
    return manifest.as_dict()


def crop_name(key: str, digest: str) -> str:
    return f"{key.replace('/', '__').rsplit('.', 1)[0]}-{digest[:DIGEST_CHARS]}.jpg"


def write_crops(records: pd.DataFrame, crop_cfg: CropSettings, out_dir: Path) -> pd.DataFrame:
    """Cut and save every crop not yet on disk; fill crop box and path columns (an image found unreadable now gets
    unreadable=True)."""
    out = records.copy()
    out["x1"] = out["y1"] = out["x2"] = out["y2"] = -1
    out[FACE_COLUMNS] = -1
    out["crop_path"] = ""
    for i in progress(out.index, "write crops", unit="img"):
        if out.at[i, "unreadable"]:
            continue
        target = out_dir / out.at[i, "split"] / crop_name(out.at[i, "key"], out.at[i, "digest"])
        img = None
        if out.at[i, "box"] is None or not target.exists():
            img = read_image_rgb(out.at[i, "image_path"])
            if img is None:
                out.at[i, "unreadable"] = True
                continue
        if out.at[i, "box"] is None:
            height, width = img.shape[:2]
            out.at[i, "box"] = fixed_box(crop_cfg, width, height)
            out.at[i, "source"] = "none" if crop_cfg.mode == "none" else "center"
        width, height = _image_size(out.at[i, "image_path"], img)
        aspect = crop_cfg.aspect
        margin = crop_cfg.margin if out.at[i, "source"] not in ("center", "none") else 0.0
        x1, y1, x2, y2 = (
            map(int, out.at[i, "box"])
            if out.at[i, "source"] == "none"
            else expand_box(out.at[i, "box"], width, height, margin, aspect)
        )
        out.loc[i, ["x1", "y1", "x2", "y2"]] = [x1, y1, x2, y2]
        out.loc[i, FACE_COLUMNS] = [int(round(v)) for v in out.at[i, "box"]]
        out.at[i, "crop_path"] = str(target)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:  # the temporary name keeps the .jpg suffix that cv2 needs
                if not cv2.imwrite(
                    str(tmp), cv2.cvtColor(img[y1:y2, x1:x2], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
                ):
                    raise MaskcompError(f"{target}: could not write the crop; check free disk space and permissions")
    return out


def _image_size(path: str, img: np.ndarray | None) -> tuple[int, int]:
    if img is not None:
        return img.shape[1], img.shape[0]
    from PIL import Image

    with Image.open(path) as im:
        return im.size


@stage
def crop_faces(ctx: Context) -> pd.DataFrame:
    """Run the crop stage; returns the per-image records (also in crop-<hash>/records.csv)."""
    cfg, paths, crop_cfg = ctx.cfg, ctx.paths, ctx.cfg.crop
    start = time.perf_counter()
    items = list_items(ctx)
    out_dir = crop_dir(cfg)
    if crop_cfg.mode == "mtcnn":
        det_path = paths.crops / f"det-{detector_hash(crop_cfg)}" / "detections.jsonl"
        detections = run_detection(items, crop_cfg, det_path)
    else:
        detections = {}
    (out_dir / MANIFEST).unlink(
        missing_ok=True
    )  # records.csv is about to change; no manifest may vouch for it meanwhile
    records = write_crops(resolve_boxes(items, detections, crop_cfg), crop_cfg, out_dir)
    bad = records.loc[records["unreadable"], "image_path"].tolist()
    columns = [
        "key",
        "digest",
        "split",
        "image_path",
        "person_id",
        "source",
        "score",
        "x1",
        "y1",
        "x2",
        "y2",
        *FACE_COLUMNS,
        "crop_path",
    ]
    write_csv(records.loc[~records["unreadable"], columns], out_dir / "records.csv")
    write_csv(pd.DataFrame([(it.key, it.split, it.person_id, it.digest) for it in items], columns=ITEM_COLUMNS),
              out_dir / ITEMS)  # fmt: skip
    write_manifest(out_dir, crop_manifest(cfg, items), outs=[out_dir / "records.csv", out_dir / ITEMS])
    if bad:
        write_csv(pd.DataFrame({"image_path": bad}), paths.reports / "crop" / "unreadable_images.csv")
        log.warning(
            "%d unreadable image(s) got no crop; list in %s", len(bad), paths.reports / "crop" / "unreadable_images.csv"
        )
    log.info("crops and records.csv in %s (%.0f s)", out_dir, time.perf_counter() - start)
    return records


def load_crops(cfg: Settings) -> pd.DataFrame:
    """The crop records for the current crop config, indexed by original image path."""
    path = crop_dir(cfg) / "records.csv"
    if not path.exists():
        raise MaskcompError(
            f"{path}: no crops for this crop config; run `make crop` (or preprocess/crop_faces.py) first"
        )
    return pd.read_csv(path, dtype={"person_id": str}, keep_default_na=False).set_index("image_path")
