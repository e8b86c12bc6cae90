"""Fixtures shared by the tests: `voc_root` and `cityscapes_root` (see datatrees.py)."""

from datatrees import cityscapes_root, voc_root  # noqa: F401  (pytest registers imported fixtures)
