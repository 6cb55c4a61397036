"""Bad input answered in one line (or handled and recorded), never a traceback or a silent guess."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.crop.stage import crop_faces, load_crops
from maskcomp.data.folds import make_folds
from maskcomp.data.tables import load_eval, load_train
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

ROOT = Path(__file__).resolve().parent.parent
TINY = (*TINY_MODEL, "train.epochs=1")


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "data"))


def test_tiny_images_take_a_recorded_fallback_in_the_mtcnn_stage(tiny_copy, tmp_path):
    train_image = sorted((tiny_copy / "train" / "images").rglob("mask2.*"))[0]
    eval_image = sorted((tiny_copy / "eval" / "images").iterdir())[0]
    cv2.imwrite(str(train_image), np.full((10, 10, 3), 128, np.uint8))
    cv2.imwrite(str(eval_image.with_suffix(".tmp.png")), np.full((40, 30, 3), 90, np.uint8))
    os.replace(eval_image.with_suffix(".tmp.png"), eval_image)
    cfg = config_for(tiny_copy, tmp_path / "w", "crop.mode=mtcnn", "crop.workers=0")
    crop_faces(cfg)
    records = load_crops(cfg)
    assert records.loc[str(train_image), "source"] == "person"
    assert records.loc[str(eval_image), "source"] == "median"
    crop = cv2.imread(records.loc[str(eval_image), "crop_path"])
    assert crop is not None and crop.shape[0] <= 40 and crop.shape[1] <= 30


def test_truncated_jpeg_is_caught_by_the_default_check(tiny_copy, tmp_path):
    victim = next(p for p in sorted((tiny_copy / "train" / "images").rglob("*.jpg")))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        MaskcompError, match=rf"{victim.name}: truncated image \(its end marker is missing\); replace the file"
    ):
        load_train(Context(config_for(tiny_copy, tmp_path / "w")))
    skipped = load_train(Context(config_for(tiny_copy, tmp_path / "w", "data.skip_bad=true")))
    assert victim.parent.name not in set(skipped["image_path"].map(lambda p: Path(p).parent.name))
    listed = pd.read_csv(tmp_path / "w" / "reports" / "skipped_train.csv")
    assert listed["reason"].str.contains("truncated").any()


def test_truncated_png_is_caught_and_complete_files_pass(tiny_copy, tmp_path):
    png = next(p for p in sorted((tiny_copy / "train" / "images").rglob("*.png")))
    assert len(load_train(Context(config_for(tiny_copy, tmp_path / "w")))) == 6 * 7
    png.write_bytes(png.read_bytes()[:-20])
    with pytest.raises(MaskcompError, match=rf"{png.name}: truncated image"):
        load_train(Context(config_for(tiny_copy, tmp_path / "w")))


def test_drop_age_bands_that_empty_a_training_split_stop_training(tiny_copy, tmp_path):
    cfg = config_for(tiny_copy, tmp_path / "w", *TINY, "train.drop_age_bands=[[0, 120]]")
    crop_faces(cfg)
    make_folds(cfg)
    with pytest.raises(
        MaskcompError, match=r"fold 0: no training image is left after train.drop_age_bands=\[\[0, 120\]\]"
    ):
        train(cfg, folds=[0])


def test_header_only_info_csv_is_one_line(tiny_copy, tmp_path):
    (tiny_copy / "eval" / "info.csv").write_text("ImageID,ans\n")
    with pytest.raises(MaskcompError, match=r"info.csv: no rows \(only a header\); restore the competition's info.csv"):
        load_eval(Context(config_for(tiny_copy, tmp_path / "w")))


def test_sample_into_an_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [
            sys.executable,
            "preprocess/make_sample.py",
            "--config",
            "configs/sample.yaml",
            f"paths.data_root={blocker / 'data'}",
            "sample.persons=2",
            "sample.eval_persons=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {blocker / 'data'}: cannot write there (Not a directory); "
        "choose a writable folder (DATA=... or paths.*)"
    ]


@pytest.mark.parametrize("encoding,logged", [("cp949", "read as CP949"), ("utf-8-sig", "read as UTF-8 with BOM")])
def test_train_csv_saved_by_korean_excel_is_read(tiny_copy, tmp_path, caplog, encoding, logged):
    csv = tiny_copy / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str)
    persons["race"] = "아시아인"
    csv.write_bytes(persons.to_csv(index=False).encode(encoding))
    with caplog.at_level(logging.INFO, logger="maskcomp.data.csvfiles"):
        df = load_train(Context(config_for(tiny_copy, tmp_path / "w")))
    assert (df["race"] == "아시아인").all()
    assert any(logged in r.getMessage() and "train.csv" in r.getMessage() for r in caplog.records)


def test_undecodable_train_csv_is_one_line(tiny_copy, tmp_path):
    (tiny_copy / "train" / "train.csv").write_bytes(b"id,gender,race,age,path\n\xff\xfe\xfa\n")
    with pytest.raises(MaskcompError, match="train.csv: neither UTF-8 nor CP949 text; save it again as UTF-8 CSV"):
        load_train(Context(config_for(tiny_copy, tmp_path / "w")))


def test_implausible_age_is_named_in_a_warning(tiny_copy, tmp_path, caplog):
    csv = tiny_copy / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str)
    persons.loc[2, "age"] = "200"
    persons.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="maskcomp.data.tables"):
        load_train(Context(config_for(tiny_copy, tmp_path / "w")))
    assert [r.getMessage() for r in caplog.records if "outside 0-120" in r.getMessage()] == [
        f"{csv}: age 200 of person {persons.loc[2, 'id']} (line 4) is outside 0-120; check it (it is used as given)"
    ]


def _fake_make_tree(tmp_path: Path, import_ok: bool) -> tuple[Path, Path]:
    """A copy of the Makefile with a stand-in python that logs its calls (setup's decisions, without pip)."""
    tree = tmp_path / "tree"
    tree.mkdir(parents=True)
    for name in ("Makefile", "requirements.txt", "requirements-nodeps.txt"):
        shutil.copy(ROOT / name, tree / name)
    log = tmp_path / "calls.log"
    fake = tree / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = "-I" ] && exit {0 if import_ok else 1}\nexit 0\n')
    fake.chmod(0o755)
    return tree, log


