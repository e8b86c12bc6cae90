"""Tables: Markdown and CSV text, files written with their provenance, and a table that displays as a table.

`Table` is what notebooks show: JupyterLab renders it (rich display, text/markdown), headless runs and nbval read
its plain-text form (the Markdown source), so nothing wraps mid-header in the browser and the text stays diffable.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from mistudy.io import atomic, provenance


class Table:
    """Rows of a table with a title: ``_repr_markdown_`` for JupyterLab, ``str``/``repr`` the same Markdown."""

    def __init__(self, rows: list[dict], title: str = "", columns: list[str] | None = None,
                 floatfmt: str = ".4f"):
        self.rows, self.title, self.columns, self.floatfmt = rows, title, columns, floatfmt

    def markdown(self) -> str:
        text = markdown_table(self.rows, self.columns, self.floatfmt)
        return f"**{self.title}**\n\n{text}" if self.title else text

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __str__(self) -> str:
        return (f"{self.title}\n" if self.title else "") + markdown_table(self.rows, self.columns, self.floatfmt)

    __repr__ = __str__


class Tables(list):
    """Several tables shown together (a use-case's networks): each under its title."""

    def _repr_markdown_(self) -> str:
        return "\n\n".join(t.markdown() for t in self)

    def __str__(self) -> str:
        return "\n".join(str(t) for t in self)

    __repr__ = __str__


def _cell(v, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, floatfmt) if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table; None/NaN cells print as an en dash."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV with a header; None cells are empty, floats keep full precision."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows])
    return buf.getvalue()


def write_table(rows: list[dict], path, prov: dict | None = None, columns: list[str] | None = None,
                markdown_rows: list[dict] | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<path>.csv`` and ``<path>.md`` (atomically), each with a provenance sidecar; a file whose content
    is unchanged is left as it is, its provenance too (only its date would change).

    path: the file name with or without .csv/.md.  markdown_rows: other (e.g. formatted) rows for the Markdown
    version; default the same rows.  Returns (csv path, md path).
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".csv", ".md") else path
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    md = (f"{title}\n\n" if title else "") + markdown_table(markdown_rows or rows, None if markdown_rows else columns)
    info = provenance.provenance(**(prov or {}))
    for path_, text in ((csv_path, csv_text(rows, columns)), (md_path, md)):
        provenance.write_provenance(path_, info, content_changed=atomic.write_text_if_changed(path_, text))
    return csv_path, md_path

