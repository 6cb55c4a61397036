"""Shared command-line handling for the stage scripts: --config, dotted overrides, logging."""
from __future__ import annotations

import argparse
import logging

from .config import Config, load_config


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config (merged onto configs/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 paths.data_root=/data")
    return parser


def parse_stage_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return load_config(args.config, args.overrides), args
