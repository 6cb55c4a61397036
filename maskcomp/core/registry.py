"""Every stage of the pipeline, named once: its make target, the script the Makefile runs, the function that does
its work, what it reads and writes, and the settings sections it reads. `python -m maskcomp <stage> [args]` runs any
stage through its script; tests/test_registry.py checks the Makefile, the scripts and the README against this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str  # the make target and `python -m maskcomp <name>`
    script: str  # the thin script at the project root that parses arguments and calls `function`
    function: str  # module:function doing the work
    reads: str
    writes: str
    sections: tuple[str, ...]  # settings sections it reads (besides paths)


STAGES = (
    Stage("sample", "preprocess/make_sample.py", "maskcomp.data.sample:make_sample", "nothing",
          "input/data/ (competition layout)", ("sample",)),
    Stage("eda", "preprocess/eda.py", "maskcomp.analyze.eda:run_eda", "train.csv, info.csv, images",
          "reports/eda/", ("data",)),
    Stage("crop", "preprocess/crop_faces.py", "maskcomp.crop.stage:crop_faces", "train and eval images",
          "preprocess/crops/crop-<hash>/ (crops, records.csv, manifest.json), reports/crop/", ("data", "crop")),
    Stage("folds", "folds/make_folds.py", "maskcomp.data.folds:make_folds", "train.csv, label-fix files",
          "folds/folds.csv, fold_summary.csv, applied_fixes.csv, folds.manifest.json", ("data", "folds")),
    Stage("train", "train.py", "maskcomp.train.trainer:train", "folds.csv, crops",
          "models/<exp>/<run-id>/fold<K>/", ("data", "folds", "model", "loss", "augment", "train", "pseudo")),
    Stage("infer", "infer.py", "maskcomp.predict.infer:infer", "a run's checkpoints, eval crops",
          "models/<exp>/<run-id>/fold<K>/test_probs.*, oof_tta.csv, predictions.json; <run>/oof.csv", ("infer",)),
    Stage("ensemble", "ensemble.py", "maskcomp.ensemble.stage:ensemble", "the runs' OOF and eval predictions",
          "submissions/<name>.csv + .json, stamped copy, index.csv", ("ensemble", "infer")),
    Stage("analyze", "analyze.py", "maskcomp.analyze.pages:analyze", "a run, its predictions, the submission",
          "reports/analysis/<exp>/, reports/index.html", ("attention", "relabel")),
    Stage("relabel", "relabel.py", "maskcomp.analyze.noise:relabel", "a run's OOF",
          "<run>/label_fix_candidates.csv, label_fixes_auto.csv", ("relabel",)),
    Stage("review", "review.py", "maskcomp.analyze.review:review_server", "<run>/label_fix_candidates.csv, crops",
          "<run>/label_fixes_reviewed.csv, review_decisions.csv", ()),
    Stage("refit", "refit.py", "maskcomp.train.refit:refit", "a trained run", "<run>/refit/epochs<E>-seed<S>/",
          ("refit", "train")),
    Stage("tune", "tune.py", "maskcomp.tune.study:optimise", "a search file (tune.space)",
          "models/tune/<study>.db, reports/tune/<study>/, configs/tune/<study>_best.yaml", ("tune",)),
    Stage("tune-dashboard", "tune_dashboard.py", "maskcomp.tune.dashboard:dashboard_server",
          "a study's storage (models/tune/<study>.db or TUNE_STORAGE)", "nothing: a live page on 127.0.0.1", ("tune",)),
    Stage("gpu-check", "gpu_check.py", "maskcomp.gpucheck:run_check", "a tiny generated dataset",
          "a table of every CUDA path (nothing kept)", ()),
    Stage("clean", "-m maskcomp.clean", "maskcomp.clean:clean", "the config's paths",
          "removes what the stages above regenerate", ()),
)  # fmt: skip

BY_NAME = {stage.name: stage for stage in STAGES}
