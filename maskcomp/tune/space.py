"""A search space from the config's `tune.space`: each setting -> a distribution, checked once with one-line errors.

`{low, high}` of whole numbers is an int range, of numbers a float range (`log: true` samples on a log scale),
`{choices: [...]}` a categorical; choices that are lists or mappings (train.img_size, loss.terms) are stored in the
study as their YAML text, which every storage can hold, and turned back into values for the trial's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from ..core.config import Settings, updated
from ..core.errors import MaskcompError


@dataclass(frozen=True)
class Dimension:
    """One searched setting."""

    key: str
    distribution: optuna.distributions.BaseDistribution

    def value(self, raw: Any) -> Any:
        """The setting's value for a sampled (or stored) parameter."""
        if isinstance(self.distribution, optuna.distributions.CategoricalDistribution) and isinstance(raw, str):
            return yaml.safe_load(raw) if raw.startswith(("[", "{")) else raw
        return raw


def _categorical(key: str, choices: Any) -> optuna.distributions.CategoricalDistribution:
    if not isinstance(choices, list) or not choices:
        raise MaskcompError(f"tune.space.{key}: choices must be a non-empty list, e.g. choices: [0.0, 0.1]")
    stored = [
        yaml.safe_dump(c, default_flow_style=True, width=10_000).strip() if isinstance(c, (list, dict)) else c
        for c in choices
    ]
    return optuna.distributions.CategoricalDistribution(stored)


def _range(key: str, spec: dict) -> optuna.distributions.BaseDistribution:
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise MaskcompError(f"tune.space.{key}: needs numbers low < high, got low={low!r} high={high!r}")
    if log and low <= 0:
        raise MaskcompError(f"tune.space.{key}: a log scale needs low > 0, got {low!r}")
    if isinstance(low, int) and isinstance(high, int):
        return optuna.distributions.IntDistribution(low, high, log=log)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=log)


def _dimension(key: str, spec: Any) -> Dimension:
    if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
        raise MaskcompError(
            f"tune.space.{key}: expected {{low: .., high: ..[, log: true]}} or {{choices: [...]}}, got {spec!r}"
        )
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise MaskcompError(f"tune.space.{key}: unknown field(s) {names}; use low, high, log, choices")
    if key.split(".")[0] in ("tune", "paths", "experiment", "run"):
        raise MaskcompError(f"tune.space.{key}: not a training setting; search train/model/loss/augment/... keys")
    return Dimension(key, _categorical(key, spec["choices"]) if "choices" in spec else _range(key, spec))


def search_space(cfg: Settings) -> list[Dimension]:
    """The config's space, each dimension's extreme values checked against the settings' declarations."""
    if not cfg.tune.space:
        raise MaskcompError("tune.space is empty; name the settings to search, e.g. tune.space: {train.lr: {low: ..}}")
    dims = [_dimension(key, spec) for key, spec in cfg.tune.space.items()]
    for dim in dims:
        for raw in _extremes(dim.distribution):
            try:
                updated(cfg, {dim.key: dim.value(raw)})
            except MaskcompError as err:
                raise MaskcompError(f"tune.space.{dim.key}: {err}") from None
    return dims


def _extremes(dist: optuna.distributions.BaseDistribution) -> list[Any]:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def _sample(trial: optuna.Trial, dim: Dimension) -> Any:
    d = dim.distribution
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(dim.key, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(dim.key, d.low, d.high, log=d.log)
    return trial.suggest_float(dim.key, d.low, d.high, log=d.log)


def suggest(trial: optuna.Trial, dims: list[Dimension]) -> dict[str, Any]:
    """The trial's settings: {dotted key: value} (a retried or enqueued trial gets its fixed values back)."""
    return {dim.key: dim.value(_sample(trial, dim)) for dim in dims}
