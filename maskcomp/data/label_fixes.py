"""Label fixes: CSV files of `person_id,fix,value,note` rows (gender male/female, age a whole number, or
swap_incorrect_normal), read, combined across files (contradictions stop, repeats apply once) and applied to the
person table. train.csv itself is never changed."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..core import labels
from ..core.config import PROJECT_ROOT, Settings
from ..core.errors import MaskcompError
from .csvfiles import read_csv_with

log = logging.getLogger(__name__)

FIX_COLUMNS = ("person_id", "fix", "value", "note")
FIX_KINDS = ("gender", "age", "swap_incorrect_normal")
KNOWN_FIXES = PROJECT_ROOT / "configs" / "label_fixes_known.csv"


def read_label_fixes(path: Path) -> pd.DataFrame:
    """A label-fixes file, with each row's place (`file:line`) in a `row` column for messages."""
    df = read_csv_with(path, FIX_COLUMNS[:3], "label-fixes file")
    bad = df[~df["fix"].isin(FIX_KINDS)]
    if len(bad):
        raise MaskcompError(f"{path}: unknown fix '{bad['fix'].iloc[0]}'; use one of {', '.join(FIX_KINDS)}")
    return df.assign(row=[f"{path}:{line + 2}" for line in range(len(df))])


def fix_files(cfg: Settings) -> list[Path]:
    files = [KNOWN_FIXES] if cfg.data.known_label_fixes else []
    return files + [Path(p) if Path(p).is_absolute() else PROJECT_ROOT / p for p in cfg.data.label_fixes]


def _fix_value(row) -> str:
    """A fix's value as it will be applied: gender names as written, ages as whole numbers, swaps have none."""
    if row.fix == "gender":
        if row.value not in labels.GENDER_NAMES:
            raise MaskcompError(f"{row.row}: gender fix for {row.person_id} must be male or female, got '{row.value}'")
        return row.value
    if row.fix == "age":
        if not str(row.value).strip().isdigit():
            raise MaskcompError(f"{row.row}: age fix for {row.person_id} must be a whole number, got '{row.value}'")
        return str(int(row.value))
    return ""


def combine_fixes(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The fixes of every listed file as one table, each applied once. Two rows that set one person's gender or age
    to different values stop with both rows named; so do two swaps of one person (a swap toggles, so a second one
    undoes the first); an exact repeat is kept once, with a warning."""
    kept: dict[tuple[str, str], object] = {}
    for table in tables:
        for row in table.itertuples(index=False):
            row = row._replace(value=_fix_value(row))
            first = kept.get((row.person_id, row.fix))
            if first is None:
                kept[(row.person_id, row.fix)] = row
            elif row.fix == "swap_incorrect_normal":
                raise MaskcompError(
                    f"{first.row} and {row.row}: person {row.person_id} is swapped twice, which undoes "
                    "the swap; keep one of the two rows"
                )
            elif first.value != row.value:
                raise MaskcompError(
                    f"{first.row} and {row.row}: {row.fix} of person {row.person_id} is fixed to "
                    f"'{first.value}' and to '{row.value}'; keep the right one of the two rows"
                )
            else:
                log.warning(
                    "%s repeats the %s fix of person %s in %s; it is applied once",
                    row.row,
                    row.fix,
                    row.person_id,
                    first.row,
                )
    columns = [*FIX_COLUMNS[:3], "row"]
    return pd.DataFrame([{c: getattr(row, c) for c in columns} for row in kept.values()], columns=columns)


def apply_label_fixes(persons: pd.DataFrame, fixes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply gender/age/swap fixes (values checked by combine_fixes) to the person table; returns it and the log of
    what changed, each change with the file it came from."""
    persons = persons.copy()
    if "swap_incorrect_normal" not in persons:
        persons["swap_incorrect_normal"] = False
    unknown = fixes[~fixes["person_id"].isin(persons["person_id"])]
    if len(unknown):
        ids = ", ".join(sorted(set(unknown["person_id"]))[:5])
        raise MaskcompError(
            f"{unknown['row'].iloc[0].rsplit(':', 1)[0]}: unknown person id(s) {ids}; use ids from "
            "train.csv (a repeated id's later rows are id-1, ...)"
        )
    index = pd.Series(persons.index, index=persons["person_id"])
    applied = []
    for row in fixes.itertuples(index=False):
        i = index[row.person_id]
        old = persons.at[i, row.fix]  # each fix kind is also the name of the column it changes
        if row.fix == "gender":
            persons.at[i, "gender"] = row.value
        elif row.fix == "age":
            persons.at[i, "age"] = int(row.value)
        else:
            persons.at[i, row.fix] = not old
        applied.append(
            {
                "person_id": row.person_id,
                "fix": row.fix,
                "old": old,
                "new": persons.at[i, row.fix],
                "source": row.row.rsplit(":", 1)[0],
            }
        )
    return persons, pd.DataFrame(applied, columns=["person_id", "fix", "old", "new", "source"])


def read_fixes(cfg: Settings, persons: pd.DataFrame) -> pd.DataFrame:
    """Every listed fixes file, combined; the shipped file of known fixes names persons of the full competition set,
    so its rows for persons this data lacks are left out."""
    tables = []
    for fix_file in fix_files(cfg):
        table = read_label_fixes(fix_file)
        if fix_file == KNOWN_FIXES:
            table = table[table["person_id"].isin(persons["person_id"])]
        tables.append(table)
    return combine_fixes(tables)
