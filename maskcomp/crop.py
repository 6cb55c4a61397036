"""Face crops for every train and eval image (facenet-pytorch MTCNN), cached, resumable, with fallbacks.

Layout under paths.crops:
  det-<hash>/detections.jsonl   raw MTCNN boxes per image content (SHA-256 of the file; appended per batch,
                                a torn last line is ignored)
  crop-<hash>/<split>/<name>-<digest>.jpg  the crops; crop-<hash>/records.csv one record per image;
                                crop-<hash>/manifest.json what they were made from
The detection hash covers the detector settings only, the crop hash also margin/aspect/mode, so
changing the margin re-crops from cached detections without running the detector again. Detections
and crop files are keyed by the image's content, so an image replaced in place is detected and cut anew.

Box policy: among an image's detections the subject is the one maximising
  probability x sqrt(box area / image area) x (1 - distance of box centre from image centre / half diagonal),
i.e. a confident, large, central face (bystanders are small and off-centre).
Fallbacks, in order: relaxed thresholds on a contrast-equalised copy (`mtcnn_relaxed`); the median
box of the same person's detected images (`person`, the 7 photos share camera and pose); the
median detected box of the training images (`median`); the configured centre box (`center`).
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import htmlpage, labels, plots
from .config import Config
from .data import load_eval, load_train
from .device import resolve_device
from .errors import MaskcompError
from .fileio import atomic_path, write_csv, write_json, write_text
from .manifest import MANIFEST, Manifest, config_keys, digest_cache, digest_of, differences, is_current, write_manifest
from .paths import Paths

log = logging.getLogger(__name__)

DETECTOR_KEYS = ("detect_scale", "min_face_size", "thresholds", "relaxed_thresholds")
CROP_KEYS = ("mode", "margin", "aspect", "center_box")
SOURCES = ("mtcnn", "mtcnn_relaxed", "person", "median", "center", "none")
DIGEST_CHARS = 16
LOW_DETECTION_RATE = 0.5   # below this share of detected faces in a split, the crop stage warns


def _hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def detector_hash(crop_cfg: dict) -> str:
    return _hash({k: crop_cfg[k] for k in DETECTOR_KEYS})


def crop_hash(crop_cfg: dict) -> str:
    keys = CROP_KEYS + (DETECTOR_KEYS if crop_cfg["mode"] == "mtcnn" else ())
    return _hash({k: crop_cfg[k] for k in keys})


def crop_dir(cfg: Config) -> Path:
    return Paths.from_config(cfg).crops / f"crop-{crop_hash(cfg['crop'])}"


def read_image_rgb(path: str) -> np.ndarray | None:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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


@dataclass
class Item:
    """One image to crop; `digest` (SHA-256 of its bytes) keys its detection and its crop file."""

    key: str
    split: str
    image_path: str
    person_id: str
    digest: str


def list_items(cfg: Config) -> list[Item]:
    paths = Paths.from_config(cfg)
    train = load_train(cfg)
    evals = load_eval(cfg)
    cache = digest_cache(cfg)
    listed = [(p, "train", pid) for p, pid in zip(train["image_path"], train["person_id"])]
    listed += [(p, "eval", "") for p in evals["image_path"]]
    digests = cache.digests([p for p, _, _ in listed], "images")
    cache.save()
    return [Item(str(Path(p).relative_to(paths.data_root)), split, p, pid, d)
            for (p, split, pid), d in zip(listed, digests)]


def crop_manifest(cfg: Config, items: list[Item]) -> Manifest:
    """What the crops depend on: every image's place, person and content per split, and the crop settings."""
    inputs = {split: digest_of([(it.key, it.person_id, it.digest) for it in items if it.split == split])
              for split in ("train", "eval")}
    return Manifest("crop", inputs, config_keys(cfg, "crop"))


def train_crops_digest(crops: dict) -> str:
    """What the training crops depend on (training images and crop settings; eval images never enter them)."""
    return digest_of([crops["inputs"]["train"], crops["config"]])


def require_current_crops(cfg: Config) -> dict:
    """The crop manifest on disk, after checking that it matches the current images and crop settings."""
    folder = crop_dir(cfg)
    manifest = crop_manifest(cfg, list_items(cfg))
    if not is_current(folder, manifest):
        changed = ", ".join(differences(folder, manifest))
        raise MaskcompError(f"{folder}: crops were made from other images or settings ({changed}); run `make crop` first")
    return manifest.as_dict()


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


