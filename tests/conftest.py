"""Shared fixtures: a small generated dataset (made once per session) and configs pointing into tmp dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maskcomp.core import cli
from maskcomp.core.config import load_config
from maskcomp.data.sample import make_sample
from maskcomp.runs import RunRef, resolve_run

# the smallest model and input that exercise a whole stage: the tests' common settings (train.device=cpu comes
# from config_for)
TINY_MODEL = (
    "train.img_size=[48, 36]",
    "train.batch_size=16",
    "train.workers=0",
    "folds.k=2",
    "model.pretrained=false",
    "model.backbone=mobilenetv3_small_050",
    "crop.mode=center",
)
TINY_TRAIN = (*TINY_MODEL, "infer.batch_size=32")  # the tiny model, predicting in larger batches
# the tiny pipeline's settings: one epoch, plain eval (the stage tests that run crop -> ensemble on tiny data)
TINY = (*TINY_MODEL, "infer.batch_size=32", "train.epochs=1", "infer.tta=[identity]")
SAMPLE_PERSONS = 40
SAMPLE_EVAL_PERSONS = 8


def config_for(data_root: Path, work: Path, *overrides: str, config: str = "configs/sample.yaml") -> dict:
    """A config whose outputs all live under `work`, pinned to the CPU (the suite is about the CPU path, and must
    behave the same on a machine with a GPU); `overrides` come last and may say otherwise."""
    outs = [f"paths.{name}={work / name}" for name in ("crops", "models", "reports", "submissions", "cache")]
    return load_config(
        config,
        [
            f"paths.data_root={data_root}",
            f"paths.folds={work / 'folds.csv'}",
            *outs,
            "train.device=cpu",
            "crop.device=cpu",
            *overrides,
        ],
    )


def latest(cfg) -> RunRef:
    """The config experiment's latest run."""
    return resolve_run(cfg.paths.resolved, cfg.experiment)


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_pipeline(cfg) -> Path:
    """crop -> folds -> train -> infer -> ensemble; the submission."""
    from maskcomp.crop.stage import crop_faces
    from maskcomp.data.folds import make_folds
    from maskcomp.ensemble.stage import ensemble
    from maskcomp.predict.infer import infer
    from maskcomp.train.trainer import train

    crop_faces(cfg)
    make_folds(cfg)
    train(cfg)
    infer(cfg)
    return ensemble(cfg)


def fold_dir(cfg: dict, fold: int, experiment: str = "sample") -> Path:
    """Fold `fold` of the experiment's latest run."""
    return resolve_run(cfg.paths.resolved, experiment).fold_dir(fold)


@pytest.fixture(autouse=True)
def fresh_invocation():
    """The invocation a test records through parse_stage_args (the commands stages print) stays with that test."""
    before = cli._invocation
    yield
    cli._invocation = before


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "data"
    cfg = load_config(None, [f"paths.data_root={root}"])
    make_sample(cfg.paths.resolved, SAMPLE_PERSONS, SAMPLE_EVAL_PERSONS, seed=0)
    return root


@pytest.fixture
def data_copy(sample_root, tmp_path) -> Path:
    """A private copy of the sample data that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    return root


@pytest.fixture
def tiny(tiny_root, tmp_path):
    """A private copy of the tiny data and a TINY config writing under tmp_path/work."""
    root = copy_data(tiny_root, tmp_path / "data")
    return root, config_for(root, tmp_path / "work", *TINY)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_root, tmp_path_factory) -> Path:
    """The tiny data through crop -> folds -> train -> infer with the TINY settings (crops, folds, a run, its
    predictions; no submission), once per session and xdist worker: data/ and work/ in the folder returned. Tests
    take copies (trained_tiny), never this."""
    from maskcomp.crop.stage import crop_faces
    from maskcomp.data.folds import make_folds
    from maskcomp.predict.infer import infer
    from maskcomp.train.trainer import train

    base = tmp_path_factory.mktemp("tiny_pipeline")
    cfg = config_for(copy_data(tiny_root, base / "data"), base / "work", *TINY)
    for stage in (crop_faces, make_folds, train, infer):
        stage(cfg)
    return base


@pytest.fixture
def trained_tiny(tiny_pipeline, tmp_path):
    """`tiny` with its pipeline already run: a private copy of the session's trained tiny data and outputs, laid out
    as `tiny` lays them out, which the test may damage. run_pipeline(cfg) on it trains and predicts nothing (the
    crop stage only records the copy's paths) and makes the first submission."""
    shutil.copytree(tiny_pipeline, tmp_path, dirs_exist_ok=True)
    root = tmp_path / "data"
    return root, config_for(root, tmp_path / "work", *TINY)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """6 train persons and 2 eval persons, for stages whose cost grows with the image count."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    make_sample(load_config(None, [f"paths.data_root={root}"]).paths.resolved, 6, 2, seed=3)
    return root


@pytest.fixture
def browser():
    """Headless Chromium driven through chromium-driver (selenium): pages and servers tested as a person sees them."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()
