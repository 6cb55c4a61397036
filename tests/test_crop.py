import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data as skdata

from maskcomp.core.settings import CropSettings
from maskcomp.crop import detect
from maskcomp.crop import stage as crop_stage
from maskcomp.crop.boxes import OUTLIER_PX, choose_box, expand_box, far_from_person, resolve_boxes
from maskcomp.crop.detect import run_detection
from maskcomp.crop.items import Item
from maskcomp.crop.stage import crop_dir, crop_faces, load_crops
from maskcomp.report.crop_page import write_crop_report

from conftest import config_for

CROP_CFG = CropSettings(
    detect_scale=1.0,
    min_face_size=40,
    thresholds=[0.6, 0.7, 0.7],
    relaxed_thresholds=[0.4, 0.5, 0.5],
    batch_size=4,
    workers=0,
    device="cpu",
)


def test_detector_finds_the_astronauts_face(tmp_path):
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    det = run_detection([Item("a.png", "train", str(path), "p", "digest-a")], CROP_CFG, tmp_path / "det.jsonl")[
        "digest-a"
    ]
    assert det["stage"] == "mtcnn"
    x1, y1, x2, y2 = det["boxes"][choose_box(np.array(det["boxes"]), np.array(det["probs"]), *det["size"])]
    # the face of skimage's astronaut lies around x 180-270, y 60-175
    assert x1 < 200 and x2 > 250 and y1 < 90 and y2 > 150 and (x2 - x1) < 140


def test_faceless_image_takes_a_fallback(tmp_path):
    path = tmp_path / "blank.png"
    cv2.imwrite(str(path), np.full((512, 384, 3), 127, np.uint8))
    items = [Item("blank.png", "eval", str(path), "", "digest-blank")]
    dets = run_detection(items, CROP_CFG, tmp_path / "det.jsonl")
    assert dets["digest-blank"]["stage"] is None
    recs = crop_stage.write_crops(
        resolve_boxes(items, dets, CropSettings(mode="mtcnn")),
        CropSettings(mode="mtcnn", margin=0.2, aspect=0.75, center_box=[0.1, 0.1, 0.9, 0.8]),
        tmp_path / "c",
    )
    assert recs.loc[0, "source"] == "center"
    assert cv2.imread(recs.loc[0, "crop_path"]).shape[:2] == (
        recs.loc[0, "y2"] - recs.loc[0, "y1"],
        recs.loc[0, "x2"] - recs.loc[0, "x1"],
    )


def test_box_policy_prefers_large_central_confident_face():
    boxes = np.array([[10, 10, 40, 40], [150, 150, 250, 270], [300, 10, 380, 90]], float)
    assert choose_box(boxes, np.array([0.99, 0.95, 0.99]), 384, 512) == 1


@pytest.mark.parametrize("box", [[100, 100, 200, 230], [0, 0, 50, 400], [300, 450, 384, 512]])
def test_expanded_box_has_aspect_and_stays_inside(box):
    x1, y1, x2, y2 = expand_box(box, 384, 512, margin=0.3, aspect=0.75)
    assert 0 <= x1 < x2 <= 384 and 0 <= y1 < y2 <= 512
    assert (x2 - x1) / (y2 - y1) == pytest.approx(0.75, abs=0.02)


def test_a_box_far_from_the_persons_others_is_listed_and_optionally_replaced_by_their_median():
    """Six photos of a person with the face at the same place and one whose box found the neck, 250 px lower."""
    items = [Item(f"train/images/p1/mask{i}.jpg", "train", f"/d/p1/mask{i}.jpg", "p1", f"d{i}") for i in range(7)]
    boxes = [[100 + i, 100, 200 + i, 230] for i in range(6)] + [[100, 350, 200, 480]]
    detections = {f"d{i}": {"boxes": [b], "probs": [0.99], "size": (384, 512), "stage": "mtcnn"} for i, b in
                  enumerate(boxes)}  # fmt: skip
    kept = resolve_boxes(items, detections, CROP_CFG)
    corners = pd.DataFrame(kept["box"].tolist(), columns=["x1", "y1", "x2", "y2"]).assign(person_id="p1")
    distance = far_from_person(corners)
    assert (distance > OUTLIER_PX).tolist() == [False] * 6 + [True] and kept["source"].eq("mtcnn").all()
    replaced = resolve_boxes(items, detections, CROP_CFG.model_copy(update={"outlier_fallback": True}))
    assert replaced["source"].tolist() == ["mtcnn"] * 6 + ["person_outlier"]
    assert replaced.at[6, "box"] == [102.0, 100.0, 202.0, 230.0]  # the person's median box (of all 7)


