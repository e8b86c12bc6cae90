"""Confidence intervals over seeds and paired differences between methods.

Two questions, two tools:

* "How good is method A?" -- mean over seeds with a Student-t interval (`t_interval`).
* "Is A better than the baseline B?" -- the paired difference over the same seeds and the same validation images,
  with a percentile bootstrap that resamples both seeds and images (`paired_bootstrap`).  The scores are
  dataset-level mIoUs recomputed from per-image true/false positive and false negative counts, so a resampled
  validation set is scored exactly as the real one.

`verdict` words a difference from its interval, never from the point estimate.  numpy only; scipy checks the
numbers in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval; low/high are NaN when n is too small."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """'0.512 [0.480, 0.544]' ('+0.012 [...]' if signed); just the estimate when there is no interval."""
        sign = "+" if signed else ""
        text = f"{self.estimate:{sign}.{digits}f}"
        if math.isnan(self.low):
            return text
        return f"{text} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def _t_pdf(x: np.ndarray, df: float) -> np.ndarray:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))


def _t_cdf_upper(x: float, df: float) -> float:
    """P(T > x) for x >= 0, by Simpson integration of the density on [0, x] (smooth; 1e-12 accurate here)."""
    steps = 4000  # even
    grid = np.linspace(0.0, x, steps + 1)
    weights = np.ones(steps + 1)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return 0.5 - float((weights * _t_pdf(grid, df)).sum() * (x / steps) / 3)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with df degrees of freedom (p in (0, 1), df > 0).

    Found by bisection on the upper tail; agrees with scipy.stats.t.ppf to ~1e-9 (tested).
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    tail = min(p, 1 - p)
    lo, hi = 0.0, 1.0
    while _t_cdf_upper(hi, df) > tail:  # bracket the quantile
        lo, hi = hi, hi * 2
        if hi > 1e7:
            raise ValueError(f"t quantile out of range for p={p}, df={df}")
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_upper(mid, df) > tail else (lo, mid)
    q = (lo + hi) / 2
    return q if p > 0.5 else -q


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of `values` (e.g. one score per seed) with a Student-t confidence interval.

    mean +- t_{(1+c)/2, n-1} * s / sqrt(n), s the sample standard deviation.  n = 1 gives NaN bounds.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    if np.isnan(x).any():
        raise ValueError(f"t_interval got NaN among {x.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    half = t_quantile((1 + confidence) / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size), confidence)


def miou_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """mIoU over the last axis (classes) from summed counts [..., C]; classes with an empty union are left out.

    The same rule as `SegmentationMetrics.compute()["miou"]`.
    """
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        return np.nanmean(iou, axis=-1) if iou.shape[-1] else np.full(iou.shape[:-1], np.nan)


def _check_counts(name: str, counts: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(counts[k], dtype=np.float64) for k in ("tp", "fp", "fn")]
    if arrays[0].ndim != 3 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"{name}: tp, fp and fn must share one shape [seeds, images, classes], got "
                         f"{[a.shape for a in arrays]}")
    return tuple(arrays)


def paired_bootstrap(method: dict, baseline: dict, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> Interval:
    """Mean over seeds of mIoU(method) - mIoU(baseline), with a bootstrap interval over seeds and images.

    method, baseline: {"tp", "fp", "fn"}: per-image counts [S, N, C] -- seed s of both methods trained with the
        same seed, image n the same validation image.  Each bootstrap replicate draws S seeds and N images with
        replacement (the same draws for both methods, which keeps the pairing), sums the counts over the drawn
        images, computes each drawn seed's two mIoUs and averages their differences.  The interval is the
        percentile interval of the replicates.
    """
    m, b = _check_counts("method", method), _check_counts("baseline", baseline)
    if m[0].shape != b[0].shape:
        raise ValueError(f"method and baseline differ in shape: {m[0].shape} vs {b[0].shape} (seeds, images, "
                         "classes must match: the same seeds on the same validation images)")
    seeds, images, _ = m[0].shape
    if seeds < 1 or images < 1:
        raise ValueError("paired_bootstrap needs at least one seed and one image")

    def diff(image_weights: np.ndarray) -> np.ndarray:  # [R, N] -> [R, S]
        scores = [miou_from_counts(*(np.einsum("rn,snc->rsc", image_weights, a) for a in counts))
                  for counts in (m, b)]
        return scores[0] - scores[1]

    estimate = float(diff(np.ones((1, images)))[0].mean())
    rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, resamples, 250):  # chunks keep the [R, S, C] sums small for large validation sets
        r = min(250, resamples - start)
        image_weights = rng.multinomial(images, np.full(images, 1 / images), size=r).astype(np.float64)
        seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=r) / seeds
        per_seed = diff(image_weights)
        replicates.append(np.nansum(per_seed * seed_weights, axis=1))
    replicates = np.concatenate(replicates)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), seeds, confidence)


def verdict(difference: Interval, better: str = "better", worse: str = "worse") -> str:
    """Words for a difference from its interval: better / worse when the interval excludes 0, else no detectable
    difference (naming n)."""
    if math.isnan(difference.low):
        return f"no interval at n = {difference.n}"
    if difference.low > 0:
        return better
    if difference.high < 0:
        return worse
    return f"no detectable difference at n = {difference.n}"
