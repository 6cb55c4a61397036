"""CSV files of strings as the competition and its users save them: UTF-8 (with or without BOM) or CP949, the
encoding Korean Excel writes; a missing file, a broken one or a missing column is one line naming it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from ..core.errors import MaskcompError

log = logging.getLogger(__name__)


# UTF-8 (a BOM is dropped), then CP949, the encoding Korean Excel saves CSV files in
CSV_ENCODINGS = ("utf-8-sig", "cp949")


def read_text_csv(path: Path) -> pd.DataFrame:
    """A CSV of strings in the first encoding of CSV_ENCODINGS that decodes it; says which when not plain UTF-8."""
    raw = path.read_bytes()
    for encoding in CSV_ENCODINGS:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding != "utf-8-sig" or raw.startswith(b"\xef\xbb\xbf"):
            log.info("%s: read as %s", path, "UTF-8 with BOM" if encoding == "utf-8-sig" else encoding.upper())
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    raise MaskcompError(f"{path}: neither UTF-8 nor CP949 text; save it again as UTF-8 CSV")


def read_csv_with(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise MaskcompError(f"{path}: missing; put the competition's {what} there or run `make sample`")
    try:
        df = read_text_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise MaskcompError(f"{path}: not a readable CSV ({type(err).__name__}); restore the original file") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MaskcompError(f"{path}: missing column(s) {', '.join(missing)}; expected columns {','.join(columns)}")
    return df
