"""Test-only oracles: scores computed by hand, independently of `mistudy.methods.metrics` (which holds the project's
one definition of each), so that the tests compare two derivations rather than one with itself."""

from __future__ import annotations

import numpy as np


def miou_from_counts(tp, fp, fn) -> np.ndarray:
    """mIoU over the last axis (classes) from counts [..., C], by the definition: the mean of TP / (TP + FP + FN)
    over the classes whose union is not empty (NaN where none is)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    flat = [(t, t + p + n) for t, p, n in zip(tp.reshape(-1, tp.shape[-1]), fp.reshape(-1, tp.shape[-1]),
                                               fn.reshape(-1, tp.shape[-1]))]
    out = [np.mean([a / u for a, u in zip(t, union) if u > 0]) if (union > 0).any() else np.nan for t, union in flat]
    return np.asarray(out).reshape(tp.shape[:-1])
