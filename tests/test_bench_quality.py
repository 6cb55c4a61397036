"""bench/quality.py without the shared data: a skip message, never a failure; both recipes share what they must."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from maskcomp import labels
from maskcomp.metrics import macro_f1

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quality import RECIPES, _cell, recipe_config, uncertainty  # noqa: E402


def test_absent_data_is_a_skip_message(tmp_path):
    before = sorted((ROOT / "bench" / "results").iterdir())
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "bench-quality: skipped, no benchmark data" in out.stdout
    assert sorted((ROOT / "bench" / "results").iterdir()) == before


def test_recipes_share_backbone_resolution_epochs_and_folds(tmp_path):
    for gpu in (False, True):
        cfgs = {r: recipe_config(r, tmp_path / "data", tmp_path / r, gpu, []) for r in RECIPES}
        shared = {(c["model"]["backbone"], tuple(c["train"]["img_size"]), c["train"]["epochs"], c["folds"]["k"],
                   c["train"]["batch_size"], c["train"]["lr"]) for c in cfgs.values()}
        assert len(shared) == 1, shared
        base, ours = cfgs["baseline"], cfgs["ours"]
        assert (base["crop"]["mode"], base["model"]["head"], base["infer"]["tta"]) == ("none", "single", ["identity"])
        assert base["folds"]["oversample"]["strategy"] == "none" and not base["ensemble"]["tune_biases"]
        assert ours["crop"]["mode"] == "mtcnn" and ours["ensemble"]["tune_biases"] and len(ours["infer"]["tta"]) > 1
        assert base["paths"]["runs"] != ours["paths"]["runs"] and base["paths"]["crops"] == ours["paths"]["crops"]
        ordinal = cfgs["ours_ordinal"]
        assert ordinal["model"]["head"] == "ordinal" and ordinal["ensemble"]["tune_age_cuts"] == "auto"
        assert {k: v for k, v in ordinal.items() if k not in ("model", "experiment", "paths")} == \
            {k: v for k, v in ours.items() if k not in ("model", "experiment", "paths")}


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
