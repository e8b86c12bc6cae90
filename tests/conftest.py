"""Fixtures shared by the tests: `voc_root` and `cityscapes_root` (see datatrees.py), and every figure a test made
closed after it."""

import sys

import pytest
from datatrees import cityscapes_root, voc_root  # noqa: F401  (pytest registers imported fixtures)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    if "matplotlib.pyplot" in sys.modules:  # tests that never drew import no pyplot
        sys.modules["matplotlib.pyplot"].close("all")
