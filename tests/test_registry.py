"""The stage registry (core/registry.py) is the one list of stages: the Makefile, the root scripts, the README and
`python -m maskcomp` agree with it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from maskcomp.core.registry import BY_NAME, STAGES

from conftest import config_for

ROOT = Path(__file__).resolve().parent.parent


def recipe(target: str) -> str:
    """The recipe lines of a Makefile target."""
    text = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert found, f"the Makefile has no target {target}"
    return found.group(1)


def test_every_stage_is_a_make_target_that_runs_its_script():
    for stage in STAGES:
        assert stage.script in recipe(stage.name), stage.name


def test_every_stage_function_exists():
    for stage in STAGES:
        module, _, name = stage.function.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), stage.function


def test_every_root_script_is_a_registered_stage():
    scripts = {
        str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.py"), *ROOT.glob("preprocess/*.py"), *ROOT.glob("folds/*.py")]
    }
    assert scripts == {s.script for s in STAGES if not s.script.startswith("-m ")}


def test_the_readme_names_every_stage_target():
    readme = (ROOT / "README.md").read_text()
    assert [s.name for s in STAGES if f"`make {s.name}`" not in readme] == []


def test_python_m_maskcomp_runs_a_stage(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path)
    args = [f"paths.data_root={tiny_root}", f"paths.folds={tmp_path / 'folds.csv'}", f"paths.cache={tmp_path / 'c'}"]
    done = subprocess.run(
        [sys.executable, "-m", "maskcomp", "folds", "--config", "configs/sample.yaml", *args],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(cfg.paths.folds)) == 6
    wrong = subprocess.run([sys.executable, "-m", "maskcomp", "fold"], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        f"error: unknown stage 'fold'; usage: python -m maskcomp <stage> [args]; stages: {', '.join(BY_NAME)}"
    )
