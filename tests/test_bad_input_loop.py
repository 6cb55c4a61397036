"""One clear line for bad input around the experiment loop (issue 30): NaN settings, a tab in a YAML file,
oversampling targets that name no class, a review server fed bad requests, and the commands the pipeline prints."""

from __future__ import annotations

import http.client
import importlib.util
import json
import shlex
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from maskcomp.analyze import review as review_page
from maskcomp.core import cli
from maskcomp.core.config import load_config
from maskcomp.core.errors import MaskcompError
from maskcomp.core.manifests import Manifest, require_current
from maskcomp.data.folds import oversample
from maskcomp.runs import RunRef

ROOT = Path(__file__).resolve().parent.parent


# 13. NaN and infinity


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=.nan", "train.lr"),
        ("train.weight_decay=.inf", "train.weight_decay"),
        ("crop.thresholds=[0.6, .nan, 0.7]", "crop.thresholds"),
        ("loss.terms=[{name: ce, weight: .nan}]", "loss.terms"),
    ],
)
def test_nan_and_infinity_are_refused_for_every_number(override, key):
    with pytest.raises(MaskcompError, match=rf"config key {key}=.*: expected a finite number \(not NaN or infinity\)"):
        load_config("configs/sample.yaml", [override])


# 15. a tab in a YAML file


def test_a_tab_in_a_config_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("train:\n  epochs: 3\n\tlr: 0.01\n")
    with pytest.raises(MaskcompError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}, line 3, column 1: a tab character; YAML indents with spaces only, replace the tab with spaces"
    )


def test_other_yaml_errors_name_line_and_column(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("train:\n  epochs: [3\n")
    with pytest.raises(MaskcompError, match=rf"{path}, line 3, column 1: not valid YAML \(.*\); fix the syntax"):
        load_config(path)


# 7. oversampling targets


@pytest.mark.parametrize("targets", ["{9: 0.2}", "{foo: 0.2}", "{'>=61': 0.2}"])
def test_oversampling_targets_that_name_no_class_of_the_head_are_refused(targets):
    with pytest.raises(MaskcompError, match=r"folds.oversample.targets=.*is not a class of head age; expected one of"):
        load_config(
            None,
            ["folds.oversample.strategy=repeat", "folds.oversample.head=age", f"folds.oversample.targets={targets}"],
        )


def test_oversampling_targets_by_name_oversample_that_class():
    rows = pd.DataFrame({"age_group": [0] * 18 + [2] * 2, "label": 0})
    for targets in ("{'>=60': 0.2}", "{2: 0.2}"):
        cfg = load_config(None, ["folds.oversample.strategy=repeat", f"folds.oversample.targets={targets}"])
        out, _ = oversample(rows, cfg, seed=0)
        assert np.isclose((out["age_group"] == 2).mean(), 0.2, atol=0.02), targets


def test_oversampling_shares_must_be_positive_and_below_one():
    with pytest.raises(MaskcompError, match="expected positive shares that sum to less than 1"):
        load_config(None, ["folds.oversample.targets={0: 0.6, 2: 0.5}"])


# 17. wording of a stale stage


def test_a_missing_manifest_reads_as_one_parenthesis(tmp_path):
    with pytest.raises(MaskcompError) as err:
        require_current(tmp_path / "infer.json", Manifest("infer", {}), "fold0", "predictions out of date", "run it")
    assert str(err.value) == "fold0: predictions out of date (no manifest yet); run it"


# 12. the review server fed bad requests


@pytest.fixture
def review_server(tmp_path):
    run = RunRef("sample", "abc", tmp_path / "run")
    run.dir.mkdir()
    candidates = pd.DataFrame(
        [{"person_id": "000001", "fix": "age", "current": "25", "suggested": "65", "value": "65", "confidence": "0.9",
          "auto": "False", "systematic": "False", "note": ""}]
    )  # fmt: skip
    decisions = pd.DataFrame(columns=review_page.DECISION_COLUMNS)
    review = review_page.Review(run, candidates, {}, decisions)
    handler = type("H", (review_page.Handler,), {"review": review})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], run
    server.shutdown()
    server.server_close()


def post(port: int, body: bytes, length: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/api/decide")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", length)
    conn.endheaders()
    conn.send(body)
    reply = conn.getresponse()
    status, data = reply.status, json.loads(reply.read())
    conn.close()
    return status, data


