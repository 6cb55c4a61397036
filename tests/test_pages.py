"""What the analysis page's galleries pick: one tile per person (its most confident mistake), never one person
filling the gallery, with each tile's person and true age."""

from __future__ import annotations

import numpy as np
import pandas as pd

from maskcomp.analyze.attention import caption, examples
from maskcomp.analyze.pages import GALLERY_TILES, confidently_wrong
from maskcomp.analyze.runs_index import changed


def oof_rows(persons: int, images: int = 7) -> pd.DataFrame:
    ids = [f"{p:06d}" for p in range(persons) for _ in range(images)]
    return pd.DataFrame({"person_id": ids, "image_path": [f"train/images/{i}/mask{k}.jpg" for i, k in
                                                          zip(ids, list(range(images)) * persons)]})  # fmt: skip


def test_the_wrong_gallery_shows_each_person_once_by_its_most_confident_mistake():
    oof = oof_rows(40)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 0.6, len(oof))
    conf[:7] = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93]  # person 000000 misread confidently on all 7 images
    probs = np.column_stack([conf, 1 - conf])
    y, pred = np.zeros(len(oof), int), np.ones(len(oof), int)
    shown = confidently_wrong(oof, probs, pred, y)
    assert len(shown) == GALLERY_TILES and shown["person_id"].is_unique
    assert shown.iloc[0]["image_path"].endswith("000000/mask0.jpg") and shown.iloc[0]["conf"] == 0.99
    assert shown["conf"].is_monotonic_decreasing


def test_attention_examples_take_one_image_per_person_and_captions_name_person_and_age():
    frame = oof_rows(3).assign(truth=0, pred=[1] * 14 + [0] * 7, conf=np.linspace(0.99, 0.5, 21), age=[25] * 21)
    picked = examples(frame, [0], errors=3, correct=2)
    assert picked["person_id"].tolist() == ["000000", "000001", "000002"]  # 2 wrong persons, then 1 right one
    row = picked.iloc[0].copy()
    row["face_share"] = np.nan
    assert caption(row, "gender").startswith("000000, age 25\ntrue male\npred female")


def test_the_runs_index_rounds_the_settings_a_run_changed():
    changes = changed({"train.lr": 0.002582211501745744, "train.img_size": [96, 72], "seed": 42},
                      {"train.lr": 0.001, "train.img_size": [96, 72], "seed": 42})  # fmt: skip
    assert changes == "train.lr=0.002582 (ref 0.001)"


def age_oof(errors_by_age: dict[int, float], per_age: int = 40) -> tuple[pd.DataFrame, np.ndarray]:
    """OOF rows whose age head is wrong for the given share of images at each true age (gender, mask right)."""
    from maskcomp.core import labels

    rows, preds = [], []
    for age, share in errors_by_age.items():
        group = labels.age_group(age)
        for i in range(per_age):
            wrong = i < round(share * per_age)
            seen = (group + 1) % 3 if wrong else group
            rows.append({"person_id": f"{age:03d}{i:03d}", "age": age, "age_group": group, "label": group})
            preds.append(seen)
    return pd.DataFrame(rows), np.array(preds)


def test_age_errors_over_whole_groups_are_not_called_a_boundary_problem():
    from maskcomp.analyze.levers import age_errors_by_band, boundary_problem

    spread, pred = age_oof({19: 0.6, 27: 0.6, 32: 0.25, 45: 0.25, 57: 0.25, 61: 0.64, 70: 0.64})
    table = age_errors_by_band(spread, pred)
    assert table.set_index("true age").loc["25-29", "age wrong"] == 0.6 and boundary_problem(table) is False
    boundary, pred = age_oof({19: 0.05, 27: 0.5, 32: 0.5, 45: 0.05, 57: 0.5, 61: 0.5, 70: 0.05})
    assert boundary_problem(age_errors_by_band(boundary, pred)) is True


