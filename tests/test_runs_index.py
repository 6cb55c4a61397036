"""reports/index.html: one row per run, best first, the stamped copy beside its submission, and the settings a run
changed against its experiment's best run."""

from __future__ import annotations

import re

import pytest

from maskcomp.analyze.runs_index import runs_index
from maskcomp.core.config import updated
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.infer import infer
from maskcomp.runs import resolve_run
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

pytestmark = pytest.mark.slow


def table_rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)


def test_one_row_per_run_best_first_with_its_changes(tiny_root, tmp_path):
    base = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=1")
    crop_faces(base)
    make_folds(base)
    runs = {}
    for lr in (0.001, 0.01):
        cfg = updated(base, {"train.lr": lr})
        train(cfg)
        infer(cfg)
        ensemble(cfg)
        runs[lr] = resolve_run(cfg.paths.resolved, "sample").run_id
    submitted = sorted(p.name for p in (tmp_path / "submissions").glob("sample_cv*.csv"))
    assert len(submitted) == 2, "each ensemble wrote a stamped copy"
    rows = table_rows(runs_index(base).read_text())
    assert len(rows) == 2, "one row per run, the stamped copies are not runs"
    cv = [float(re.findall(r"<td>(0\.\d+)</td>", row)[1]) for row in rows]
    assert cv == sorted(cv, reverse=True), "best first by nested CV"
    best, other = rows
    best_lr = next(lr for lr, run in runs.items() if f">{run}</td>" in best)
    other_lr = next(lr for lr in runs if lr != best_lr)
    assert "reference (the experiment&#x27;s best)" in best or "reference (the experiment's best)" in best
    assert f"train.lr={other_lr} (ref {best_lr})" in other
    assert sum(name in best + other for name in submitted) == 2
    row_of = {lr: next(r for r in rows if f">{run}</td>" in r) for lr, run in runs.items()}
    assert "sample.csv</a> (copy: " in row_of[0.01], "the last ensemble's file, its stamped copy beside it"
    assert "sample.csv</a>" not in row_of[0.001], "the first run's sample.csv was overwritten: only its copy is its"
    # the analysis page shows the run analysed last: only that run's row links it, the other says how to get its own
    from maskcomp.analyze.pages import analyze

    analyze(updated(base, {"train.lr": 0.01}))
    rows = table_rows(runs_index(base).read_text())
    row_of = {lr: next(r for r in rows if f">{run}</td>" in r) for lr, run in runs.items()}
    assert ">analysis</a>" in row_of[0.01] and ">analysis</a>" not in row_of[0.001]
    assert f"experiment=sample run={runs[0.001]}" in row_of[0.001]
