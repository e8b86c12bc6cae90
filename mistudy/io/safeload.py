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

# How torch.save's two formats begin: a zip archive (the default since torch 1.6), or the legacy format's pickled
# magic number (protocol 2, torch's default).
_ZIP_START = b"PK\x03\x04"
_LEGACY_START = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


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
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    # Not only pickle's errors: on foreign bytes the weights-only unpickler raises whatever they provoke
    # (IndexError, KeyError, struct.error, UnicodeDecodeError...), so every failure is worded here.
    except Exception as e:
        raise _refusal(e, path, what) from None


def _refusal(error: Exception, path: Path, what: str) -> CheckpointError:
    """One line naming the file and why torch.load failed on it."""
    size, text = path.stat().st_size, str(error)
    global_ = re.search(r"GLOBAL (\w[\w.]*) ", text)  # a whole dotted name: foreign bytes give odd ones
    if global_:
        return CheckpointError(f"{what} {path} holds a Python object ({global_.group(1)}) besides tensors and "
                               "plain containers: refused, since unpickling it could run code (this project "
                               "only loads tensors, numbers, strings, lists and dicts)")
    try:
        with open(path, "rb") as f:
            start = f.read(len(_LEGACY_START))
    except OSError as e:  # e.g. permission denied
        return CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}")
    if not (start.startswith(_ZIP_START) or start == _LEGACY_START):
        return CheckpointError(f"{what} {path} is not a PyTorch file ({size} bytes that torch.save did not write: "
                               "random or foreign data, or a plain pickle), refused")
    # A file that begins as torch.save writes one and fails further on was cut short or damaged.
    if (isinstance(error, (EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError))
            or any(words in text for words in ("central directory", "zip archive", "EOF", "corrupt"))):
        return CheckpointError(f"{what} {path} is truncated or corrupt ({size} bytes; the PyTorch archive cannot "
                               "be read to its end)")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return CheckpointError(f"{what} {path} cannot be read: {first}")


def require(content, keys: tuple[str, ...], path, what: str, hint: str) -> dict:
    """``content`` (a loaded checkpoint) if it is a dict holding ``keys``; else CheckpointError naming the file and
    ``hint`` (what it may be instead)."""
    if not isinstance(content, dict) or not all(k in content for k in keys):
        held = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{what} {path} does not hold {', '.join(keys)} (it holds {held}): {hint}")
    return content


def load_weights(module: torch.nn.Module, state: dict, path, what: str) -> None:
    """``module.load_state_dict(state)``, a mismatch worded in one line naming the file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:  # torch's and optimisers' words
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else type(e).__name__)
        raise CheckpointError(f"{what} {path} does not fit the network its run's config.json describes ({detail}); "
                              "was config.json edited, or the file copied from another run?") from None
