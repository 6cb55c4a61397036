"""The data layer: every stage reads the competition's files through this module.

`load_train` turns train.csv + person folders into one row per image with all labels;
`load_eval` turns eval/info.csv into (ImageID, path). Problems raise a one-line MaskcompError
naming the file and the fix, or with skip_bad are listed in a CSV and left out.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import labels
from ..core.config import Settings
from ..core.context import Context
from ..core.errors import MaskcompError
from ..core.fileio import write_csv
from ..core.paths import Paths
from .csvfiles import read_csv_with
from .label_fixes import apply_label_fixes, read_fixes

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
MIN_AGE, MAX_AGE = 0, 120


@dataclass
class Problems:
    """Collects bad input; raises on the first problem unless skip_bad is set."""

    skip_bad: bool
    rows: list[dict] = field(default_factory=list)

    def add(self, file: Path | str, reason: str, fix: str) -> None:
        if not self.skip_bad:
            raise MaskcompError(f"{file}: {reason}; {fix} (or set data.skip_bad=true to skip it)")
        self.rows.append({"file": str(file), "reason": reason})


def is_hidden(name: str) -> bool:
    """macOS `._*` resource forks, .DS_Store and other dot files are not data."""
    return name.startswith(".")


# the last bytes of a complete file: JPEG's end-of-image marker, PNG's IEND chunk
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 4096


def _is_truncated(path: Path, fmt: str | None) -> bool:
    """True if a JPEG/PNG lacks its end marker near the end of the file (a cut-off download or copy).

    Inside JPEG entropy data 0xFF is always followed by 0x00 or a restart marker, so FFD9 near the end
    is the end-of-image marker; a few bytes of padding after it are allowed."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return False
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return marker not in fh.read()


def check_image(path: Path, how: str) -> str | None:
    """None if the image is usable, else the reason it is not.

    header: the header parses and the file ends with its format's end marker (catches truncation);
    decode: every pixel decodes (slower); none: no check."""
    if how == "none":
        return None
    if path.stat().st_size == 0:
        return "empty (0-byte) image"
    try:
        with Image.open(path) as img:
            if how == "decode":
                img.load()
            elif img.width <= 0 or img.height <= 0:
                return "image has no pixels"
            fmt = img.format
    except Exception as err:  # PIL raises many types for broken files
        return f"unreadable image ({type(err).__name__})"
    if _is_truncated(path, fmt):
        return "truncated image (its end marker is missing)"
    return None


def _person_ids(df: pd.DataFrame, csv: Path) -> pd.Series:
    """Person ids, made unique: a repeated id (003397 in the real data) becomes id-1, id-2 by row order."""
    dup_paths = df["path"][df["path"].duplicated()]
    if len(dup_paths):
        raise MaskcompError(f"{csv}: folder '{dup_paths.iloc[0]}' is listed twice; remove the repeated row")
    counts = df.groupby("id").cumcount()
    ids = df["id"].where(counts == 0, df["id"] + "-" + counts.astype(str))
    for pid in df["id"][counts > 0]:
        log.warning(
            "%s: person id %s appears more than once; the later rows are kept as separate persons (%s-1, ...)",
            csv,
            pid,
            pid,
        )
    return ids


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def _is_hidden_char(c: str) -> bool:
    """Control, format (zero-width) and non-ASCII space characters: a printed name does not show them."""
    return not c.isprintable() or (unicodedata.category(c) in ("Cf", "Zs") and c != " ")


def invisible_characters(name: str) -> str | None:
    """What a message cannot show of `name` ("'x  ' has 2 trailing spaces"), or None when every character shows."""
    notes = []
    lead, trail = len(name) - len(name.lstrip()), len(name) - len(name.rstrip())
    if lead:
        notes.append(_count(lead, "leading space"))
    if trail and trail < len(name):
        notes.append(_count(trail, "trailing space"))
    hidden = [c for c in name.strip() if _is_hidden_char(c)]
    if hidden:
        notes.append(_count(len(hidden), "invisible character") + f" ({', '.join(f'U+{ord(c):04X}' for c in hidden)})")
    return f"{name!r} has {' and '.join(notes)}" if notes else None