def test_setup_is_keyed_on_requirement_content_not_mtime(tmp_path):
    tree, log = _fake_make_tree(tmp_path, import_ok=True)
    subprocess.run(["make", "-s", "setup"], cwd=tree, check=True, capture_output=True)
    assert "-m pip install -q -r requirements.txt" in log.read_text()
    log.write_text("")
    os.utime(tree / "requirements.txt")  # a copied tree: newer mtime, same content
    subprocess.run(["make", "-s", "setup"], cwd=tree, check=True, capture_output=True)
    assert "pip install" not in log.read_text()
    with open(tree / "requirements.txt", "a") as fh:
        fh.write("# changed\n")
    subprocess.run(["make", "-s", "setup"], cwd=tree, check=True, capture_output=True)
    assert "-m pip install -q -r requirements.txt" in log.read_text()


def test_setup_repairs_an_install_that_no_longer_imports(tmp_path):
    tree, log = _fake_make_tree(tmp_path, import_ok=True)
    subprocess.run(["make", "-s", "setup"], cwd=tree, check=True, capture_output=True)
    tree2, log2 = _fake_make_tree(tmp_path / "broken", import_ok=False)
    stamp = next((tree / ".venv").glob(".installed-*"))
    shutil.copy(stamp, tree2 / ".venv" / stamp.name)
    proc = subprocess.run(["make", "-s", "setup"], cwd=tree2, check=True, capture_output=True, text=True)
    assert "maskcomp does not import from" in proc.stdout
    assert log2.read_text().splitlines()[-1] == "-m pip install -q --no-deps -e ."
    assert "install -q -r requirements.txt" not in log2.read_text()
