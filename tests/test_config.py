import pytest

from maskcomp.config import load_config
from maskcomp.errors import MaskcompError


def test_dotted_overrides_are_typed():
    cfg = load_config("configs/sample.yaml", ["seed=3", "train.img_size=[64, 48]", "model.pretrained=false"])
    assert cfg["seed"] == 3
    assert cfg["train"]["img_size"] == [64, 48]
    assert cfg["model"]["pretrained"] is False
    assert cfg["experiment"] == "sample"


def test_unknown_override_key_is_an_error():
    with pytest.raises(MaskcompError, match="unknown config key 'train.lrr'"):
        load_config("configs/sample.yaml", ["train.lrr=0.1"])


def test_unknown_key_in_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    with pytest.raises(MaskcompError, match=r"bad.yaml: unknown config key 'model.backbon'"):
        load_config(bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(MaskcompError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_free_form_mapping_accepts_any_key():
    cfg = load_config(None, ["folds.oversample.targets={2: 0.2}"])
    assert cfg["folds"]["oversample"]["targets"] == {2: 0.2}


@pytest.mark.parametrize("name", ["default", "sample"])
def test_shipped_configs_load(name):
    assert load_config(f"configs/{name}.yaml")["experiment"] == name


def test_config_files_layer_in_order():
    cfg = load_config(["configs/quality.yaml", "configs/quality_ours.yaml", "configs/quality_gpu.yaml"], ["train.epochs=2"])
    assert cfg["experiment"] == "quality_ours" and cfg["crop"]["mode"] == "mtcnn"
    assert cfg["train"]["img_size"] == [256, 192] and cfg["folds"]["k"] == 5  # the GPU file overrides quality.yaml
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["backbone"] == "efficientnet_lite0"
