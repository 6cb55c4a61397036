"""Config loading: configs/default.yaml is the schema; a config file and dotted overrides change its values."""
from __future__ import annotations

import copy
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
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False)
