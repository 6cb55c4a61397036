"""bench/quality.py without the shared data: a skip message, never a failure; both recipes share what they must."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskcomp.core import labels
from maskcomp.core.context import Context
from maskcomp.core.metrics import macro_f1

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quality import RECIPES, _cell, recipe_config, uncertainty  # noqa: E402

pytestmark = pytest.mark.slow  # trains or runs whole stages


def test_absent_data_is_a_skip_message(tmp_path):
    before = sorted((ROOT / "bench" / "results").iterdir())
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "bench-quality: skipped, no benchmark data" in out.stdout
    assert sorted((ROOT / "bench" / "results").iterdir()) == before


def test_recipes_share_backbone_resolution_epochs_and_folds(tmp_path):
    for gpu in (False, True):
        cfgs = {r: recipe_config(r, tmp_path / "data", tmp_path / r, gpu, []) for r in RECIPES}
        shared = {
            (
                c.model.backbone,
                tuple(c.train.img_size),
                c.train.epochs,
                c.folds.k,
                c.train.batch_size,
                c.train.lr,
            )
            for c in cfgs.values()
        }
        assert len(shared) == 1, shared
        base, ours = cfgs["baseline"], cfgs["ours"]
        assert (base.crop.mode, base.model.head, base.infer.tta) == ("none", "single", ["identity"])
        assert base.folds.oversample.strategy == "none" and not base.ensemble.tune_biases
        assert ours.crop.mode == "mtcnn" and ours.ensemble.tune_biases and len(ours.infer.tta) > 1
        assert base.paths.models != ours.paths.models and base.paths.crops == ours.paths.crops
        ordinal = cfgs["ours_ordinal"]
        assert ordinal.model.head == "ordinal" and ordinal.ensemble.tune_age_cuts == "auto"
        assert {k: v for k, v in ordinal.model_dump().items() if k not in ("model", "experiment", "paths")} == {
            k: v for k, v in ours.model_dump().items() if k not in ("model", "experiment", "paths")
        }


def test_uncertainty_intervals_cover_the_score_and_a_zero_gap():
    rng = np.random.default_rng(0)
    persons = np.repeat([f"p{i}" for i in range(60)], 7)
    y = rng.integers(0, labels.NUM_CLASSES, len(persons))
    pred = np.where(rng.random(len(y)) < 0.6, y, 0)
    oof = pd.DataFrame(np.eye(labels.NUM_CLASSES)[pred], columns=labels.PROB_COLUMNS).assign(label=y, person_id=persons)
    u = uncertainty(y, pred, persons, oof)  # CV and eval are the same predictions here
    lo, hi = u["eval_macro_f1_90ci"]
    assert lo < macro_f1(y, pred) < hi and u["eval_macro_f1_boot_sd"] > 0
    lo, hi = u["eval_minus_cv_90ci"]
    assert lo < 0 < hi
    assert _cell([0.41, 0.5]) == "0.4100 to 0.5000"


def test_noise_benchmark_plants_what_it_reports(sample_root, tmp_path):
    """bench/noise.py's planted copy: links to the original images, folder names that agree with train.csv, the
    planted genders and ages read by the pipeline, incorrect_mask and normal traded for swapped persons."""
    from noise import plant

    from maskcomp.core.config import load_config
    from maskcomp.data.tables import load_train

    planted = plant(sample_root, tmp_path / "noisy", seed=1, counts={"gender": 4, "swap_incorrect_normal": 3, "age": 3})
    assert planted["kind"].value_counts().to_dict() == {"gender": 4, "swap_incorrect_normal": 3, "age": 3}
    noisy = pd.read_csv(tmp_path / "noisy" / "train" / "train.csv", dtype=str).set_index("id")
    clean = pd.read_csv(sample_root / "train" / "train.csv", dtype=str).set_index("id")
    assert (noisy["path"] == noisy.index + "_" + noisy["gender"] + "_" + noisy["race"] + "_" + noisy["age"]).all()
    for row in planted.itertuples():
        if row.kind == "gender":
            assert clean.at[row.person_id, "gender"] == row.old != noisy.at[row.person_id, "gender"] == row.new
        elif row.kind == "age":
            assert (
                labels.age_group(int(row.new)) != labels.age_group(int(row.old))
                and noisy.at[row.person_id, "age"] == row.new
            )
        else:
            folder = tmp_path / "noisy" / "train" / "images" / noisy.at[row.person_id, "path"]
            source = sample_root / "train" / "images" / clean.at[row.person_id, "path"]
            assert next(folder.glob("incorrect_mask.*")).resolve().stem == "normal"
            assert next(folder.glob("normal.*")).resolve().parent == source.resolve()
    images = load_train(Context(load_config(None, [f"paths.data_root={tmp_path / 'noisy'}"])))
    flipped = planted.loc[planted["kind"] == "gender", "person_id"]
    got = images.drop_duplicates("person_id").set_index("person_id").loc[flipped, "gender"]
    assert (got == noisy.loc[flipped, "gender"]).all() and len(images) == len(clean) * 7


def test_the_levers_bench_writes_the_combination_cv_chose_as_a_config(tmp_path):
    """bench/levers.py: only levers whose CV beat ours join the best combination; its config file loads and holds
    their settings, the pseudo-labels pointing where `make ensemble` writes ours' submission."""
    from levers import choose_best, row_overrides, write_best_config

    from maskcomp.core.config import load_config

    results = {"pseudo": {"cv_minus_ours": 0.01}, "background": {"cv_minus_ours": -0.02}, "neighbours": {}}
    best = choose_best(results)
    assert best == ["pseudo"]
    config = ROOT / "configs" / "quality_best_test.yaml"
    try:
        write_best_config(best + ["neighbours"], config)
        cfg = load_config(config, [])
    finally:
        config.unlink(missing_ok=True)
    assert cfg.pseudo.submission == "submissions/quality_ours.csv" and cfg.infer.neighbours is True
    assert cfg.augment.background == 0.0 and cfg.experiment == "quality_ours"
    assert row_overrides("best", tmp_path, {"best": ["background"]}) == [
        "augment.background=0.5",
        "experiment=lever_best",
    ]
    heads = {"mask": "quality_ours", "gender": "lever_background", "age": "quality_ours"}
    override = row_overrides("heads", tmp_path, {"heads": heads})[0]
    assert load_config(None, [override]).ensemble.heads == heads, "a mapping's braces survive the row's settings"
    assert row_overrides("pseudo", tmp_path, {})[:2] == [
        f"pseudo.submission={tmp_path}/submissions/quality_ours.csv",
        "pseudo.threshold=0.7",
    ]


def test_the_data_fingerprint_sees_a_changed_label_or_image_and_nothing_else(tmp_path):
    from common import data_fingerprint

    for name, text in (
        ("train/train.csv", "id\n1\n"),
        ("eval/info.csv", "ImageID\n"),
        ("train/images/a/mask1.jpg", "x"),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    first = data_fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("outside train/ and eval/")
    assert data_fingerprint(tmp_path) == first
    (tmp_path / "train/images/a/mask1.jpg").write_text("y")
    changed = data_fingerprint(tmp_path)
    assert changed["all_files"] != first["all_files"] and changed["train/train.csv"] == first["train/train.csv"]
    (tmp_path / "train/train.csv").write_text("id\n2\n")
    assert data_fingerprint(tmp_path)["train/train.csv"] != first["train/train.csv"]
