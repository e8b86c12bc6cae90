"""The one way the package writes files: to a temporary file beside the target, then a rename.

A reader never sees a half-written checkpoint, table or cache, and an interrupted write leaves the old file
(or nothing) behind, never a corrupt one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path in ``path``'s folder that becomes ``path`` when the block succeeds.

    For writers that want a file name (``torch.save``, ``fig.savefig``, ``np.savez``); ``suffix`` keeps the
    extension such writers look at.  Files are made readable by everyone (results are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb"):
    """Yield an open file (``mode`` "wb" or "w") that becomes ``path`` when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy and torch scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
