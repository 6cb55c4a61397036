"""Config loading: configs/default.yaml is the schema; a config file and dotted overrides change its values."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import MaskcompError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"

Config = dict[str, Any]


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise MaskcompError(f"{path}: config file not found; pass an existing file, e.g. --config configs/sample.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MaskcompError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise MaskcompError(f"{path}: a config must be a mapping of keys to values")
    return data


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base)) or "(none)"
            raise MaskcompError(f"{source}: unknown config key '{dotted}'; known keys here: {known}")
        free_form = isinstance(base[key], dict) and not base[key]
        if isinstance(base[key], dict) and not free_form:
            if not isinstance(value, dict):
                raise MaskcompError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
            _merge(base[key], value, source, dotted + ".")
        else:
            base[key] = value


def parse_override(text: str) -> dict:
    """'train.seed=3' -> {'train': {'seed': 3}}; the value is parsed as YAML."""
    if "=" not in text:
        raise MaskcompError(f"override '{text}': expected key.path=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text; a number is meant
    nested: dict = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_config(path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    """default.yaml, then each config file in order (a later file wins), then the dotted overrides."""
    cfg = _read_yaml(DEFAULT_CONFIG)
    files = [] if path is None else path if isinstance(path, list) else [path]
    for file in files:
        if Path(file).resolve() != DEFAULT_CONFIG:
            _merge(cfg, _read_yaml(Path(file)), str(file))
    for text in overrides or []:
        _merge(cfg, parse_override(text), f"override '{text}'")
    validate(cfg, _read_yaml(DEFAULT_CONFIG))
    return cfg


# Keys whose value may be more than the default's type, or must be one of a few words.
CHOICES: dict[str, tuple] = {
    "data.image_check": ("header", "decode", "none"), "crop.mode": ("mtcnn", "center", "none"),
    "folds.oversample.strategy": ("none", "repeat", "sampler"),
    "folds.oversample.head": ("label", "mask", "gender", "age"), "model.head": ("single", "multi", "ordinal"),
    "loss.class_weights": ("none", "balanced"), "train.amp": ("bf16", "fp16", "none"),
    "infer.tta_reduce": ("mean_probs", "mean_logits"), "ensemble.weights": ("equal", "fit"),
    "ensemble.bias_mode": ("class", "head"), "ensemble.tune_biases": (True, False, "auto"),
    "infer.person_grouping": ("auto", True, False),  # YAML reads on/off as true/false
    "ensemble.tune_age_cuts": (True, False, "auto"), "train.scheduler": ("cosine", "tanh", "poly"),
}
ANY_OF = {"model.pretrained": (bool, str)}
# Numeric ranges [low, high] (None: open); for a list the range applies to each element.
RANGES: dict[str, tuple] = {
    "seed": (0, None), "sample.persons": (2, None), "sample.eval_persons": (1, None),
    "crop.batch_size": (1, None), "crop.detect_scale": (0.05, 1.0), "crop.min_face_size": (12, None),
    "crop.thresholds": (0.0, 1.0), "crop.relaxed_thresholds": (0.0, 1.0), "crop.margin": (0.0, 2.0),
    "crop.aspect": (0.1, 10.0), "crop.center_box": (0.0, 1.0), "crop.workers": (0, None), "folds.k": (2, None),
    "model.drop_rate": (0.0, 0.99), "model.freeze_backbone_epochs": (0, None), "loss.label_smoothing": (0.0, 0.99),
    "loss.focal_gamma": (0.0, None), "augment.hflip": (0.0, 1.0), "augment.color_jitter": (0.0, 1.0),
    "augment.shift_scale_rotate": (0.0, 1.0), "augment.coarse_dropout": (0.0, 1.0), "augment.mixup_alpha": (0.0, None),
    "augment.cutmix_alpha": (0.0, None), "augment.mix_prob": (0.0, 1.0), "augment.half_cutmix": (0.0, 1.0),
    "train.img_size": (32, 4096), "train.epochs": (1, None), "train.batch_size": (1, None), "train.val_batch_size": (1, None), "train.lr": (1e-8, 10.0),
    "train.weight_decay": (0.0, None), "train.warmup_epochs": (0, None), "train.grad_clip": (0.0, None),
    "train.ema_decay": (0.0, 0.99999), "train.patience": (1, None), "train.workers": (0, None), "train.threads": (0, 1024),
    "train.age_old_threshold": (31, 100), "train.drop_age_bands": (0, 150), "train.folds": (0, None),
    "infer.batch_size": (1, None), "infer.group_min_similarity": (-1.0, 1.0), "ensemble.bias_rounds": (0, None),
    "relabel.prior": (1e-4, 0.5), "relabel.auto_min_confidence": (0.0, 1.0), "relabel.systematic_rate": (0.0, 1.0),
    "relabel.top": (1, None),
}
# Lists whose every element must be one of a few words.
LIST_CHOICES = {"relabel.auto_kinds": ("gender", "age", "swap_incorrect_normal")}
# Lists of a fixed length.
LENGTHS = {"train.img_size": 2, "crop.thresholds": 3, "crop.relaxed_thresholds": 3, "crop.center_box": 4}


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "true/false"), (int, "a whole number"), (float, "a number"), (str, "text"),
                       (list, "a list"), (dict, "a mapping")):
        if isinstance(value, kind):
            return name
    return "empty" if value is None else type(value).__name__


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return default is None or isinstance(value, type(default))


def _problem(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with `value` for `key` (None if it is fine)."""
    if key in CHOICES:
        ok = any(value is c if isinstance(c, bool) else value == c for c in CHOICES[key])
        return None if ok else "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in CHOICES[key])
    if key in LIST_CHOICES:
        ok = isinstance(value, list) and all(v in LIST_CHOICES[key] for v in value)
        return None if ok else "a list of " + ", ".join(LIST_CHOICES[key])
    kinds = ANY_OF.get(key)
    if kinds is not None:
        return None if isinstance(value, kinds) else " or ".join(_type_name(k()) for k in kinds)
    if not _same_type(value, default):
        return f"a list of {LENGTHS[key]} numbers" if key in LENGTHS else _type_name(default)
    if key in LENGTHS and len(value) != LENGTHS[key]:
        return f"a list of {LENGTHS[key]} numbers"
    if key in RANGES:
        sample = default[0] if isinstance(default, list) and default else default
        return _range_problem(value, *RANGES[key], integer=isinstance(sample, int) and not isinstance(sample, bool))
    return None


def _range_problem(value: Any, low, high, integer: bool) -> str | None:
    items = value if isinstance(value, list) else [value]
    flat = [x for item in items for x in (item if isinstance(item, list) else [item])]
    bounds = (f" in [{low}, {high}]" if low is not None and high is not None
              else f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    noun = "whole number" if integer else "number"
    want = f"a list of {noun}s{bounds}" if isinstance(value, list) else f"a {noun}{bounds}"
    for x in flat:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(value, list) and integer and not isinstance(x, int)):
            return want
        if (low is not None and x < low) or (high is not None and x > high):
            return want
    return None


def validate(cfg: Config, schema: dict, prefix: str = "") -> None:
    """Every key's value against the default's type and the tables above; one line naming key, value and expectation."""
    for key, default in schema.items():
        dotted, value = f"{prefix}{key}", cfg[key]
        if isinstance(default, dict) and default:
            validate(value, default, dotted + ".")
            continue
        problem = _problem(dotted, value, default)
        if problem:
            raise MaskcompError(f"config key {dotted}={value!r}: expected {problem}")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False)