@pytest.mark.parametrize("length", ["abc", "100000000000", "-5", "²"])
def test_a_bad_content_length_gets_400_and_one_line(review_server, length):
    port, run = review_server
    status, data = post(port, b"{}", length)
    assert status == 400 and "Content-Length" in data["error"] and "\n" not in data["error"]
    body = json.dumps({"person_id": "000001", "fix": "age", "decision": "reject"}).encode()
    assert post(port, body, str(len(body)))[0] == 200, "the server still answers"


def test_an_edited_age_of_odd_digits_gets_400_and_saves_nothing(review_server):
    port, run = review_server
    body = json.dumps({"person_id": "000001", "fix": "age", "decision": "edit", "value": "²"}).encode()
    status, data = post(port, body, str(len(body)))
    assert status == 400 and data["error"] == "'²' is not an age; give a whole number of years, 0 to 120"
    assert not run.review_decisions.exists()
    body = json.dumps({"person_id": "000001", "fix": "age", "decision": "edit", "value": "61"}).encode()
    status, data = post(port, body, str(len(body)))
    assert status == 200 and data["value"] == "61"


def test_a_crop_index_of_odd_digits_is_a_404(review_server):
    port, _ = review_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/crop/000001/%C2%B2")
    assert conn.getresponse().status == 404
    conn.close()


# 17. printed commands keep the user's CONFIG, DATA and ARGS


def test_printed_commands_rerun_with_the_users_config_data_and_args(tmp_path):
    argv = ["--config", "configs/sample.yaml", f"paths.data_root={tmp_path / 'my data'}", "train.epochs=3",
            "data.label_fixes=[a.csv]"]  # fmt: skip
    cli.parse_stage_args(cli.stage_parser("x"), argv)
    line = cli.make_command("folds train", [cli.label_fixes_override(["a.csv"], "b.csv")])
    words = shlex.split(line)
    assert words[:3] == ["make", "folds", "train"]
    assert f"DATA={tmp_path / 'my data'}" in words and "CONFIG=configs/sample.yaml" in words
    assert "ARGS=train.epochs=3 data.label_fixes=[a.csv,b.csv]" in words
    dry = subprocess.run(["make", "-n", *words[1:], "SKIP_SETUP=1"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    train_line = next(line for line in dry.stdout.splitlines() if " train.py " in line)
    assert shlex.split(train_line)[2:] == [
        "--config", "configs/sample.yaml", f"paths.data_root={tmp_path / 'my data'}", "train.epochs=3",
        "data.label_fixes=[a.csv,b.csv]",
    ]  # fmt: skip


def test_the_review_page_prints_the_retrain_command_with_the_users_context(tmp_path):
    cli.parse_stage_args(cli.stage_parser("x"), ["--config", "configs/sample.yaml", "paths.data_root=/d", "seed=3"])
    run = RunRef("sample", "abc", tmp_path)
    review = review_page.Review(run, pd.DataFrame(columns=["person_id"]), {}, pd.DataFrame(), ["old.csv"])
    assert review.retrain == (
        f"make folds train infer ensemble CONFIG=configs/sample.yaml DATA=/d "
        f"ARGS='seed=3 data.label_fixes=[old.csv,{run.reviewed_fixes}]'"
    )


def load_script(name: str):
    """A root script as a module (its `main` takes argv)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("automatic", [0, 2])
def test_relabel_says_make_review_next_with_the_users_context(monkeypatch, capsys, automatic):
    script = load_script("relabel")
    held = ["gender: automatic fixes measured precision 0.75 on planted errors (...), below the 0.8 bar"]
    result = SimpleNamespace(automatic=automatic, to_review=3, candidates="c.csv", fixes="auto.csv", held=held)
    monkeypatch.setattr(script, "relabel", lambda cfg: result)
    script.main(["--config", "configs/sample.yaml", "paths.data_root=/d", "train.epochs=2"])
    printed = capsys.readouterr().out.splitlines()
    assert f"held for review: {held[0]}" in printed
    nxt = next(line for line in printed if line.startswith("next:"))
    assert "make review CONFIG=configs/sample.yaml DATA=/d ARGS=train.epochs=2" in nxt
    if automatic:
        assert "ARGS='train.epochs=2 data.label_fixes=[auto.csv]'" in nxt
