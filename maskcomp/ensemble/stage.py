"""The ensemble stage: blend (blend.py), decide (decide.py), write the submission (submission.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from ..core import labels
from ..core.context import Context, stage
from ..core.fileio import write_csv
from .blend import blend, compose_heads, load_all
from .decide import decide
from .names import blended_experiments, probs_file, submission_file
from .submission import (
    append_index,
    keep_replaced,
    sidecar_of,
    submission_table,
    warn_never_predicted,
    write_submission,
)
from .vote import vote

log = logging.getLogger(__name__)


def write_eval_probs(ids: list[str], logits: np.ndarray, path: Path) -> Path:
    """<name>.probs.csv: the submission's decided class probabilities per eval image (what pseudo-labels read)."""
    table = pd.DataFrame(softmax(logits, axis=1), columns=labels.PROB_COLUMNS).round(5)
    return write_csv(table.assign(ImageID=ids)[["ImageID", *labels.PROB_COLUMNS]], path)


@stage
def ensemble(ctx: Context) -> Path:
    """Blend the experiments, decide (biases, nested), write the submission, its sidecar and an index row (or, with
    ensemble.vote, hard-vote submission files: vote.py); with
    ensemble.stamped_copy also <name>_cv<CV>_<date>.csv, a file name a leaderboard upload can be told apart by."""
    cfg, paths = ctx.cfg, ctx.paths
    if cfg.ensemble.vote:
        return vote(ctx)
    ens_cfg = cfg.ensemble
    experiments = blended_experiments(cfg)
    loaded = load_all(ctx, experiments)
    y, folds = loaded[0].oof["label"].to_numpy(), loaded[0].oof["fold"].to_numpy()
    out = submission_file(cfg)
    per_head = [compose_heads(ens_cfg.heads, dict(zip(experiments, loaded)))] if ens_cfg.heads else loaded
    mix = blend(cfg, per_head, out)
    decision = decide(np.log(np.clip(mix.oof, 1e-9, None)), y, folds, ens_cfg)
    info = pd.read_csv(paths.eval_csv, dtype=str, keep_default_na=False)
    decided = np.log(np.clip(mix.test, 1e-9, None)) + decision.biases
    sub = submission_table(info, loaded[0].ids, decided.argmax(1), str(out))
    sidecar = sidecar_of(cfg, loaded, mix, decision, sub, y).as_json()
    partial = "_partial" if sidecar["summary"]["missing_folds"] else ""  # a run with folds left out (partial_run)
    stamp = f"{out.stem}{partial}_cv{decision.cv_f1:.4f}_{time.strftime('%Y-%m-%d')}.csv"
    written = [out] + ([out.with_name(stamp)] if ens_cfg.stamped_copy else [])
    keep_replaced(out, sidecar["summary"]["runs"])
    for path in written:
        write_submission(sub, sidecar, path)
    append_index(paths.submissions / "index.csv", written, sidecar)
    write_eval_probs(loaded[0].ids, decided, probs_file(out))
    warn_never_predicted(sub, y)
    gain = f"; nested gain {decision.nested['gain']:+.4f}" if decision.nested else ""
    print(f"OOF macro F1 {decision.before['f1']:.4f} -> {decision.after_f1:.4f} after the decision step{gain}")
    log.info(
        "wrote %s (%d rows) and its .json sidecar; listed in %s",
        " and ".join(map(str, written)),
        len(sub),
        paths.submissions / "index.csv",
    )
    return out
