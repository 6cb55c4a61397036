import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskcomp.core import labels
from maskcomp.core.config import load_config
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.data.sample import draw_persons, make_sample
from maskcomp.data.tables import drop_age_bands, load_eval, load_train, training_labels

from conftest import SAMPLE_EVAL_PERSONS, SAMPLE_PERSONS, config_for


def first_person_dir(root: Path) -> Path:
    return sorted((root / "train" / "images").iterdir())[0]


def test_train_table_columns_and_labels(sample_root, tmp_path):
    df = load_train(Context(config_for(sample_root, tmp_path)))
    assert len(df) == SAMPLE_PERSONS * 7
    for col in ("image_path", "person_id", "gender", "race", "age", "mask", "gender_label", "age_group", "label"):
        assert col in df
    assert (df.groupby("person_id").size() == 7).all()
    assert (df.groupby("person_id")["mask"].apply(sorted).map(tuple) == (0, 0, 0, 0, 0, 1, 2)).all()
    expected = df["mask"] * 6 + df["gender_label"] * 3 + labels.age_group(df["age"].to_numpy())
    assert np.array_equal(df["label"], expected)
    assert set(df["image_path"].map(lambda p: Path(p).suffix)) <= {".jpg", ".jpeg", ".png"}


def test_eval_table_keeps_info_order(sample_root, tmp_path):
    df = load_eval(Context(config_for(sample_root, tmp_path)))
    info = pd.read_csv(sample_root / "eval" / "info.csv")
    assert df["ImageID"].tolist() == info["ImageID"].tolist()
    assert all(Path(p).is_file() for p in df["image_path"])


def expect_error(root: Path, tmp_path: Path, pattern: str, *overrides: str):
    with pytest.raises(MaskcompError, match=pattern) as err:
        load_train(Context(config_for(root, tmp_path / "work", *overrides)))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_csv(data_copy, tmp_path):
    (data_copy / "train" / "train.csv").unlink()
    expect_error(data_copy, tmp_path, r"train\.csv: missing; put the competition's train.csv there")


def test_missing_column(data_copy, tmp_path):
    csv = data_copy / "train" / "train.csv"
    pd.read_csv(csv, dtype=str).drop(columns="age").to_csv(csv, index=False)
    expect_error(data_copy, tmp_path, r"train\.csv: missing column\(s\) age")


def test_age_not_an_integer(data_copy, tmp_path):
    csv = data_copy / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    df.loc[3, "age"] = "forty"
    df.to_csv(csv, index=False)
    expect_error(data_copy, tmp_path, r"age 'forty' .* \(line 5\) is not a whole number")


def test_person_folder_lacking_an_image(data_copy, tmp_path):
    person = first_person_dir(data_copy)
    next(person.glob("normal.*")).unlink()
    expect_error(data_copy, tmp_path, rf"{person.name}: missing image\(s\) normal")


def test_unknown_file_name(data_copy, tmp_path):
    person = first_person_dir(data_copy)
    shutil.copy(next(person.glob("mask1.*")), person / "mask6.jpg")
    expect_error(data_copy, tmp_path, r"mask6\.jpg: unknown file name")


def test_duplicate_file_names(data_copy, tmp_path):
    person = first_person_dir(data_copy)
    src = next(person.glob("mask1.*"))
    other = ".png" if src.suffix != ".png" else ".jpg"
    shutil.copy(src, person / f"mask1{other}")
    expect_error(data_copy, tmp_path, r"duplicate image 'mask1'")


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_unreadable_image(data_copy, tmp_path, content):
    person = first_person_dir(data_copy)
    target = next(person.glob("mask2.*"))
    target.write_bytes(content)
    expect_error(data_copy, tmp_path, rf"{target.name}: (empty|unreadable)")


