"""Figures and tables written by the study: every file gets a provenance sidecar."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path

import matplotlib

import mistudy


def provenance(**fields) -> dict:
    """Where a figure or table came from: the caller's fields plus version, host and date."""
    import torch

    info = {
        "package": f"mistudy {mistudy.__version__}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(fields)
    return info


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_provenance(path: str | os.PathLike, prov: dict) -> Path:
    """Write `<path>.provenance.json` beside a figure or table."""
    side = Path(str(path) + ".provenance.json")
    atomic_write_text(side, json.dumps(prov, indent=2, default=str) + "\n")
    return side


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike, prov: dict | None = None,
                dpi: int = 150) -> Path:
    """Save `fig` as PNG at `path` (atomically) with a provenance sidecar; returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; got file name {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_provenance(path, provenance(**(prov or {})))
    return path
