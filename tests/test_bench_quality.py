"""bench/quality.py without the shared data: a skip message, never a failure; both recipes share what they must."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from quality import RECIPES, recipe_config  # noqa: E402


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
        assert base["paths"]["runs"] != ours["paths"]["runs"]
