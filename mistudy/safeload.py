"""The one way the package reads PyTorch files (checkpoints, weights): ``torch.load(weights_only=True)``, every
failure worded in one line that names the file.

Nothing is ever unpickled with ``weights_only=False``: a file holding arbitrary Python objects (a pickle that
could run code) is refused, and torch's own advice to retry without ``weights_only`` is never passed on.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read safely; the message names the file and what is wrong."""


def load(path: str | os.PathLike, what: str = "checkpoint"):
    """The content of a .pt file (tensors, numbers, strings, lists and dicts only), on the CPU.

    Raises FileNotFoundError for a missing path or a directory, CheckpointError for a file that is truncated, not
    a PyTorch file, or holds objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        kind = " (it is a directory)" if path.is_dir() else ""
        raise FileNotFoundError(f"{what} {path} does not exist{kind}")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        global_ = re.search(r"GLOBAL ([\w.]+)", str(e))
        if global_:
            raise CheckpointError(f"{what} {path} holds a Python object ({global_.group(1)}) besides tensors and "
                                  "plain containers: refused, since unpickling it could run code (this project "
                                  "only loads tensors, numbers, strings, lists and dicts)") from None
        raise CheckpointError(f"{what} {path} is not a PyTorch file ({size} bytes that torch.save did not write: "
                              "random or foreign data, or a plain pickle), refused") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        text = str(e)
        if "central directory" in text or "zip archive" in text or isinstance(e, (EOFError, zipfile.BadZipFile)):
            raise CheckpointError(f"{what} {path} is truncated or corrupt ({size} bytes; the PyTorch archive cannot "
                                  "be read to its end)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{what} {path} cannot be read: {first}") from None