def test_skip_bad_writes_list_and_drops_person(data_copy, tmp_path):
    person = first_person_dir(data_copy)
    next(person.glob("mask3.*")).write_bytes(b"")
    cfg = config_for(data_copy, tmp_path / "work", "data.skip_bad=true")
    df = load_train(Context(cfg))
    assert len(df) == (SAMPLE_PERSONS - 1) * 7
    skipped = pd.read_csv(cfg.paths.resolved.reports / "skipped_train.csv")
    assert len(skipped) == 1 and "mask3" in skipped["file"][0]


def test_eval_missing_image(data_copy, tmp_path):
    first = pd.read_csv(data_copy / "eval" / "info.csv")["ImageID"][0]
    (data_copy / "eval" / "images" / first).unlink()
    with pytest.raises(MaskcompError, match="missing"):
        load_eval(Context(config_for(data_copy, tmp_path)))


def test_hidden_files_are_ignored(data_copy, tmp_path):
    person = first_person_dir(data_copy)
    (person / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07")
    (person / ".DS_Store").write_bytes(b"junk")
    assert len(load_train(Context(config_for(data_copy, tmp_path)))) == SAMPLE_PERSONS * 7


def test_duplicated_person_id_survives_as_two_persons(data_copy, tmp_path):
    csv = data_copy / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    df.loc[1, "id"] = df.loc[0, "id"]
    df.to_csv(csv, index=False)
    out = load_train(Context(config_for(data_copy, tmp_path)))
    pid = df.loc[0, "id"]
    assert set(out[out["id"] == pid]["person_id"]) == {pid, f"{pid}-1"}
    assert len(out) == SAMPLE_PERSONS * 7


def test_training_labels_and_age_bands(sample_root, tmp_path):
    df = load_train(Context(config_for(sample_root, tmp_path)))
    moved = training_labels(df, old_threshold=58)
    assert (moved.loc[df["age"].between(58, 59), "age_group"] == 2).all()
    assert (df.loc[df["age"].between(58, 59), "age_group"] == 1).all()
    kept = drop_age_bands(df, [[27, 29], [57, 59]])
    assert not kept["age"].between(27, 29).any() and not kept["age"].between(57, 59).any()
    assert len(kept) == len(df) - (df["age"].between(27, 29) | df["age"].between(57, 59)).sum()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_sample_is_deterministic_by_seed(tmp_path):
    digests = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        root = tmp_path / name
        make_sample(load_config(None, [f"paths.data_root={root}"]).paths.resolved, persons=4, eval_persons=2, seed=seed)
        digests.append(_digest(root))
    assert digests[0] == digests[1] != digests[2]


def test_sample_person_frequencies_mirror_the_competition():
    persons = draw_persons(3000, seed=5)
    assert 0.57 < (persons["gender"] == "female").mean() < 0.65
    groups = np.bincount(labels.age_group(persons["age"].to_numpy()), minlength=3) / len(persons)
    assert 0.05 < groups[2] < 0.11 and groups[2] < groups[0] / 3 and groups[2] < groups[1] / 3


def test_sample_layout(sample_root):
    root = sample_root
    persons = pd.read_csv(root / "train" / "train.csv", dtype=str)
    assert list(persons.columns) == ["id", "gender", "race", "age", "path"]
    images = load_train(Context(load_config(None, [f"paths.data_root={root}"])))
    assert (images["mask"] == 0).mean() == pytest.approx(5 / 7)
    exts = {p.suffix for p in (root / "train" / "images").rglob("*.*")}
    assert exts == {".jpg", ".jpeg", ".png"}
    info = pd.read_csv(root / "eval" / "info.csv", keep_default_na=False)
    assert (
        list(info.columns) == ["ImageID", "ans"] and (info["ans"] == "").all() and len(info) == SAMPLE_EVAL_PERSONS * 7
    )
    assert not (root / "eval" / "eval_answers.csv").exists() and (root / "eval_answers.csv").exists()
    from PIL import Image

    with Image.open(next((root / "eval" / "images").iterdir())) as img:
        assert img.size == (384, 512)
