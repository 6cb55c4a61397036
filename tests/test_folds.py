import numpy as np
import pandas as pd
import pytest

from maskcomp.core.config import load_config, updated
from maskcomp.core.context import Context
from maskcomp.core.errors import MaskcompError
from maskcomp.data.folds import load_folds, make_folds, oversample, split_fold
from maskcomp.data.tables import load_train

from conftest import SAMPLE_PERSONS, config_for


@pytest.fixture
def folds_cfg(sample_root, tmp_path):
    return config_for(sample_root, tmp_path, "folds.k=4")


def test_no_person_in_two_folds_and_strata_balanced(folds_cfg):
    persons = make_folds(folds_cfg)
    assert persons["person_id"].is_unique and len(persons) == SAMPLE_PERSONS
    images = load_train(Context(folds_cfg))
    fold_of_image = load_folds(folds_cfg, images)
    assert (images.assign(fold=fold_of_image).groupby("person_id")["fold"].nunique() == 1).all()
    assert set(fold_of_image) == {0, 1, 2, 3}
    strata = persons["gender_label"] * 3 + persons["age_group"]
    for s in strata.unique():
        per_fold = persons[strata == s].groupby("fold").size().reindex(range(4), fill_value=0)
        assert per_fold.max() - per_fold.min() <= 1, f"stratum {s} unbalanced: {per_fold.tolist()}"
    assert (folds_cfg.paths.resolved.folds.with_name("fold_summary.csv")).exists()


def test_folds_reproducible_and_seed_sensitive(folds_cfg, sample_root, tmp_path):
    make_folds(folds_cfg)
    first = folds_cfg.paths.resolved.folds.read_bytes()
    make_folds(folds_cfg)
    assert folds_cfg.paths.resolved.folds.read_bytes() == first
    other = config_for(sample_root, tmp_path / "o", "folds.k=4", "folds.seed=7")
    make_folds(other)
    assert other.paths.resolved.folds.read_bytes() != first


def test_noop_fix_file_keeps_folds_identical(folds_cfg, sample_root, tmp_path):
    make_folds(folds_cfg)
    first = folds_cfg.paths.resolved.folds.read_bytes()
    empty = tmp_path / "fixes.csv"
    empty.write_text("person_id,fix,value,note\n")
    cfg = config_for(sample_root, tmp_path, "folds.k=4", f"data.label_fixes=[{empty}]")
    make_folds(cfg)
    assert cfg.paths.resolved.folds.read_bytes() == first


def test_label_fixes_applied_including_swap(sample_root, tmp_path):
    before = load_train(Context(config_for(sample_root, tmp_path)))
    p = before["person_id"].iloc[0]
    old_gender = before.loc[before["person_id"] == p, "gender"].iloc[0]
    new_gender = "male" if old_gender == "female" else "female"
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"person_id,fix,value,note\n{p},gender,{new_gender},\n{p},age,61,\n{p},swap_incorrect_normal,,\n")
    cfg = config_for(sample_root, tmp_path, f"data.label_fixes=[{fixes}]")
    after = load_train(Context(cfg))
    mine, theirs = after[after["person_id"] == p], before[before["person_id"] == p]
    assert (mine["gender"] == new_gender).all() and (mine["age"] == 61).all() and (mine["age_group"] == 2).all()
    assert mine.set_index("stem")["mask"].to_dict() == {
        **theirs.set_index("stem")["mask"].to_dict(),
        "incorrect_mask": 2,
        "normal": 1,
    }
    others = after["person_id"] != p
    assert after[others].reset_index(drop=True).equals(before[before["person_id"] != p].reset_index(drop=True))
    persons = make_folds(cfg)
    applied = pd.read_csv(cfg.paths.resolved.folds.with_name("applied_fixes.csv"))
    assert applied["fix"].tolist() == ["gender", "age", "swap_incorrect_normal"]
    assert persons.loc[persons["person_id"] == p, "age_group"].item() == 2


def test_unknown_person_in_fixes_is_an_error(sample_root, tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("person_id,fix,value,note\n999999,gender,male,\n")
    with pytest.raises(MaskcompError, match=r"fixes.csv: unknown person id\(s\) 999999"):
        load_train(Context(config_for(sample_root, tmp_path, f"data.label_fixes=[{fixes}]")))


def _train_split():
    rng = np.random.default_rng(0)
    age = rng.choice(3, size=1000, p=[0.5, 0.45, 0.05])
    return pd.DataFrame({"age_group": age, "label": age, "mask": 0, "gender_label": 0, "row": np.arange(1000)})


def test_repeat_oversampling_reaches_target_share():
    train = _train_split()
    cfg = load_config(None, ["folds.oversample.strategy=repeat", "folds.oversample.targets={2: 0.2}"])
    out, weights = oversample(train, cfg, seed=0)
    assert weights is None
    assert (out["age_group"] == 2).mean() == pytest.approx(0.2, abs=0.002)
    assert len(out[out["age_group"] != 2]) == len(train[train["age_group"] != 2])
    assert set(out["row"]) == set(train["row"])


def test_sampler_weights_give_target_share_in_expectation():
    train = _train_split()
    cfg = load_config(None, ["folds.oversample.strategy=sampler", "folds.oversample.targets={2: 0.25}"])
    out, weights = oversample(train, cfg, seed=0)
    assert out is train and len(weights) == len(train)
    share = weights[train["age_group"] == 2].sum() / weights.sum()
    assert share == pytest.approx(0.25)


def test_oversampling_leaves_validation_untouched(folds_cfg):
    make_folds(folds_cfg)
    cfg = updated(folds_cfg, {"folds.oversample": {"strategy": "repeat", "head": "age", "targets": {2: 0.3}}})
    images = load_train(Context(cfg))
    train, val, _ = split_fold(cfg, images, fold=1)
    folds = load_folds(cfg, images)
    assert val["image_path"].tolist() == images.loc[folds == 1, "image_path"].tolist()
    assert (train["age_group"] == 2).mean() == pytest.approx(0.3, abs=0.02)
    assert not set(train["person_id"]) & set(val["person_id"])


def test_unknown_strategy_is_an_error():
    with pytest.raises(MaskcompError, match="folds.oversample.strategy='smote': expected one of none, repeat, sampler"):
        load_config(None, ["folds.oversample.strategy=smote"])


def test_age_boundary_moves_in_training_only(folds_cfg):
    make_folds(folds_cfg)
    cfg = updated(folds_cfg, {"train.age_old_threshold": 50})
    images = load_train(Context(cfg))
    train, val, _ = split_fold(cfg, images, fold=0)
    assert (train.loc[train["age"].between(50, 59), "age_group"] == 2).all()
    assert (val.loc[val["age"].between(50, 59), "age_group"] == 1).all()
    assert (val["label"] == images.set_index("image_path").loc[val["image_path"], "label"].to_numpy()).all()


def test_age_band_drop_touches_training_only(folds_cfg):
    make_folds(folds_cfg)
    cfg = updated(folds_cfg, {"train.drop_age_bands": [[27, 29], [57, 59]]})
    images = load_train(Context(cfg))
    folds = load_folds(cfg, images)
    train, val, _ = split_fold(cfg, images, fold=2)
    in_band = images["age"].between(27, 29) | images["age"].between(57, 59)
    assert len(train) == ((folds != 2) & ~in_band).sum()
    assert len(val) == (folds == 2).sum()