def _missing_folder(folder: Path, problems: Problems) -> None:
    """A person folder that does not exist, saying what of its name cannot be seen and whether the name without it
    is a folder."""
    hidden = invisible_characters(folder.name)
    if hidden is None:
        problems.add(folder, "person folder missing", "restore the folder or remove the person's row from train.csv")
        return
    visible = "".join(c for c in folder.name.strip() if not _is_hidden_char(c))
    if (folder.parent / visible).is_dir():
        problems.add(
            folder,
            f"person folder missing: {hidden}, and the folder '{visible}' exists",
            "remove those characters from the path in train.csv",
        )
    else:
        problems.add(
            folder,
            f"person folder missing: {hidden}; no folder '{visible}' either",
            "restore the folder or remove the person's row from train.csv",
        )


def _person_images(folder: Path, problems: Problems, image_check: str) -> dict[str, Path] | None:
    """The 7 images of one person by stem, or None if the person is unusable."""
    if not folder.is_dir():
        _missing_folder(folder, problems)
        return None
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if is_hidden(entry.name) or entry.is_dir():
            continue
        stem, ext = entry.stem, entry.suffix.lower()
        if stem not in labels.IMAGE_MASK_STATUS or ext not in labels.IMAGE_EXTENSIONS:
            problems.add(
                entry,
                "unknown file name",
                f"person folders hold only {', '.join(labels.IMAGE_STEMS)} as .jpg/.jpeg/.png; remove or rename it",
            )
            return None
        if stem in found:
            problems.add(entry, f"duplicate image '{stem}' (also {found[stem].name})", "keep one of the two files")
            return None
        found[stem] = entry
    missing = [s for s in labels.IMAGE_STEMS if s not in found]
    if missing:
        problems.add(
            folder, f"missing image(s) {', '.join(missing)}", "restore them or remove the person's row from train.csv"
        )
        return None
    for path in found.values():
        reason = check_image(path, image_check)
        if reason:
            problems.add(path, reason, "replace the file with a valid image")
            return None
    return found


def read_persons(paths: Paths) -> pd.DataFrame:
    """train.csv as one validated row per person, with a unique person_id."""
    csv = paths.train_csv
    df = read_csv_with(csv, TRAIN_COLUMNS, "train.csv")
    bad_age = df[~df["age"].str.strip().str.fullmatch(r"\d+")]
    if len(bad_age):
        row = bad_age.iloc[0]
        raise MaskcompError(
            f"{csv}: age '{row['age']}' of person {row['id']} (line {bad_age.index[0] + 2}) "
            "is not a whole number; correct it"
        )
    bad_gender = df[~df["gender"].isin(labels.GENDER_NAMES)]
    if len(bad_gender):
        row = bad_gender.iloc[0]
        raise MaskcompError(
            f"{csv}: gender '{row['gender']}' of person {row['id']} (line {bad_gender.index[0] + 2}) "
            "must be male or female"
        )
    df["age"] = df["age"].astype(int)
    for line, row in df[(df["age"] < MIN_AGE) | (df["age"] > MAX_AGE)].iterrows():
        log.warning(
            "%s: age %d of person %s (line %d) is outside %d-%d; check it (it is used as given)",
            csv,
            row["age"],
            row["id"],
            line + 2,
            MIN_AGE,
            MAX_AGE,
        )
    df.insert(0, "person_id", _person_ids(df, csv))
    return df


@dataclass(frozen=True)
class TrainImages:
    """The training images with their labels, and the label fixes that were applied to get them."""

    images: pd.DataFrame
    applied_fixes: pd.DataFrame


def load_train(ctx: Context) -> pd.DataFrame:
    """One row per training image with person and labels, label fixes applied (see read_train)."""
    return read_train(ctx).images


def read_train(ctx: Context) -> TrainImages:
    """One row per training image with person, labels and the fixes applied, and the log of those fixes (listed and
    checked once per context: Context.remembered).

    Columns: image_path, person_id, id, gender, race, age, stem, mask, gender_label, age_group, label.
    """
    return ctx.remembered("train images", ("paths", "data"), lambda: _read_train(ctx.cfg))