@pytest.mark.slow
def test_crop_stage_records_resume_and_invalidation(tiny_root, tmp_path, monkeypatch):
    cfg = config_for(tiny_root, tmp_path, "crop.workers=0")
    records = crop_faces(cfg)
    write_crop_report(cfg, records, 1.0)
    n_images = 6 * 7 + 2 * 7
    assert len(records) == n_images
    saved = load_crops(cfg)
    assert len(saved) == n_images and set(saved["source"]) <= {"mtcnn", "mtcnn_relaxed", "person", "median", "center"}
    assert saved["source"].isin(["mtcnn", "mtcnn_relaxed"]).any() and (saved["source"] == "person").any()
    for col in ("split", "person_id", "source", "score", "x1", "y1", "x2", "y2", "crop_path"):
        assert col in saved
    detected = saved["source"].isin(["mtcnn", "mtcnn_relaxed"])
    assert saved.loc[detected, "score"].astype(float).between(0, 1).all()
    report = cfg.paths.resolved.reports / "crop"
    assert (report / "random_crops.jpg").exists() and (report / "fallback_crops.jpg").exists()
    relaxed = records.assign(source="mtcnn")
    relaxed.loc[relaxed.index[:3], "source"] = "mtcnn_relaxed"  # found only at relaxed thresholds: shown apart
    write_crop_report(cfg, relaxed, 1.0)
    page = (report / "index.html").read_text()
    assert (report / "relaxed_crops.jpg").exists() and "3 faces found only at relaxed thresholds" in page
    far = relaxed.index[relaxed["person_id"] != ""][0]
    relaxed.loc[far, ["face_y1", "face_y2"]] += 300  # a box found on the neck: listed apart, by name
    write_crop_report(cfg, relaxed, 1.0)
    page = (report / "index.html").read_text()
    assert (
        "Boxes far from the person" in page and relaxed.at[far, "key"] in page and (report / "far_boxes.jpg").exists()
    )
    write_crop_report(cfg, relaxed.assign(source="mtcnn"), 1.0)
    assert (
        not (report / "relaxed_crops.jpg").exists() and "Relaxed detections" not in (report / "index.html").read_text()
    )
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["detection_rate"]["train"]) == {"all", "wear", "incorrect", "not_wear"}

    # an interrupted run: the last 5 detections never made it, the last line is torn, two crops are gone
    det_file = next(cfg.paths.resolved.crops.glob("det-*/detections.jsonl"))
    lines = det_file.read_text().splitlines()
    det_file.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])
    gone = saved["crop_path"].iloc[:2].tolist()
    for p in gone:
        os.unlink(p)
    calls = []  # images through the strict detector (the relaxed retry of misses also goes through _detect_batch)
    original = detect._detect_batch
    relaxed = list(cfg.crop.relaxed_thresholds)
    monkeypatch.setattr(
        detect,
        "_detect_batch",
        lambda det, imgs: (list(det.thresholds) != relaxed and calls.append(len(imgs))) or original(det, imgs),
    )
    again = crop_faces(cfg)
    assert sum(calls) == 5
    assert all(os.path.exists(p) for p in gone)
    assert again[["x1", "y1", "x2", "y2"]].equals(records[["x1", "y1", "x2", "y2"]])

    # a new margin re-crops from cached detections; new thresholds run the detector again
    calls.clear()
    wider = config_for(tiny_root, tmp_path, "crop.workers=0", "crop.margin=0.4")
    crop_faces(wider)
    assert sum(calls) == 0 and crop_dir(wider) != crop_dir(cfg)
    stricter = config_for(tiny_root, tmp_path, "crop.workers=0", "crop.thresholds=[0.7, 0.8, 0.8]")
    crop_faces(stricter)
    assert sum(calls) == n_images


@pytest.mark.parametrize("mode,source", [("center", "center"), ("none", "none")])
def test_crop_modes(tiny_root, tmp_path, mode, source):
    cfg = config_for(tiny_root, tmp_path, f"crop.mode={mode}")
    recs = crop_faces(cfg)
    assert (recs["source"] == source).all()
    if mode == "none":
        assert (recs["x2"] == 384).all() and (recs["y2"] == 512).all()


def test_unreadable_image_is_listed_not_fatal(tiny_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    victim = next((root / "eval" / "images").iterdir())
    victim.write_bytes(b"")
    # the data layer's check is off, so the broken file reaches the crop stage itself
    cfg = config_for(root, tmp_path / "w", "crop.mode=center", "data.image_check=none")
    crop_faces(cfg)
    listed = pd.read_csv(cfg.paths.resolved.reports / "crop" / "unreadable_images.csv")
    assert listed["image_path"].tolist() == [str(victim)]
    assert str(victim) not in load_crops(cfg).index


def test_a_crop_setting_added_later_keeps_the_crop_folders_made_before():
    from maskcomp.core.config import load_config
    from maskcomp.crop.stage import crop_hash

    crop = load_config("configs/sample.yaml").crop
    assert crop_hash(crop) == "0ed9d64e97"  # the name every crop folder of this config had before outlier_fallback
    assert crop_hash(crop.model_copy(update={"outlier_fallback": True})) != "0ed9d64e97"
