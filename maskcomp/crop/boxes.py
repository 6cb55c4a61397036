"""Box policy of the crop stage: which detection is the photo's subject, the fallbacks for images without one,
and how a face box grows into a crop box (margin, aspect, inside the image).

Among an image's detections the subject is the one maximising
  probability x sqrt(box area / image area) x (1 - distance of box centre from image centre / half diagonal),
i.e. a confident, large, central face (bystanders are small and off-centre).
Fallbacks, in order: relaxed thresholds on a contrast-equalised copy (`mtcnn_relaxed`, in detect.py); the median
box of the same person's detected images (`person`, the 7 photos share camera and pose); the median detected box
of the training images (`median`); the configured centre box (`center`). A detected box far from the same person's
other boxes (`far_from_person`) is listed by the crop report and, with crop.outlier_fallback, replaced by the
person's median box (`person_outlier`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.settings import CropSettings
from .items import Item

FACE_COLUMNS = ["face_x1", "face_y1", "face_x2", "face_y2"]  # the detected face, in image pixels (crop records)


def faces_in_input(records: pd.DataFrame, size: tuple[int, int]) -> np.ndarray:
    """(N, 4) face boxes (image pixels) in the model input's pixels: each crop box resized to `size` = (H, W)."""
    height, width = size
    crop = records[["x1", "y1", "x2", "y2"]].to_numpy(float).reshape(-1, 4)
    face = records[FACE_COLUMNS].to_numpy(float).reshape(-1, 4)
    scale = np.array([width, height]) / np.maximum(crop[:, 2:] - crop[:, :2], 1)
    box = (face - np.tile(crop[:, :2], 2)) * np.tile(scale, 2)
    return np.round(np.clip(box, 0, [width, height, width, height])).astype(np.int64)


def face_box_in_input(record: pd.Series, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """One record's face box in the model input's pixels (faces_in_input)."""
    return tuple(int(v) for v in faces_in_input(record.to_frame().T, size)[0])


def choose_box(boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> int:
    """Index of the detection most likely to be the photo's subject (see module docstring)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (width * height)
    centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2], 1)
    closeness = 1 - np.linalg.norm(centre, axis=1) / (0.5 * np.hypot(width, height))
    return int(np.argmax(probs * np.sqrt(np.clip(area, 0, None)) * np.clip(closeness, 0, None)))


def expand_box(box, width: int, height: int, margin: float, aspect: float) -> tuple[int, int, int, int]:
    """Grow by `margin` of the size on each side, reshape to width/height = aspect, keep inside the image."""
    x1, y1, x2, y2 = map(float, box)
    w, h = (x2 - x1) * (1 + 2 * margin), (y2 - y1) * (1 + 2 * margin)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    w, h = min(w, width), min(h, height)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = float(np.clip(cx - w / 2, 0, width - w))
    top = float(np.clip(cy - h / 2, 0, height - h))
    return int(round(left)), int(round(top)), int(round(left + w)), int(round(top + h))


OUTLIER_PX = 80  # a face box centre this far from its person's median centre is not that person's face (7 photos
# share camera and pose: the boxes of one person lie within a few dozen pixels of each other)


def far_from_person(boxes: pd.DataFrame) -> pd.Series:
    """Pixels between each box's centre (columns x1, y1, x2, y2) and the median centre of the boxes of its person
    (rows with the same person_id); NaN for a person with fewer than 3 boxes, whose median says nothing."""
    centre = pd.DataFrame({"x": (boxes["x1"] + boxes["x2"]) / 2, "y": (boxes["y1"] + boxes["y2"]) / 2})
    by_person = centre.groupby(boxes["person_id"])
    median = by_person.transform("median")
    distance = np.hypot(centre["x"] - median["x"], centre["y"] - median["y"])
    return distance.where(by_person["x"].transform("size") >= 3)


def resolve_boxes(items: list[Item], detections: dict[str, dict], crop_cfg: CropSettings) -> pd.DataFrame:
    """One record per item: the chosen raw box, its source and score (fallbacks applied)."""
    rows = []
    for it in items:
        det = detections.get(it.digest, {})
        row = {
            "key": it.key,
            "digest": it.digest,
            "split": it.split,
            "image_path": it.image_path,
            "person_id": it.person_id,
            "source": None,
            "score": np.nan,
            "box": None,
            "unreadable": bool(det.get("unreadable")),
        }
        if det.get("boxes"):
            boxes, probs = np.array(det["boxes"]), np.array(det["probs"])
            k = choose_box(boxes, probs, *det["size"])
            row.update(source=det["stage"], score=float(probs[k]), box=boxes[k].tolist())
        rows.append(row)
    df = pd.DataFrame(rows)
    found = df["box"].notna()
    boxes = np.array(df.loc[found, "box"].tolist()) if found.any() else np.zeros((0, 4))
    person_median = (
        pd.DataFrame(boxes, index=df.index[found]).groupby(df.loc[found, "person_id"]).median()
        if found.any()
        else pd.DataFrame()
    )
    # the dataset median comes from training images only, so training crops never depend on the eval set
    train_boxes = np.array(df.loc[found & (df["split"] == "train"), "box"].tolist()).reshape(-1, 4)
    pool = train_boxes if len(train_boxes) else boxes
    dataset_median = np.median(pool, axis=0).tolist() if len(pool) else None
    if crop_cfg.outlier_fallback and found.any():
        corners = pd.DataFrame(boxes, index=df.index[found], columns=["x1", "y1", "x2", "y2"])
        far = far_from_person(corners.assign(person_id=df.loc[found, "person_id"])) > OUTLIER_PX
        for i in far.index[far]:
            df.at[i, "box"], df.at[i, "source"] = person_median.loc[df.at[i, "person_id"]].tolist(), "person_outlier"
    for i in df.index[~found & ~df["unreadable"]]:
        pid = df.at[i, "person_id"]
        if pid and pid in person_median.index:
            df.at[i, "box"], df.at[i, "source"] = person_median.loc[pid].tolist(), "person"
        elif dataset_median is not None:
            df.at[i, "box"], df.at[i, "source"] = dataset_median, "median"
    return df


def fixed_box(crop_cfg: CropSettings, width: int, height: int) -> list[float]:
    if crop_cfg.mode == "none":
        return [0, 0, width, height]
    x1, y1, x2, y2 = crop_cfg.center_box
    return [x1 * width, y1 * height, x2 * width, y2 * height]
