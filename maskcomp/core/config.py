"""Config loading: the settings schema (settings.py) gives every key's default; config files (each may name a
parent with `base: <file>`) and dotted overrides change them; every value is checked against its declaration with a
one-line error; the result is a typed Settings object (`cfg.train.lr`)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml

from .errors import MaskcompError
from .paths import PROJECT_ROOT
from .settings import Settings, is_section, setting_info

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise MaskcompError(f"{path}: config file not found; pass an existing file, e.g. --config configs/sample.yaml")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise MaskcompError(yaml_problem(path, text, err)) from None
    if not isinstance(data, dict):
        raise MaskcompError(f"{path}: a config must be a mapping of keys to values")
    return data


def yaml_problem(path: Path, text: str, err: yaml.YAMLError) -> str:
    """One line for a YAML error: file, line, column, what is wrong (a tab named as such) and the fix."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return f"{path}: not valid YAML ({problem}); fix the syntax"
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    if "\t" in line[: mark.column + 1]:
        return f"{where}: a tab character; YAML indents with spaces only, replace the tab with spaces"
    return f"{where}: not valid YAML ({problem}); fix the syntax"


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
    return nested_value(key.strip(), value)


def nested_value(dotted: str, value: Any) -> dict:
    """'train.seed', 3 -> {'train': {'seed': 3}}."""
    nested: dict = {}
    node = nested
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _file_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """A config file after the chain of parents it names with `base:` (relative to its folder), parents first."""
    path = path.resolve()
    if path in seen:
        raise MaskcompError(
            f"{path}: `base:` leads back to this file ({' -> '.join(p.name for p in (*seen, path))}); remove the loop"
        )
    data = _read_yaml(path)
    base = data.pop("base", None)
    parents = (
        _file_chain((path.parent / base) if not Path(base).is_absolute() else Path(base), (*seen, path)) if base else []
    )
    return [*parents, (path, data)]


def load_config(path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None) -> Settings:
    """The schema's defaults, then each config file in order (its `base:` chain first; a later file wins), then the
    dotted overrides; validated, as typed settings."""
    cfg = Settings().model_dump()
    files = [] if path is None else path if isinstance(path, list) else [path]
    for file in files:
        for source, data in _file_chain(Path(file)):
            if source != DEFAULT_CONFIG:
                _merge(cfg, data, str(source))
    for text in overrides or []:
        _merge(cfg, parse_override(text), f"override '{text}'")
    validate(cfg, Settings)
    return Settings.model_validate(cfg)


def _renamed(values: dict) -> dict:
    """A stored config from before a setting was renamed: train.tensorboard (true/false) is train.loggers now."""
    train = values.get("train")
    if not isinstance(train, dict) or "tensorboard" not in train:
        return values
    train = dict(train)
    on = train.pop("tensorboard")
    train.setdefault("loggers", ["tensorboard"] if on else [])
    return {**values, "train": train}


def settings_from(values: dict, source: str = "settings") -> Settings:
    """Typed settings from a mapping of values (missing keys take their defaults; a stored run's renamed keys are
    read by their new name), each checked against its declaration."""
    merged = Settings().model_dump()
    _merge(merged, _renamed(values), source)
    validate(merged, Settings)
    return Settings.model_validate(merged)


def updated(cfg: Settings, changes: dict[str, Any]) -> Settings:
    """`cfg` with dotted keys changed ({"train.folds": [0]}), validated like an override."""
    values = cfg.model_dump()
    for key, value in changes.items():
        _merge(values, nested_value(key, value), f"change '{key}'")
    validate(values, Settings)
    return Settings.model_validate(values)


def _type_name(value: Any) -> str:
    for kind, name in (
        (bool, "true/false"),
        (int, "a whole number"),
        (float, "a number"),
        (str, "text"),
        (list, "a list"),
        (dict, "a mapping"),
    ):
        if isinstance(value, kind):
            return name
    return "empty" if value is None else type(value).__name__


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return default is None or isinstance(value, type(default))


def _not_finite(value: Any) -> bool:
    """NaN or infinity anywhere in a value (lists and mappings too): YAML reads .nan and .inf as numbers."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_not_finite(v) for v in value.values())
    return isinstance(value, list) and any(_not_finite(v) for v in value)


def _problem(field, value: Any) -> str | None:
    """What is wrong with `value` for a declared setting (None if it is fine)."""
    info, default = setting_info(field), field.get_default(call_default_factory=True)
    if _not_finite(value):
        return "a finite number (not NaN or infinity)"
    if info.get("choices"):
        ok = any(value is c if isinstance(c, bool) else value == c for c in info["choices"])
        names = (str(c).lower() if isinstance(c, bool) else c for c in info["choices"])
        return None if ok else "one of " + ", ".join(names)
    if info.get("items"):
        ok = isinstance(value, list) and all(v in info["items"] for v in value)
        return None if ok else "a list of " + ", ".join(info["items"])
    if value in info.get("words", ()):  # a number or a word: train.batch_size=auto
        return None
    if info.get("words") and isinstance(value, str):
        return f"{_type_name(default)} or {' / '.join(info['words'])}"
    kinds = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else ()
    if info.get("words"):
        kinds = ()
    if str in kinds:  # model.pretrained: bool | str
        return None if isinstance(value, kinds) else " or ".join(_type_name(k()) for k in kinds)
    length = info.get("length")
    if not _same_type(value, default) or (length and len(value) != length):
        return f"a list of {length} numbers" if length else _type_name(default)
    if info.get("range"):
        sample = default[0] if isinstance(default, list) and default else default
        if isinstance(sample, list):
            sample = 0  # a list of lists of whole numbers (train.drop_age_bands)
        return _range_problem(value, *info["range"], integer=isinstance(sample, int) and not isinstance(sample, bool))
    return None


def _range_problem(value: Any, low, high, integer: bool) -> str | None:
    items = value if isinstance(value, list) else [value]
    flat = [x for item in items for x in (item if isinstance(item, list) else [item])]
    bounds = (
        f" in [{low}, {high}]"
        if low is not None and high is not None
        else f" >= {low}"
        if low is not None
        else f" <= {high}"
        if high is not None
        else ""
    )
    noun = "whole number" if integer else "number"
    want = f"a list of {noun}s{bounds}" if isinstance(value, list) else f"a {noun}{bounds}"
    for x in flat:
        if (
            isinstance(x, bool)
            or not isinstance(x, (int, float))
            or (isinstance(value, list) and integer and not isinstance(x, int))
        ):
            return want
        if (low is not None and x < low) or (high is not None and x > high):
            return want
    return None


def validate(values: dict, model: type = Settings, prefix: str = "") -> None:
    """Every value against its declaration (settings.py); one line naming key, value and expectation."""
    for key, field in model.model_fields.items():
        dotted, value = f"{prefix}{key}", values[key]
        if is_section(field):
            if not isinstance(value, dict):
                raise MaskcompError(f"config key {dotted}={value!r}: expected a mapping")
            validate(value, field.annotation, dotted + ".")
            continue
        problem = _problem(field, value)
        if problem:
            raise MaskcompError(f"config key {dotted}={value!r}: expected {problem}")
    problem = model.cross_check(values)
    if problem:
        raise MaskcompError(f"config key {prefix}{problem}")


def dump_config(cfg: Settings) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
