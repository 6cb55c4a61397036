"""Face detection for the crop stage: facenet-pytorch MTCNN in batches over images decoded by DataLoader workers,
a relaxed second pass on a contrast-equalised copy for the misses, and results appended per batch to
det-<hash>/detections.jsonl keyed by each image's content digest (an interrupted run resumes; a torn last line
is ignored)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.device import resolve_device
from ..core.progress import progress
from ..core.settings import CropSettings, section_keys

if TYPE_CHECKING:
    from .items import Item

DETECTOR_KEYS = section_keys("crop", "detect")  # the crop settings declared to change what MTCNN finds


def settings_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def detector_hash(crop_cfg: CropSettings) -> str:
    return settings_hash({k: getattr(crop_cfg, k) for k in DETECTOR_KEYS})


def read_image_rgb(path: str) -> np.ndarray | None:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class DecodeDataset(Dataset):
    """Decodes and downscales images in DataLoader workers so the detector never waits on JPEG decoding."""

    def __init__(self, items: list[Item], scale: float):
        self.items, self.scale = items, scale

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        img = read_image_rgb(self.items[i].image_path)
        if img is None:
            return i, None, (0, 0)
        h, w = img.shape[:2]
        if self.scale != 1:
            img = cv2.resize(img, (round(w * self.scale), round(h * self.scale)), interpolation=cv2.INTER_AREA)
        return i, img, (w, h)


def _collate(batch):
    return batch


def _equalise(img: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def make_detectors(crop_cfg: CropSettings):
    from facenet_pytorch import MTCNN

    device = resolve_device(crop_cfg.device, "crop.device")
    min_size = max(12, int(crop_cfg.min_face_size * crop_cfg.detect_scale))
    strict = MTCNN(keep_all=True, min_face_size=min_size, thresholds=list(crop_cfg.thresholds), device=device)
    relaxed = MTCNN(
        keep_all=True,
        min_face_size=max(12, min_size // 2),
        thresholds=list(crop_cfg.relaxed_thresholds),
        device=device,
    )
    return strict, relaxed


def _detect_batch(detector, images: list[np.ndarray]):
    """MTCNN on images of one size at once; images of different sizes go in separate calls.

    An image smaller than the detector's minimum face size gets no detection (it falls back like a
    miss): facenet-pytorch builds an empty scale pyramid for it and fails inside torch.cat."""
    results: list = [(None, None)] * len(images)
    by_size: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        if min(img.shape[:2]) >= detector.min_face_size:
            by_size.setdefault(img.shape, []).append(i)
    for idx in by_size.values():
        boxes, probs = detector.detect(np.stack([images[i] for i in idx]))
        for j, i in enumerate(idx):
            results[i] = (boxes[j], probs[j])
    return results


def read_detections(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by an interrupted run; that image is detected again
            done[rec["key"]] = rec
    return done


def detect_batch(strict, relaxed, batch: list[tuple], todo: list[Item], scale: float) -> list[dict]:
    """The detection records of one decoded batch: MTCNN at strict thresholds, then the misses (mostly masked
    faces) together at relaxed thresholds on an equalised copy; boxes in full-size pixels."""
    records = [{"key": todo[i].digest, "unreadable": True} for i, img, _ in batch if img is None]
    good = [(i, img, size) for i, img, size in batch if img is not None]
    found = _detect_batch(strict, [img for _, img, _ in good]) if good else []
    missed = [j for j, (boxes, _) in enumerate(found) if boxes is None]
    for j, result in zip(missed, _detect_batch(relaxed, [_equalise(good[j][1]) for j in missed])):
        found[j] = result
    for j, ((i, _, size), (boxes, probs)) in enumerate(zip(good, found)):
        stage = None if boxes is None else "mtcnn_relaxed" if j in missed else "mtcnn"
        records.append(
            {
                "key": todo[i].digest,
                "size": list(size),
                "stage": stage,
                "boxes": [] if boxes is None else (np.asarray(boxes, dtype=float) / scale).round(1).tolist(),
                "probs": [] if probs is None else np.asarray(probs, dtype=float).round(4).tolist(),
            }
        )
    return records


def run_detection(
    items: list[Item], crop_cfg: CropSettings, det_path: Path, one_at_a_time: bool = False
) -> dict[str, dict]:
    """Detect faces in every item not yet in det_path; each batch's records are appended (and synced) as it ends,
    so an interrupted run resumes after its last whole batch."""
    done = read_detections(det_path)
    todo = list({it.digest: it for it in items if it.digest not in done}.values())
    if not todo:
        return done
    strict, relaxed = make_detectors(crop_cfg)
    batch_size, workers = (1, 0) if one_at_a_time else (crop_cfg.batch_size, crop_cfg.workers)
    loader = DataLoader(
        DecodeDataset(todo, crop_cfg.detect_scale), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    det_path.parent.mkdir(parents=True, exist_ok=True)
    with open(det_path, "a") as out, torch.inference_mode():
        if out.tell() and not det_path.read_bytes().endswith(b"\n"):
            out.write("\n")  # end a line torn by an interrupted run, so the next record starts clean
        for batch in progress(loader, "detect faces", unit="batch", disable=one_at_a_time):
            records = detect_batch(strict, relaxed, batch, todo, crop_cfg.detect_scale)
            out.write("".join(json.dumps(rec) + "\n" for rec in records))
            out.flush()
            os.fsync(out.fileno())
            done.update((rec["key"], rec) for rec in records)
    return done