def make_detectors(crop_cfg: dict):
    from facenet_pytorch import MTCNN

    device = resolve_device(crop_cfg["device"], "crop.device")
    min_size = max(12, int(crop_cfg["min_face_size"] * crop_cfg["detect_scale"]))
    strict = MTCNN(keep_all=True, min_face_size=min_size, thresholds=list(crop_cfg["thresholds"]), device=device)
    relaxed = MTCNN(keep_all=True, min_face_size=max(12, min_size // 2), thresholds=list(crop_cfg["relaxed_thresholds"]), device=device)
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


def run_detection(items: list[Item], crop_cfg: dict, det_path: Path, one_at_a_time: bool = False) -> dict[str, dict]:
    """Detect faces in every item not yet in det_path; append results batch by batch."""
    done = read_detections(det_path)
    todo = list({it.digest: it for it in items if it.digest not in done}.values())
    if not todo:
        return done
    strict, relaxed = make_detectors(crop_cfg)
    scale = crop_cfg["detect_scale"]
    batch_size = 1 if one_at_a_time else crop_cfg["batch_size"]
    workers = 0 if one_at_a_time else crop_cfg["workers"]
    loader = DataLoader(DecodeDataset(todo, scale), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    det_path.parent.mkdir(parents=True, exist_ok=True)
    with open(det_path, "a") as out, torch.inference_mode():
        if out.tell() and not det_path.read_bytes().endswith(b"\n"):
            out.write("\n")  # end a line torn by an interrupted run, so the next record starts clean
        for batch in tqdm(loader, desc="detect faces", unit="batch", disable=one_at_a_time):
            good = [(i, img, size) for i, img, size in batch if img is not None]
            lines = [json.dumps({"key": todo[i].digest, "unreadable": True}) for i, img, _ in batch if img is None]
            found = _detect_batch(strict, [img for _, img, _ in good]) if good else []
            # the misses (mostly masked faces) get the relaxed pass together, as one more batch
            missed = [j for j, (boxes, _) in enumerate(found) if boxes is None]
            for j, result in zip(missed, _detect_batch(relaxed, [_equalise(good[j][1]) for j in missed])):
                found[j] = result
            missed = set(missed)
            for j, ((i, img, size), (boxes, probs)) in enumerate(zip(good, found)):
                stage = "mtcnn_relaxed" if j in missed else "mtcnn"
                rec = {"key": todo[i].digest, "size": list(size), "stage": stage if boxes is not None else None,
                       "boxes": [] if boxes is None else (np.asarray(boxes, dtype=float) / scale).round(1).tolist(),
                       "probs": [] if probs is None else np.asarray(probs, dtype=float).round(4).tolist()}
                lines.append(json.dumps(rec))
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
            for line in lines:
                rec = json.loads(line)
                done[rec["key"]] = rec
    return done


def resolve_boxes(items: list[Item], detections: dict[str, dict], crop_cfg: dict) -> pd.DataFrame:
    """One record per item: the chosen raw box, its source and score (fallbacks applied)."""
    rows = []
    for it in items:
        det = detections.get(it.digest, {})
        row = {"key": it.key, "digest": it.digest, "split": it.split, "image_path": it.image_path, "person_id": it.person_id,
               "source": None, "score": np.nan, "box": None, "unreadable": bool(det.get("unreadable"))}
        if det.get("boxes"):
            boxes, probs = np.array(det["boxes"]), np.array(det["probs"])
            k = choose_box(boxes, probs, *det["size"])
            row.update(source=det["stage"], score=float(probs[k]), box=boxes[k].tolist())
        rows.append(row)
    df = pd.DataFrame(rows)
    found = df["box"].notna()
    boxes = np.array(df.loc[found, "box"].tolist()) if found.any() else np.zeros((0, 4))
    person_median = (pd.DataFrame(boxes, index=df.index[found]).groupby(df.loc[found, "person_id"]).median()
                     if found.any() else pd.DataFrame())
    # the dataset median comes from training images only, so training crops never depend on the eval set
    train_boxes = np.array(df.loc[found & (df["split"] == "train"), "box"].tolist()).reshape(-1, 4)
    pool = train_boxes if len(train_boxes) else boxes
    dataset_median = np.median(pool, axis=0).tolist() if len(pool) else None
    for i in df.index[~found & ~df["unreadable"]]:
        pid = df.at[i, "person_id"]
        if pid and pid in person_median.index:
            df.at[i, "box"], df.at[i, "source"] = person_median.loc[pid].tolist(), "person"
        elif dataset_median is not None:
            df.at[i, "box"], df.at[i, "source"] = dataset_median, "median"
    return df


def _fixed_box(crop_cfg: dict, width: int, height: int) -> list[float]:
    if crop_cfg["mode"] == "none":
        return [0, 0, width, height]
    x1, y1, x2, y2 = crop_cfg["center_box"]
    return [x1 * width, y1 * height, x2 * width, y2 * height]


def crop_name(key: str, digest: str) -> str:
    return f"{key.replace('/', '__').rsplit('.', 1)[0]}-{digest[:DIGEST_CHARS]}.jpg"


def write_crops(records: pd.DataFrame, crop_cfg: dict, out_dir: Path) -> pd.DataFrame:
    """Cut and save every crop not yet on disk; fill crop box and path columns."""
    out = records.copy()
    out["x1"] = out["y1"] = out["x2"] = out["y2"] = -1
    out["crop_path"] = ""
    bad = []
    for i in tqdm(out.index, desc="write crops", unit="img"):
        if out.at[i, "unreadable"]:
            bad.append(out.at[i, "image_path"])
            continue
        target = out_dir / out.at[i, "split"] / crop_name(out.at[i, "key"], out.at[i, "digest"])
        img = None
        if out.at[i, "box"] is None or not target.exists():
            img = read_image_rgb(out.at[i, "image_path"])
            if img is None:
                bad.append(out.at[i, "image_path"])
                out.at[i, "unreadable"] = True
                continue
        if out.at[i, "box"] is None:
            height, width = img.shape[:2]
            out.at[i, "box"] = _fixed_box(crop_cfg, width, height)
            out.at[i, "source"] = "none" if crop_cfg["mode"] == "none" else "center"
        width, height = _image_size(out.at[i, "image_path"], img)
        aspect = crop_cfg["aspect"]
        margin = crop_cfg["margin"] if out.at[i, "source"] not in ("center", "none") else 0.0
        x1, y1, x2, y2 = (map(int, out.at[i, "box"]) if out.at[i, "source"] == "none"
                          else expand_box(out.at[i, "box"], width, height, margin, aspect))
        out.loc[i, ["x1", "y1", "x2", "y2"]] = [x1, y1, x2, y2]
        out.at[i, "crop_path"] = str(target)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:  # the temporary name keeps the .jpg suffix that cv2 needs
                if not cv2.imwrite(str(tmp), cv2.cvtColor(img[y1:y2, x1:x2], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise MaskcompError(f"{target}: could not write the crop; check free disk space and permissions")
    out.attrs["bad"] = bad
    return out


def _image_size(path: str, img: np.ndarray | None) -> tuple[int, int]:
    if img is not None:
        return img.shape[1], img.shape[0]
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def crop_faces(cfg: Config) -> pd.DataFrame:
    """Run the crop stage; returns the per-image records (also in crop-<hash>/records.csv)."""
    crop_cfg = cfg["crop"]
    if crop_cfg["mode"] not in ("mtcnn", "center", "none"):
        raise MaskcompError(f"crop.mode '{crop_cfg['mode']}' is unknown; use mtcnn, center or none")
    paths = Paths.from_config(cfg)
    start = time.perf_counter()
    items = list_items(cfg)
    out_dir = crop_dir(cfg)
    if crop_cfg["mode"] == "mtcnn":
        det_path = paths.crops / f"det-{detector_hash(crop_cfg)}" / "detections.jsonl"
        detections = run_detection(items, crop_cfg, det_path)
    else:
        detections = {}
    (out_dir / MANIFEST).unlink(missing_ok=True)  # records.csv is about to change; no manifest may vouch for it meanwhile
    records = write_crops(resolve_boxes(items, detections, crop_cfg), crop_cfg, out_dir)
    bad = records.attrs["bad"]
    columns = ["key", "digest", "split", "image_path", "person_id", "source", "score", "x1", "y1", "x2", "y2", "crop_path"]
    write_csv(records.loc[~records["unreadable"], columns], out_dir / "records.csv")
    write_manifest(out_dir, crop_manifest(cfg, items))
    if bad:
        write_csv(pd.DataFrame({"image_path": bad}), paths.reports / "crop" / "unreadable_images.csv")
        log.warning("%d unreadable image(s) got no crop; list in %s", len(bad), paths.reports / "crop" / "unreadable_images.csv")
    write_crop_report(cfg, records, time.perf_counter() - start)
    log.info("crops and records.csv in %s", out_dir)
    return records


def _eval_mask_status(cfg: Config, records: pd.DataFrame) -> pd.Series:
    """Mask status per record: from the data layer for train, from eval answers when they exist."""
    status = pd.Series(np.nan, index=records.index)
    train = records["split"] == "train"
    stems = records.loc[train, "image_path"].map(lambda p: Path(p).stem)
    status[train] = stems.map(labels.IMAGE_MASK_STATUS)
    answers = Paths.from_config(cfg).eval_answers
    if answers.exists():
        truth = pd.read_csv(answers, dtype={"ImageID": str}).set_index("ImageID")["ans"]
        ids = records.loc[~train, "image_path"].map(lambda p: Path(p).name)
        status[~train] = ids.map(truth).map(lambda a: labels.decode(int(a))[0] if pd.notna(a) else np.nan)
    return status


def write_crop_report(cfg: Config, records: pd.DataFrame, seconds: float) -> Path:
    out = Paths.from_config(cfg).reports / "crop"
    recs = records[~records["unreadable"]].copy()
    recs["mask_status"] = _eval_mask_status(cfg, recs)
    recs["detected"] = recs["source"].isin(["mtcnn", "mtcnn_relaxed"])
    rates = {}
    for split, grp in recs.groupby("split"):
        rates[split] = {"all": float(grp["detected"].mean())}
        for status, sub in grp.dropna(subset=["mask_status"]).groupby("mask_status"):
            rates[split][labels.MASK_NAMES[int(status)]] = float(sub["detected"].mean())
    summary = {"mode": cfg["crop"]["mode"], "images": int(len(records)), "unreadable": int(records["unreadable"].sum()),
               "seconds": round(seconds, 2), "detection_rate": rates,
               "sources": {k: int(v) for k, v in recs["source"].value_counts().items()}}
    write_json(summary, out / "summary.json")
    lines = ["# Crop report", "", f"- mode: {summary['mode']}; images: {summary['images']}; unreadable: {summary['unreadable']}; "
             f"time: {seconds:.1f} s", "", "| split | " + " | ".join(("all",) + labels.MASK_NAMES) + " |",
             "|---|---|---|---|---|"]
    for split, r in rates.items():
        lines.append(f"| {split} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in ("all",) + labels.MASK_NAMES) + " |")
    lines += ["", "Sources: " + ", ".join(f"{k}: {v}" for k, v in summary["sources"].items())]
    write_text("\n".join(lines) + "\n", out / "summary.md")
    rng = np.random.default_rng(0)
    for name, subset in (("random_crops", recs), ("fallback_crops", recs[~recs["detected"]])):
        pick = subset.iloc[rng.permutation(len(subset))[:24]]
        images = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in pick["crop_path"]]
        captions = [f"{src}" + (f" p={sc:.2f}" if sc == sc else "") for src, sc in zip(pick["source"], pick["score"])]
        plots.image_grid(images, captions, name.replace("_", " "),
                         out / f"{name}.png")
    table = pd.DataFrame([{"split": split, **{k: round(r[k], 3) if k in r else None for k in ("all",) + labels.MASK_NAMES}}
                          for split, r in rates.items()])
    sections = [htmlpage.Section("Detection rate", ["<p>Share of images where MTCNN found the face (columns: all images, "
                                                    "then by mask status; eval by status only when eval answers exist).</p>",
                                                    htmlpage.table(table), "<p>Sources: " + html.escape(lines[-1].removeprefix("Sources: ")) + "</p>"]),
                htmlpage.Section("Random crops", [htmlpage.image("random_crops.png", "random crops")]),
                htmlpage.Section("Fallback crops", ["<p>Images without a detected face, cropped with the fallback box.</p>",
                                                    htmlpage.image("fallback_crops.png", "fallback crops")])]
    htmlpage.render("Crop report", [f"mode {summary['mode']}; {summary['images']} images; {summary['unreadable']} unreadable; "
                                    f"{seconds:.1f} s"], sections, out / "index.html")
    log.info("crop report in %s; faces detected: %s", out / "index.html", ", ".join(f"{k} {v['all']:.1%}" for k, v in rates.items()))
    fallbacks = int((~recs["detected"]).sum())
    if cfg["crop"]["mode"] == "mtcnn" and any(v["all"] < LOW_DETECTION_RATE for v in rates.values()):
        log.warning("%d of %d crops come from fallback boxes (detection below %.0f%% in some split); look at %s before "
                    "training", fallbacks, len(recs), 100 * LOW_DETECTION_RATE, out / "fallback_crops.png")
    return out


def load_crops(cfg: Config) -> pd.DataFrame:
    """The crop records for the current crop config, indexed by original image path."""
    path = crop_dir(cfg) / "records.csv"
    if not path.exists():
        raise MaskcompError(f"{path}: no crops for this crop config; run `make crop` (or preprocess/crop_faces.py) first")
    return pd.read_csv(path, dtype={"person_id": str}, keep_default_na=False).set_index("image_path")