def _read_train(cfg: Settings) -> TrainImages:
    paths = cfg.paths.resolved
    persons = read_persons(paths)
    persons, applied_fixes = apply_label_fixes(persons, read_fixes(cfg, persons))
    for source, count in applied_fixes.groupby("source", sort=False).size().items():
        log.info("applied %d label fix(es) from %s", count, source)
    problems = Problems(cfg.data.skip_bad)
    rows = []
    for person in persons.itertuples(index=False):
        images = _person_images(paths.train_images / person.path, problems, cfg.data.image_check)
        if images is None:
            continue
        for stem, image_path in images.items():
            mask = labels.IMAGE_MASK_STATUS[stem]
            if person.swap_incorrect_normal and mask in (1, 2):
                mask = 3 - mask
            rows.append(
                {
                    "image_path": str(image_path),
                    "person_id": person.person_id,
                    "id": person.id,
                    "gender": person.gender,
                    "race": person.race,
                    "age": person.age,
                    "stem": stem,
                    "mask": mask,
                }
            )
    _write_skipped(problems, paths, "train")
    df = pd.DataFrame(rows)
    if df.empty:
        raise MaskcompError(f"{paths.train_csv}: no usable person; check the data root ({paths.data_root})")
    df["gender_label"] = df["gender"].map(labels.gender_code).astype(np.int64)
    df["age_group"] = labels.age_group(df["age"].to_numpy())
    df["label"] = labels.encode(df["mask"].to_numpy(), df["gender_label"].to_numpy(), df["age_group"].to_numpy())
    return TrainImages(df, applied_fixes)


def load_eval(ctx: Context) -> pd.DataFrame:
    """eval/info.csv in its own row order, with each image's path (listed and checked once per stage)."""
    return ctx.remembered("eval images", ("paths", "data"), lambda: _load_eval(ctx.cfg))


def _load_eval(cfg: Settings) -> pd.DataFrame:
    paths = cfg.paths.resolved
    df = read_csv_with(paths.eval_csv, EVAL_COLUMNS, "eval info.csv")
    if df.empty:
        raise MaskcompError(
            f"{paths.eval_csv}: no rows (only a header); restore the competition's info.csv with one row per eval image"
        )
    dup = df["ImageID"][df["ImageID"].duplicated()]
    if len(dup):
        raise MaskcompError(f"{paths.eval_csv}: ImageID {dup.iloc[0]} is listed twice; restore the original file")
    problems = Problems(cfg.data.skip_bad)
    keep = []
    for image_id in df["ImageID"]:
        path = paths.eval_images / image_id
        if not path.is_file():
            problems.add(path, "image listed in info.csv is missing", "restore it from the competition data")
            keep.append(False)
            continue
        reason = check_image(path, cfg.data.image_check)
        if reason:
            problems.add(path, reason, "replace the file with a valid image")
        keep.append(reason is None)
    _write_skipped(problems, paths, "eval")
    out = df.loc[keep, ["ImageID"]].reset_index(drop=True)
    out["image_path"] = [str(paths.eval_images / i) for i in out["ImageID"]]
    return out


def _write_skipped(problems: Problems, paths: Paths, split: str) -> None:
    if problems.rows:
        target = paths.reports / f"skipped_{split}.csv"
        write_csv(pd.DataFrame(problems.rows), target)
        log.warning("skipped %d bad %s file(s); list in %s", len(problems.rows), split, target)


def training_labels(df: pd.DataFrame, old_threshold: int) -> pd.DataFrame:
    """Labels used as training targets: the age boundary may differ from 60; scoring never uses these."""
    out = df.copy()
    out["age_group"] = labels.age_group(out["age"].to_numpy(), old_threshold=old_threshold)
    out["label"] = labels.encode(out["mask"].to_numpy(), out["gender_label"].to_numpy(), out["age_group"].to_numpy())
    return out


def drop_age_bands(df: pd.DataFrame, bands: list[list[int]]) -> pd.DataFrame:
    """Leave out training images of persons whose age lies in any inclusive [low, high] band."""
    drop = np.zeros(len(df), dtype=bool)
    for low, high in bands:
        drop |= (df["age"] >= low).to_numpy() & (df["age"] <= high).to_numpy()
    return df[~drop].reset_index(drop=True)
