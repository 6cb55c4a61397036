"""Person-level stratified k-folds and training-split oversampling.

Folds are assigned to persons (stratified by gender x age group), so a person's 7 images never
sit in two folds. Oversampling only ever touches a training split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import labels
from ..core.config import Settings
from ..core.context import Context, stage
from ..core.errors import MaskcompError
from ..core.fileio import write_csv
from ..core.manifests import (
    Manifest,
    config_keys,
    digest_of,
    require_current,
    write_manifest,
)
from ..core.settings import target_class
from .label_fixes import fix_files
from .pseudo import pseudo_rows
from .tables import drop_age_bands, read_train, training_labels

log = logging.getLogger(__name__)

HEAD_COLUMNS = {"label": "label", "mask": "mask", "gender": "gender_label", "age": "age_group"}


def assign_folds(persons: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold of each person, stratified by gender x age group (the person-level class)."""
    from sklearn.model_selection import StratifiedKFold  # here: scikit-learn costs every other stage 0.6 s to import

    strata = persons["gender_label"] * 3 + persons["age_group"]
    if strata.value_counts().min() < k:
        log.warning("some gender x age group has fewer than k=%d persons; its share per fold will be uneven", k)
    folds = np.full(len(persons), -1)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(persons)), strata)):
        folds[val] = fold
    return pd.Series(folds, index=persons.index, name="fold")


def manifest_file(cfg: Settings) -> Path:
    folds = cfg.paths.resolved.folds
    return folds.with_name(folds.stem + ".manifest.json")


def folds_manifest(ctx: Context) -> Manifest:
    """What folds.csv depends on: train.csv and the label-fix files by content, and the folds settings."""
    cfg, paths, cache = ctx.cfg, ctx.paths, ctx.digests
    inputs = {
        "train_csv": cache.digest(paths.train_csv),
        "label_fixes": digest_of([cache.digest(f) for f in fix_files(cfg) if f.exists()]),
    }
    return Manifest("folds", inputs, config_keys(cfg, "folds"))


def require_current_folds(ctx: Context) -> dict:
    """The folds manifest, after checking that folds.csv was made from the current labels and settings."""
    manifest, place = folds_manifest(ctx), manifest_file(ctx.cfg)
    require_current(
        place,
        manifest,
        str(ctx.paths.folds),
        "made from other labels or folds settings",
        "run `make folds` first",
    )
    return manifest.as_dict()


@stage
def make_folds(ctx: Context) -> pd.DataFrame:
    """Write folds.csv (one row per person) and the per-fold class shares beside it."""
    cfg, paths = ctx.cfg, ctx.paths
    train = read_train(ctx)
    images = train.images
    persons = images.drop_duplicates("person_id")[["person_id", "gender", "age", "gender_label", "age_group"]]
    persons = persons.sort_values("person_id").reset_index(drop=True)
    k = cfg.folds.k
    if len(persons) < k:
        raise MaskcompError(f"{paths.train_csv}: {len(persons)} persons cannot make folds.k={k} folds; lower folds.k")
    persons["fold"] = assign_folds(persons, k, cfg.folds.seed)
    table = pd.crosstab(
        persons["fold"],
        persons["gender"] + "/" + persons["age_group"].map(dict(enumerate(labels.AGE_NAMES))),
        normalize="index",
    ).round(3)
    table.columns.name = None  # crosstab names the column axis col_0, which would head the printed table
    table["persons"] = persons.groupby("fold").size()
    out = paths.folds
    if out.exists() and pd.read_csv(out, dtype={"person_id": str}).equals(persons):
        log.info("%s is up to date", out)
    else:
        manifest_file(cfg).unlink(missing_ok=True)
        write_csv(persons, out)
        log.info("wrote %s (%d persons, %d folds)", out, len(persons), k)
    write_manifest(manifest_file(cfg), folds_manifest(ctx), outs=[out])
    write_csv(table.reset_index(), out.with_name("fold_summary.csv"))
    applied = train.applied_fixes
    write_csv(applied, out.with_name("applied_fixes.csv"))
    print("class shares per fold (persons):")
    print(table.to_string())
    print(
        f"label fixes applied: {len(applied)}"
        + (f" (list in {out.with_name('applied_fixes.csv')})" if len(applied) else "")
    )
    return persons


