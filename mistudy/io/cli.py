"""Argument parsing shared by `mistudy train/evaluate` and `mistudy study`: one-line errors, checked numbers."""

from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """Bad options end with one clear line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    v = _parse(int, text, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    v = _parse(int, text, "an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def error_line(error: BaseException) -> str:
    """One line for an error a user must act on (an OSError: its words and file).  An error raised in a DataLoader
    worker arrives wrapped in a traceback ("Caught ValueError in DataLoader worker process 1 ... Original
    Traceback ..."): its own message is shown, as it would be without workers."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror:  # not "[Errno 13] ...: 'path'"
        text = error.strerror + (f": {error.filename}" if error.filename and str(error.filename) not in error.strerror
                                 else "")
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def positive_float(text: str) -> float:
    v = _parse(float, text, "a number")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def non_negative_float(text: str) -> float:
    v = _parse(float, text, "a number")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v