def test_levers_skip_what_the_run_already_does_and_give_their_numbers():
    from maskcomp.analyze.levers import Evidence, age_errors_by_band, age_levers, decision_steps
    from maskcomp.core.config import load_config

    oof, pred = age_oof({19: 0.6, 32: 0.25, 45: 0.25, 61: 0.5, 70: 0.5})
    table = age_errors_by_band(oof, pred)
    plain = age_levers(Evidence(load_config("configs/sample.yaml"), oof, pred, {}), table)
    assert plain[0].startswith(">=60 is found in 50% of its images: oversample it")
    assert any(t.startswith("a soft-F1 loss term") for t in plain) and any("model.head=ordinal" in t for t in plain)
    assert any(t.startswith("the age errors are spread over whole groups") for t in plain)
    look_alike = "the age group is wrong on 45% of images (mean over groups): blend in look-alike"
    assert any(t.startswith(look_alike) for t in plain)
    tried = {"look_alike_persons": {"gain": -0.00123, "applied": False}}
    told = age_levers(Evidence(load_config("configs/sample.yaml"), oof, pred, tried), table)
    assert not [t for t in told if "look-alike" in t], "a run whose ensemble tried them is not told to try them"
    assert decision_steps(tried).to_dict("records") == [
        {"step": "look-alike persons", "nested gain": -0.0012, "applied": False}
    ]
    uses_all = load_config("configs/quality_ours_ordinal.yaml")  # oversampling, a soft-F1 term, the ordinal head
    assert not [t for t in age_levers(Evidence(uses_all, oof, pred, {}), table) if "oversample" in t or "soft-F1" in t
                or "ordinal" in t]  # fmt: skip
    sidecar = {"nested_bias_gain": {"gain": 0.020412}, "biases_applied": True,
               "person_grouping": {"nested_gain": -0.00483, "applied": False}}  # fmt: skip
    steps = decision_steps(sidecar)
    assert steps.to_dict("records") == [
        {"step": "per-class biases", "nested gain": 0.0204, "applied": True},
        {"step": "person grouping", "nested gain": -0.0048, "applied": False},
    ]


def test_a_tta_change_within_noise_is_not_called_a_loss():
    from maskcomp.predict.infer import tta_change_interval

    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(60), 7)
    y = np.repeat(rng.integers(0, 18, 60), 7)
    plain = np.where(rng.random(len(y)) < 0.7, y, (y + 1) % 18)
    one_person_worse = plain.copy()
    one_person_worse[:7] = (y[:7] + 1) % 18  # the view costs one person: -0.0015-sized changes look like this
    low, high = tta_change_interval(y, plain, one_person_worse, persons)
    assert low < 0 <= high, "one person's change is within the noise: no warning"
    much_worse = np.where(rng.random(len(y)) < 0.5, (y + 2) % 18, plain)
    assert tta_change_interval(y, plain, much_worse, persons)[1] < 0


def test_each_embedding_panel_marks_its_own_heads_errors():
    from maskcomp.analyze.embedding import head_errors
    from maskcomp.core import labels

    y = np.array([0, 0, 6])  # wear/male/<30 twice, incorrect/male/<30
    pred = np.array([1, 3, 6])  # the age wrong; the gender wrong; right
    truth, guess = labels.head_labels(y), labels.head_labels(pred)
    assert head_errors(truth, guess, "mask").tolist() == [False, False, False]  # an age error is not a mask error
    assert head_errors(truth, guess, "gender").tolist() == [False, True, False]
    assert head_errors(truth, guess, "age").tolist() == [True, False, False]


def test_the_best_configs_command_keeps_the_data_and_drops_args_the_file_holds(monkeypatch):
    from pathlib import Path

    from maskcomp.core import cli
    from maskcomp.tune.page import train_command

    monkeypatch.setattr(
        cli, "_invocation", cli.Invocation("configs/tune/q.yaml", ("paths.data_root=/d", "train.epochs=2"))
    )
    assert train_command(Path("configs/tune/q_best.yaml")) == "make train CONFIG=configs/tune/q_best.yaml DATA=/d"
