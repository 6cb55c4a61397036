"""Shared command-line handling for the stage scripts: --config, dotted overrides, logging."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import dataclass

from .config import load_config
from .context import Context
from .errors import MaskcompError
from .paths import adopt_legacy_runs
from .settings import leaves

DATA_ROOT_KEY = "paths.data_root"


@dataclass(frozen=True)
class Invocation:
    """How this process was started: its config file and dotted overrides (make's CONFIG, DATA and ARGS)."""

    config: str = ""
    overrides: tuple[str, ...] = ()


_invocation = Invocation()  # set once by parse_stage_args: the commands a stage prints rerun with the user's context


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def make_command(
    targets: str, extra: list[str] | tuple[str, ...] = (), config: str | None = None, keep_args: bool = True
) -> str:
    """The `make` line that runs `targets` with this process's CONFIG, DATA and ARGS, plus `extra` overrides (which
    replace the invocation's overrides of the same keys); `config` replaces CONFIG, and keep_args=False leaves the
    invocation's ARGS out (a config that already holds them: a study's best config)."""
    replaced = {_key(o) for o in extra}
    data = [o.split("=", 1)[1] for o in _invocation.overrides if _key(o) == DATA_ROOT_KEY]
    kept = [o for o in _invocation.overrides if _key(o) not in replaced | {DATA_ROOT_KEY}] if keep_args else []
    args = kept + list(extra)
    config = config or _invocation.config
    parts = ["make", targets]
    parts += [f"CONFIG={shlex.quote(config)}"] if config else []
    parts += [f"DATA={shlex.quote(data[-1])}"] if data else []
    parts += [f"ARGS={shlex.quote(' '.join(args))}"] if args else []
    return " ".join(parts)


def label_fixes_override(current: list[str], new) -> str:
    """data.label_fixes with `new` after the fixes the run was trained with (each listed once)."""
    files = list(dict.fromkeys([*current, str(new)]))
    return f"data.label_fixes=[{','.join(files)}]"


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", default="configs/default.yaml", help="YAML config (merged onto configs/default.yaml)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 paths.data_root=/data")
    return parser


def _unknown_flag(flag: str, value: str | None) -> MaskcompError:
    """`--epochs 3` (a timm/argparse habit) -> the dotted override that means it."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    value = flag.split("=", 1)[1] if "=" in flag else value
    matches = [k for k, _, _ in leaves() if k.split(".")[-1] == name or k == name]
    if matches:
        hint = " or ".join(f"{k}={value if value is not None else '...'}" for k in matches)
        return MaskcompError(f"unknown option {flag}: settings are dotted overrides here; write {hint}")
    return MaskcompError(
        f"unknown option {flag}; settings are dotted overrides such as train.epochs=3 (see configs/default.yaml)"
    )


def _check_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    known = {opt for action in parser._actions for opt in action.option_strings}
    for i, token in enumerate(argv):
        if token.startswith("-") and token.split("=", 1)[0] not in known:
            after = argv[i + 1] if i + 1 < len(argv) else None
            value = after if after is not None and not after.startswith("-") and "=" not in after else None
            raise _unknown_flag(token, value)


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[Context, argparse.Namespace]:
    """The process's context (its settings from --config and the overrides) and the other arguments."""
    _check_flags(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    global _invocation
    _invocation = Invocation(args.config, tuple(args.overrides))
    cfg = load_config(args.config, args.overrides)
    adopt_legacy_runs(cfg.paths.resolved.models)  # the one step that may move a folder: explicit, here
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    return Context(cfg), args
