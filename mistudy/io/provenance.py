"""Where a figure, table or weights file came from: a ``<file>.provenance.json`` sidecar beside it."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

import torch

import mistudy
from mistudy.io import atomic


def provenance(**fields) -> dict:
    """Where a figure or table came from: the caller's fields plus versions and the date."""
    info = {"package": f"mistudy {mistudy.__version__}", "torch": torch.__version__,
            "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    info.update(fields)
    return info


def write_provenance(path, prov: dict, content_changed: bool = True) -> Path:
    """Write `<path>.provenance.json` beside a figure or table.  When the file itself did not change and the old
    provenance differs from ``prov`` in its date only, it is kept: regenerating an unchanged figure changes
    nothing in the checkout."""
    side = Path(str(path) + ".provenance.json")
    text = json.dumps(prov, indent=2, default=str) + "\n"
    if not content_changed and side.is_file():
        try:
            old = json.loads(side.read_text())
        except ValueError:
            old = None
        new = json.loads(text)
        if old is not None and {k: v for k, v in old.items() if k != "date"} == \
                {k: v for k, v in new.items() if k != "date"}:
            return side
    atomic.write_text(side, text)
    return side
