"""Hard voting of submission files (ensemble.vote): majority per image, ties to the higher-CV file, files made
for another info.csv refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskcomp.core.config import updated
from maskcomp.core.errors import MaskcompError
from maskcomp.ensemble.stage import ensemble
from maskcomp.ensemble.vote import hard_vote

from conftest import config_for


def write_submission(path, ids, answers, cv):
    pd.DataFrame({"ImageID": ids, "ans": answers}).to_csv(path, index=False)
    if cv is not None:
        path.with_suffix(".json").write_text(json.dumps({"summary": {"cv_macro_f1": cv}}))
    return str(path)


@pytest.fixture
def voting(tiny_root, tmp_path):
    cfg = config_for(tiny_root, tmp_path / "work")
    ids = pd.read_csv(cfg.paths.resolved.eval_csv, dtype=str)["ImageID"].tolist()
    return cfg, ids, tmp_path


def test_majority_wins_and_a_tie_goes_to_the_higher_cv_file(voting):
    cfg, ids, tmp = voting
    n = len(ids)
    a, b, c = np.zeros(n, int), np.zeros(n, int), np.zeros(n, int)
    a[0], b[0], c[0] = 1, 1, 2  # two of three agree: 1, though c is not the worst file
    a[1], b[1], c[1] = 3, 4, 5  # three-way tie: b has the highest CV
    a[2], b[2], c[2] = 7, 8, 7  # the best file is outvoted
    files = [
        write_submission(tmp / "a.csv", ids, a, 0.5),
        write_submission(tmp / "b.csv", ids, b, 0.7),
        write_submission(tmp / "c.csv", ids, c, 0.6),
    ]
    out = ensemble(updated(cfg, {"ensemble.vote": files, "ensemble.name": "voted"}))
    sub = pd.read_csv(out, dtype={"ImageID": str})
    assert sub["ImageID"].tolist() == ids
    assert sub["ans"].tolist()[:3] == [1, 4, 7] and (sub["ans"][3:] == 0).all()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["vote"]["cv_macro_f1"] == [0.7, 0.6, 0.5] and side["vote"]["changed_from_best_file"] == 1
    index = pd.read_csv(out.parent / "index.csv", dtype=str)
    assert index["submission"].tolist()[-1] == "voted.csv"


def test_a_file_without_a_sidecar_counts_but_breaks_no_tie():
    answers = np.array([[2, 5], [3, 6]])  # file 0 has no CV, file 1 has one: each row is a 1-1 tie
    assert hard_vote(answers, [None, 0.4]).tolist() == [3, 6]
    assert hard_vote(answers, [0.9, 0.4]).tolist() == [2, 5]


def test_a_file_made_for_another_info_csv_is_refused(voting):
    cfg, ids, tmp = voting
    good = write_submission(tmp / "a.csv", ids, np.zeros(len(ids), int), 0.5)
    other = write_submission(tmp / "b.csv", [f"x{i}.jpg" for i in range(len(ids))], np.zeros(len(ids), int), 0.6)
    with pytest.raises(MaskcompError, match=r"b.csv \(ensemble.vote: made for another info.csv\?\): ImageIDs differ"):
        ensemble(updated(cfg, {"ensemble.vote": [good, other]}))
    with pytest.raises(MaskcompError, match=r"a vote needs two or more submission files"):
        ensemble(updated(cfg, {"ensemble.vote": [good]}))
