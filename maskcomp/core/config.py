"""Config loading: the settings schema (settings.py) gives every key's default; config files (each may name a
parent with `base: <file>`) and dotted overrides change them; pydantic checks every value against its declaration
(strict types, bounds, lengths, and the declared choices and words) and its first error becomes one line naming the
key, the value and what it expects; the result is a typed Settings object (`cfg.train.lr`)."""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import ValidationError

from .errors import MaskcompError
from .paths import PROJECT_ROOT
from .settings import Number, Settings, is_section, not_finite, setting_info

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
    return validated(cfg)


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
    return validated(merged)


def updated(cfg: Settings, changes: dict[str, Any]) -> Settings:
    """`cfg` with dotted keys changed ({"train.folds": [0]}), validated like an override."""
    values = cfg.model_dump()
    for key, value in changes.items():
        _merge(values, nested_value(key, value), f"change '{key}'")
    return validated(values)


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


def _range_words(value: Any, low, high, integer: bool) -> str:
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
    return f"a list of {noun}s{bounds}" if isinstance(value, list) else f"a {noun}{bounds}"


_TYPE_ERRORS = ("_type", "_parsing", "union_tag_invalid")


def _list_words(annotation: Any) -> str:
    """'a list of whole numbers' for list[int], and so on; 'a list' for other annotations."""
    args = get_args(annotation) if get_origin(annotation) is list else ()
    names = {str: "text values", int: "whole numbers", dict: "mappings", Number: "numbers"}
    return f"a list of {names[args[0]]}" if args and args[0] in names else "a list"


def expectation(field, value: Any, error: str, in_item: bool) -> str:
    """What a declared setting expects, in words, for pydantic's error type `error` on `value` (`in_item`: the
    error is about one of a list's items)."""
    info, default = setting_info(field), field.get_default(call_default_factory=True)
    if not_finite(value):
        return "a finite number (not NaN or infinity)"
    if info.get("choices"):
        return "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else c for c in info["choices"])
    if info.get("items"):
        return "a list of " + ", ".join(info["items"])
    if info.get("words") and isinstance(value, str):
        return f"{_type_name(default)} or {' / '.join(info['words'])}"
    kinds = get_args(field.annotation) if get_origin(field.annotation) in (Union, UnionType) else ()
    if str in kinds and not info.get("words"):  # model.pretrained: bool | str
        return " or ".join(_type_name(k()) for k in kinds)
    length = info.get("length")
    if length and (not isinstance(value, list) or error in ("too_short", "too_long")):
        return f"a list of {length} numbers"
    if info.get("range") and (in_item or not error.endswith(_TYPE_ERRORS)):
        sample = default[0] if isinstance(default, list) and default else default
        integer = isinstance(sample, (int, list)) and not isinstance(sample, bool)  # a list of lists: whole numbers
        return _range_words(value, *info["range"], integer=integer)
    return _list_words(field.annotation) if isinstance(default, list) and in_item else _type_name(default)


def _first_problem(err: ValidationError, values: dict) -> str:
    """pydantic's first error as one line naming the key, its value and what it expects (or what the section's
    settings together lack)."""
    first = err.errors()[0]
    model, node, prefix = Settings, values, ""
    for depth, part in enumerate(first["loc"]):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        if not is_section(field):
            value, in_item = node[part], any(isinstance(p, int) for p in first["loc"][depth + 1 :])
            return f"config key {prefix}{part}={value!r}: expected {expectation(field, value, first['type'], in_item)}"
        model, node, prefix = field.annotation, node[part], f"{prefix}{part}."
    if first["type"] == "together":
        return f"config key {prefix}{first['ctx']['problem']}"
    return f"config key {prefix.rstrip('.') or '(top level)'}: {first['msg']}"


def validated(values: dict) -> Settings:
    """Typed settings from merged values, pydantic checking every value against its declaration (settings.py); a
    problem is one line naming key, value and expectation."""
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        raise MaskcompError(_first_problem(err, values)) from None


def dump_config(cfg: Settings) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
