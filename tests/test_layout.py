"""The package's layout: one subpackage per stage, imports only downward, no import cycle, and the training stack
free of plotting."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "maskcomp"
# lower layers first; a module may import its own layer and those before it
LAYERS = [
    "core", "data", "crop", "runs", "train", "predict", "ensemble", "report", "analyze", "tune", "gpucheck", "clean",
    "__main__",
]  # fmt: skip


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The maskcomp modules a file imports anywhere (functions included), relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imported_modules(path, set(files), package) for name, path in files.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else -1


# what every import of maskcomp runs first: set how OpenMP threads wait before anything can load torch
ROOT_HOOKS = {"maskcomp": {"maskcomp.core.openmp"}}


def test_every_import_goes_down_the_layers():
    edges = graph()
    upward = [
        f"{m} -> {t}" for m, targets in edges.items() for t in targets - ROOT_HOOKS.get(m, set()) if layer(t) > layer(m)
    ]
    assert upward == []
    assert all(not edges[hook] for hooks in ROOT_HOOKS.values() for hook in hooks)  # a hook imports no maskcomp


def cycles_of(edges: dict[str, set[str]]) -> list[str]:
    """Every import cycle a depth-first walk meets, as 'a -> b -> a'."""
    found: list[str] = []
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        for target in sorted(edges.get(node, ())):
            if target in trail:
                found.append(" -> ".join(trail[trail.index(target) :] + [target]))
            elif target not in done:
                visit(target, trail + [target])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    return found


def test_no_import_cycle():
    assert cycles_of(graph()) == []


def test_a_planted_cycle_and_upward_import_are_seen(tmp_path):
    """The checks read real import statements, function-level ones too: a module of core that imports the trainer
    inside a function is an upward import, and the cycle it closes is found (planted in a copy of the package: the
    tree other tests read stays as it is)."""
    package = shutil.copytree(PACKAGE, tmp_path / "maskcomp", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "core" / "zz_planted.py").write_text("def late():\n    from ..train import trainer\n")
    edges = graph(package)
    assert "maskcomp.train.trainer" in edges["maskcomp.core.zz_planted"]
    edges["maskcomp.train.trainer"].add("maskcomp.core.zz_planted")
    found = [cycle.split(" -> ") for cycle in cycles_of(edges)]  # a cycle is reported from wherever the walk met it
    assert any(set(c) == {"maskcomp.core.zz_planted", "maskcomp.train.trainer"} and c[0] == c[-1] for c in found)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, absent", [("maskcomp.train.trainer", "matplotlib"), ("maskcomp.predict.infer", "matplotlib")]
)
def test_the_training_stack_does_not_import_plotting(module, absent):
    code = f"import sys, {module}; print({absent!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    modules = sorted(graph())
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    out = subprocess.run([sys.executable, "-I", "-c", code, *modules], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
