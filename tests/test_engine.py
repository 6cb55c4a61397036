"""infer.engine=onnxruntime: the fold models exported once, beside their checkpoints, and predicting what torch
predicts (TTA views included), so the submission does not change."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from maskcomp.core import labels
from maskcomp.core.config import updated
from maskcomp.core.errors import MaskcompError
from maskcomp.core.manifests import file_digest
from maskcomp.ensemble.stage import ensemble
from maskcomp.predict.engine import engine_model
from maskcomp.predict.infer import infer

from conftest import latest, run_pipeline

pytestmark = pytest.mark.slow


def test_onnxruntime_predicts_what_torch_predicts_and_exports_once(trained_tiny):
    _, cfg = trained_tiny
    cfg = updated(cfg, {"infer.tta": ["identity", "hflip"]})
    torch_submission = pd.read_csv(run_pipeline(cfg))
    run = latest(cfg)
    folds = run.trained_folds()
    torch_probs = {f: np.load(run.fold(f).test_probs) for f in folds}
    torch_oof = {f: pd.read_csv(run.fold(f).oof_tta) for f in folds}
    onnx_cfg = updated(cfg, {"infer.engine": "onnxruntime"})
    infer(onnx_cfg)  # another engine: the predictions are made again
    for f in folds:
        files = run.fold(f)
        export = files.onnx(file_digest(files.best))
        assert export.exists() and len(list(files.dir.glob("*.onnx"))) == 1
        assert np.abs(np.load(files.test_probs) - torch_probs[f]).max() <= 1e-4
        columns = labels.PROB_COLUMNS
        assert np.abs(pd.read_csv(files.oof_tta)[columns].values - torch_oof[f][columns].values).max() <= 1e-4
    assert pd.read_csv(ensemble(onnx_cfg))["ans"].tolist() == torch_submission["ans"].tolist()
    exported = {f: run.fold(f).onnx(file_digest(run.fold(f).best)).stat().st_mtime_ns for f in folds}
    for f in folds:
        run.fold(f).predictions_manifest.unlink()  # predictions to make again; the exports stay as they are
    infer(onnx_cfg)
    assert {f: run.fold(f).onnx(file_digest(run.fold(f).best)).stat().st_mtime_ns for f in folds} == exported


def test_onnxruntime_on_a_gpu_run_is_one_line(tiny):
    _, cfg = tiny
    with pytest.raises(MaskcompError, match=r"^infer.engine=onnxruntime runs on the CPU, but the run predicts on cuda"):
        engine_model(torch.nn.Identity(), None, None, (48, 36), "onnxruntime", torch.device("cuda"))
