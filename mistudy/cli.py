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


def non_negative_float(text: str) -> float:
    v = _parse(float, text, "a number")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v