def load_folds(cfg: Settings, images: pd.DataFrame) -> pd.Series:
    """Fold of every image row; fails if folds.csv is missing or misses persons."""
    path = cfg.paths.resolved.folds
    if not path.exists():
        raise MaskcompError(f"{path}: no folds yet; run `make folds` (or folds/make_folds.py) first")
    folds = pd.read_csv(path, dtype={"person_id": str}).set_index("person_id")["fold"]
    missing = sorted(set(images["person_id"]) - set(folds.index))
    if missing:
        raise MaskcompError(
            f"{path}: person(s) {', '.join(missing[:3])} have no fold; the data changed, rerun `make folds`"
        )
    return images["person_id"].map(folds).astype(int)


def _targets(cfg: Settings) -> tuple[str, dict[int, float]]:
    """The head's column and its targets by class index (names and indices were checked when the config loaded)."""
    over = cfg.folds.oversample
    return HEAD_COLUMNS[over.head], {target_class(over.head, c): float(t) for c, t in (over.targets or {}).items()}


def oversample(train: pd.DataFrame, cfg: Settings, seed: int) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Apply the configured strategy to a TRAINING split.

    repeat:  rare-class rows are repeated (whole copies, then a seeded random part) until each
             targeted class holds its target share of the split.
    sampler: the rows stay; per-row weights for WeightedRandomSampler give each targeted class
             its target share in expectation.
    Returns the (possibly longer) table and the weights (None unless sampler).
    """
    strategy = cfg.folds.oversample.strategy
    if strategy == "none":
        return train, None
    column, targets = _targets(cfg)
    values = train[column].to_numpy()
    counts = {c: int((values == c).sum()) for c in targets}
    rest = len(train) - sum(counts.values())
    rest_share = 1 - sum(targets.values())
    if strategy == "sampler":
        weights = np.full(len(train), rest_share / max(rest, 1))
        for c, t in targets.items():
            if counts[c]:
                weights[values == c] = t / counts[c]
        return train, weights
    rng = np.random.default_rng(seed)
    parts = [train]
    for c, t in targets.items():
        rows = np.flatnonzero(values == c)
        want = round(t * rest / rest_share)
        extra = want - len(rows)
        if len(rows) == 0 or extra <= 0:
            continue
        picks = np.concatenate([np.tile(rows, extra // len(rows)), rng.choice(rows, extra % len(rows), replace=False)])
        parts.append(train.iloc[picks])
    return pd.concat(parts, ignore_index=True), None


def split_fold(cfg: Settings, images: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]:
    """Training and validation rows of one fold.

    Training rows get the training age boundary (train.age_old_threshold), lose the configured
    age bands and are oversampled; validation rows keep the competition's labels, untouched.
    """
    fold_of = load_folds(cfg, images)
    if fold not in set(fold_of):
        raise MaskcompError(f"{cfg.paths.resolved.folds}: there is no fold {fold}; folds are {sorted(set(fold_of))}")
    val = images[fold_of == fold].reset_index(drop=True)
    pseudo = pseudo_rows(cfg)  # confident eval images (pseudo.submission): training rows only, never validation
    rows = pd.concat([images[fold_of != fold], pseudo], ignore_index=True) if len(pseudo) else images[fold_of != fold]
    train, weights = training_split(cfg, rows, f"fold {fold}", cfg.seed + fold)
    return train, val, weights


def training_split(cfg: Settings, rows: pd.DataFrame, name: str, seed: int) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Training rows as a model sees them: the training age boundary, the dropped age bands, the oversampling (a
    fold's training split, or every person for a refit)."""
    train = drop_age_bands(training_labels(rows, cfg.train.age_old_threshold), cfg.train.drop_age_bands)
    if train.empty:
        raise MaskcompError(
            f"{name}: no training image is left after train.drop_age_bands={cfg.train.drop_age_bands}; "
            "narrow or remove the bands"
        )
    return oversample(train.reset_index(drop=True), cfg, seed=seed)
