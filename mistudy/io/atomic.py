"""The one way the package writes files: to a temporary file beside the target, then a rename.

A reader never sees a half-written checkpoint, table or cache, and an interrupted write leaves the old file
(or nothing) behind, never a corrupt one.  Temporary files are named ``.<name>.tmp-<random><suffix>``, so that what
a killed writer left behind can be recognised and removed (`remove_temporaries`), and a write that fails because
the disk is full says so (`DiskFullError`) instead of a stream error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

TEMPORARY_MARK = ".tmp-"
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NEARLY_FULL = 64 << 20  # bytes: a writer failing with less than this free is taken to have filled the disk


class DiskFullError(OSError):
    """A file could not be written because its disk is full; the previous version of the file is kept."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", keep_if_same: bool = False):
    """Yield a temporary path in ``path``'s folder that becomes ``path`` when the block succeeds.

    For writers that want a file name (``torch.save``, ``fig.savefig``, ``np.savez``); ``suffix`` keeps the
    extension such writers look at.  Files are made readable by everyone (results are meant to be shared).
    keep_if_same: leave ``path`` untouched when the new file holds the same bytes (`replace_if_changed`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMPORARY_MARK}", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        if keep_if_same:
            replace_if_changed(Path(tmp), path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(e, path.parent):
            kept = f"the previous {path.name} is kept, nothing was lost" if path.exists() else \
                f"there was no {path.name} before"
            raise DiskFullError(errno.ENOSPC, f"the disk holding {path.parent} is full: {path.name} could not be "
                                f"written; {kept} (free some space, then continue, e.g. with --resume)") from e
        raise


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC/EDQUOT, or a writer's own error (torch.save says
    "basic_ios::clear: iostream error" or "file write failed") with the disk (nearly) full."""
    if isinstance(error, DiskFullError):
        return False  # already worded
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
        return True
    if isinstance(error, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


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


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` unless ``path`` already holds exactly it; returns whether the file changed."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def replace_if_changed(tmp: Path, path: Path) -> bool:
    """Move a finished temporary file onto ``path`` unless both hold the same bytes (then drop it); returns whether
    ``path`` changed.  Figures and tables regenerated unchanged leave the checkout clean."""
    if path.is_file() and path.stat().st_size == tmp.stat().st_size and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
        return False
    os.replace(tmp, path)
    return True


def remove_temporaries(folder: str | os.PathLike) -> tuple[int, int]:
    """Remove the temporary files an interrupted writer left in ``folder`` (not in subfolders); returns (files,
    bytes).  Only call it where no writer is alive (a locked run directory)."""
    count = size = 0
    for tmp in Path(folder).glob(f".*{TEMPORARY_MARK}*"):
        if tmp.is_file():
            size += tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            count += 1
    return count, size


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy and torch scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
