"""Where a figure, table or weights file came from: a ``<file>.provenance.json`` sidecar beside it."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

import torch

import mistudy
from mistudy.io import atomic


# Fields that say when and where a file was written, not what it holds: a file whose content did not change keeps
# its old sidecar when the new one differs in these only (regenerating an unchanged figure changes nothing, in
# another clone too: the folders of its runs are that clone's).
VOLATILE = ("date", "cpu", "results_dir", "run_dir", "weights_dir")


def cpu_model() -> str:
    """The CPU's model name and its native bf16 support (what decides the CPU profiles' precision)."""
    name = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    name = name or platform.processor() or platform.machine() or "unknown"
    if text:
        bf16 = "avx512_bf16" in text or "amx_bf16" in text
        name += ", native bf16" if bf16 else ", no native bf16"
    return name


def provenance(**fields) -> dict:
    """Where a figure or table came from: the caller's fields plus versions, the CPU that wrote it and the date."""
    info = {"package": f"mistudy {mistudy.__version__}", "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu_model(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    info.update(fields)
    return info


def write_provenance(path, prov: dict, content_changed: bool = True) -> Path:
    """Write `<path>.provenance.json` beside a figure or table.  When the file itself did not change and the old
    provenance differs from ``prov`` in its date, CPU or folders only (`VOLATILE`), it is kept: regenerating an unchanged
    figure changes nothing in the checkout."""
    side = Path(str(path) + ".provenance.json")
    text = json.dumps(prov, indent=2, default=str) + "\n"
    if not content_changed and side.is_file():
        try:
            old = json.loads(side.read_text())
        except ValueError:
            old = None
        new = json.loads(text)
        if old is not None and {k: v for k, v in old.items() if k not in VOLATILE} == \
                {k: v for k, v in new.items() if k not in VOLATILE}:
            return side
    atomic.write_text(side, text)
    return side
