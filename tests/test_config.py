import pytest

from maskcomp.core.config import PROJECT_ROOT as ROOT
from maskcomp.core.config import load_config
from maskcomp.core.errors import MaskcompError


def test_dotted_overrides_are_typed():
    cfg = load_config("configs/sample.yaml", ["seed=3", "train.img_size=[64, 48]", "model.pretrained=false"])
    assert cfg.seed == 3
    assert cfg.train.img_size == [64, 48]
    assert cfg.model.pretrained is False
    assert cfg.experiment == "sample"


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
    assert cfg.folds.oversample.targets == {2: 0.2}


@pytest.mark.parametrize("name", ["default", "sample"])
def test_shipped_configs_load(name):
    assert load_config(f"configs/{name}.yaml").experiment == name


def test_config_files_layer_in_order():
    cfg = load_config(
        ["configs/quality.yaml", "configs/quality_ours.yaml", "configs/quality_gpu.yaml"], ["train.epochs=2"]
    )
    assert cfg.experiment == "quality_ours" and cfg.crop.mode == "mtcnn"
    assert cfg.train.img_size == [256, 192] and cfg.folds.k == 5  # the GPU file overrides quality.yaml
    assert cfg.train.epochs == 2 and cfg.model.backbone == "efficientnet_lite0"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=abc", "config key train.epochs='abc': expected a whole number"),
        ("train.epochs=0", "config key train.epochs=0: expected a whole number >= 1"),
        ("train.img_size=64", "config key train.img_size=64: expected a list of 2 numbers"),
        (
            "train.img_size=[64, 8]",
            r"config key train.img_size=\[64, 8\]: expected a list of whole numbers in \[32, 4096\]",
        ),
        ("train.batch_size=0", "config key train.batch_size=0: expected a whole number >= 1"),
        ("folds.k=1", "config key folds.k=1: expected a whole number >= 2"),
        ("model.head=double", "config key model.head='double': expected one of single, multi"),
        ("train.amp=fp8", "config key train.amp='fp8': expected one of bf16, fp16, none"),
        ("ensemble.tune_biases=maybe", "config key ensemble.tune_biases='maybe': expected one of true, false, auto"),
        ("train.ema=yes please", "config key train.ema='yes please': expected true/false"),
        ("crop.thresholds=[0.6, 0.7]", "config key crop.thresholds=.*: expected a list of 3 numbers"),
        ("loss.label_smoothing=1.5", r"config key loss.label_smoothing=1.5: expected a number in \[0.0, 0.99\]"),
        ("data.label_fixes=[1]", r"config key data.label_fixes=\[1\]: expected a list of text values"),
        ("train.lr=[1]", r"config key train.lr=\[1\]: expected a number$"),
        ("train.batch_size=1.5", "config key train.batch_size=1.5: expected a whole number$"),
        ("infer.person_grouping=1", "config key infer.person_grouping=1: expected one of auto, true, false"),
        ("train.drop_age_bands=[[57, 59.5]]", r"drop_age_bands=.*: expected a list of whole numbers in \[0, 150\]"),
    ],
)
def test_wrong_types_and_ranges_name_key_value_and_expectation(override, message):
    with pytest.raises(MaskcompError, match=message) as err:
        load_config("configs/sample.yaml", [override])
    assert "\n" not in str(err.value)


def test_exponent_without_dot_is_a_number():
    assert load_config(None, ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("name", ["competition", "competition_cpu"])
def test_recipe_configs_pass_validation(name):
    assert load_config(f"configs/{name}.yaml").model.head == "multi"


@pytest.mark.parametrize(
    "argv,hint",
    [
        (["--epochs", "3"], "unknown option --epochs: settings are dotted overrides here; write train.epochs=3"),
        (["--lr=0.1"], "write train.lr=0.1"),
        (["--bogus"], "unknown option --bogus; settings are dotted overrides such as train.epochs=3"),
    ],
)
def test_argparse_habits_get_the_dotted_override(argv, hint):
    from maskcomp.core.cli import parse_stage_args, stage_parser

    with pytest.raises(MaskcompError, match=hint):
        parse_stage_args(stage_parser("x"), ["--config", "configs/sample.yaml", *argv])


def test_default_yaml_is_the_schema_rendered():
    """configs/default.yaml documents every setting; it is generated from the declarations and must stay so."""
    from maskcomp.core.settings import render_default_yaml

    assert (ROOT / "configs" / "default.yaml").read_text() == render_default_yaml()


def test_a_config_names_its_parent_with_base(tmp_path):
    (tmp_path / "parent.yaml").write_text("train:\n  epochs: 7\n  lr: 0.01\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  lr: 0.02\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.02)
    (tmp_path / "parent.yaml").write_text("base: child.yaml\n")
    with pytest.raises(MaskcompError, match=r"`base:` leads back to this file"):
        load_config(tmp_path / "child.yaml")


def test_quality_recipes_layer_through_base():
    cfg = load_config("configs/quality_ours_ordinal.yaml")
    assert cfg.model.head == "ordinal" and cfg.crop.mode == "mtcnn" and cfg.train.img_size == [96, 72]


def test_stage_identities_come_from_the_declarations():
    from maskcomp.core.settings import identity_keys

    train = identity_keys("train")
    assert "train.lr" in train and "folds.oversample" in train and "seed" in train
    assert not {"train.workers", "train.device", "train.threads", "data.image_check", "crop.mode"} & set(train)
    assert set(identity_keys("crop")) >= {"crop.mode", "crop.margin", "data.image_check"}
    assert identity_keys("infer") == ["infer.tta", "infer.tta_reduce", "infer.engine", "infer.neighbours"]
    assert {"pseudo.submission", "pseudo.threshold", "augment.background"} <= set(train)


def test_numbers_keep_the_type_they_were_written_with():
    """Stage manifests digest setting values: `warmup_epochs: 1` must stay 1 (not 1.0), or every run id of such a
    config would change with the settings schema."""
    from maskcomp.core.manifests import config_keys

    keys = config_keys(load_config(None, ["train.warmup_epochs=1", "train.lr=0.001"]), "train")
    assert type(keys["train.warmup_epochs"]) is int and type(keys["train.lr"]) is float


def test_a_setting_added_later_keeps_earlier_runs_ids_while_at_its_default():
    """train.accumulate came after runs were trained: at its default it is not in the train manifest (their ids
    hold); set to anything else it is, and the run id changes."""
    from maskcomp.core.manifests import Manifest, config_keys

    default = load_config(None, [])
    keys = config_keys(default, "train")
    assert "train.accumulate" not in keys and "train.lr" in keys
    other = config_keys(load_config(None, ["train.accumulate=2"]), "train")
    assert other["train.accumulate"] == 2
    assert Manifest("train", {}, keys).digest != Manifest("train", {}, other).digest
