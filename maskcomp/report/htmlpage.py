"""The HTML report pages' one look: stylesheet, header, table of contents, sections, tables, images and links.

Links and images are relative to the page, so a reports/ folder can be copied or zipped and still works."""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.fileio import write_text

STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:24px auto;"
    "padding:0 16px;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:8px 0}"
    "th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f3f5f7}"
    "tr:nth-child(even) td{background:#fafbfc}img{max-width:100%;margin:6px 0}h2{margin-top:32px;"
    "border-bottom:2px solid #e4e7eb;padding-bottom:4px}.meta{color:#555;font-size:13px}"
    ".headline{background:#fff7e6;border-left:4px solid #f0a020;padding:8px 16px;margin:16px 0}"
    "nav{font-size:13px;margin:8px 0 16px}nav a{margin-right:12px}td.note,td.text{text-align:left}"
)


@dataclass
class Section:
    title: str
    body: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def link(target: Path, page_dir: Path, text: str) -> str:
    """<a> to `target` relative to the page's folder."""
    return f"<a href='{html.escape(Path(os.path.relpath(target, page_dir)).as_posix())}'>{html.escape(text)}</a>"


def image(name: str, alt: str) -> str:
    return f"<img src='{html.escape(name)}' alt='{html.escape(alt)}'>"


def table(df: pd.DataFrame, escape: bool = True) -> str:
    """The frame as an HTML table; text columns are left-aligned (numbers stay right-aligned)."""
    out = df.to_html(index=False, border=0, escape=escape, na_rep="")
    text = {
        i
        for i, c in enumerate(df.columns)
        if not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
    }
    if not text:
        return out

    def mark(row: re.Match) -> str:
        cells = row.group(0).split("<td>")
        return cells[0] + "".join(("<td class='text'>" if i in text else "<td>") + c for i, c in enumerate(cells[1:]))

    return re.sub(r"<tr>.*?</tr>", mark, out, flags=re.S)


def render(title: str, meta: list[str], sections: list[Section], path: Path, lead: list[str] | None = None) -> Path:
    """One page: title, metadata lines, a table of contents, then the sections; written atomically."""
    nav = " ".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>" for s in sections)
    parts = [
        f"<!DOCTYPE html><html><head><meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *[f"<p class='meta'>{line}</p>" for line in meta],
        f"<nav>Contents: {nav}</nav>" if len(sections) > 1 else "",
        *(lead or []),
    ]
    for s in sections:
        parts += [f"<h2 id='{s.anchor}'>{html.escape(s.title)}</h2>", *s.body]
    parts.append("</body></html>")
    return write_text("\n".join(parts), path)
