"""Confidence intervals and paired differences, checked against scipy and hand-derived cases."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from mistudy import stats
from mistudy.metrics import SegmentationMetrics


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 100, 2.5])
@pytest.mark.parametrize("p", [0.975, 0.995, 0.9, 0.025, 0.6])
def test_t_quantile_matches_scipy(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-7, abs=1e-9)


def test_t_quantile_rejects_bad_arguments():
    for p in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="p must be"):
            stats.t_quantile(p, 3)
    with pytest.raises(ValueError, match="df must be"):
        stats.t_quantile(0.9, 0)


@pytest.mark.parametrize("values", [[0.5, 0.6], [0.51, 0.55, 0.49], [0.1, 0.4, 0.35, 0.2, 0.3]])
def test_t_interval_matches_scipy(values):
    ci = stats.t_interval(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert ci.estimate == pytest.approx(np.mean(values))
    assert (ci.low, ci.high) == (pytest.approx(low, rel=1e-8), pytest.approx(high, rel=1e-8))
    assert ci.n == len(values)


def test_t_interval_by_hand_for_three_seeds():
    # mean 0.5, s = 0.1, n = 3: half width t_{0.975, 2} * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414
    ci = stats.t_interval([0.4, 0.5, 0.6])
    assert ci.low == pytest.approx(0.5 - 0.248414, abs=1e-6) and ci.high == pytest.approx(0.5 + 0.248414, abs=1e-6)


def test_t_interval_single_value_and_bad_input():
    ci = stats.t_interval([0.7])
    assert ci.estimate == 0.7 and math.isnan(ci.low) and math.isnan(ci.high) and ci.n == 1
    assert ci.format() == "0.700"
    with pytest.raises(ValueError, match="at least one"):
        stats.t_interval([])
    with pytest.raises(ValueError, match="NaN"):
        stats.t_interval([0.1, float("nan")])


def _counts_from_masks(preds, targets, num_classes):
    """Per-image tp/fp/fn [N, C] computed one image at a time with SegmentationMetrics (an independent path)."""
    tp, fp, fn = (np.zeros((len(preds), num_classes)) for _ in range(3))
    import torch
    for i, (p, t) in enumerate(zip(preds, targets)):
        m = SegmentationMetrics(num_classes)
        m.update(torch.as_tensor(p)[None], torch.as_tensor(t)[None])
        cm = m.confmat.double().numpy()
        tp[i] = np.diag(cm)
        fp[i] = cm.sum(0) - np.diag(cm)
        fn[i] = cm.sum(1) - np.diag(cm)
    return tp, fp, fn


def test_miou_from_counts_agrees_with_the_confusion_matrix():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, (6, 8, 8))
    preds = np.where(rng.random((6, 8, 8)) < 0.7, targets, rng.integers(0, 4, (6, 8, 8)))
    preds[preds == 3] = 2  # class 3 never predicted
    import torch
    whole = SegmentationMetrics(4)
    whole.update(torch.as_tensor(preds), torch.as_tensor(targets))
    tp, fp, fn = _counts_from_masks(preds, targets, 4)
    assert stats.miou_from_counts(tp.sum(0), fp.sum(0), fn.sum(0)) == pytest.approx(whole.compute()["miou"])
    # a class absent from both prediction and ground truth is left out, as in SegmentationMetrics
    assert stats.miou_from_counts(np.array([2.0, 0.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.5


def _runs(rng, seeds, images, classes, quality):
    """Per-image counts of a method whose predictions are right with probability `quality`."""
    out = {"tp": [], "fp": [], "fn": []}
    for _ in range(seeds):
        targets = rng.integers(0, classes, (images, 6, 6))
        preds = np.where(rng.random(targets.shape) < quality, targets, rng.integers(0, classes, targets.shape))
        for k, v in zip(("tp", "fp", "fn"), _counts_from_masks(preds, targets, classes)):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


def test_paired_bootstrap_point_estimate_is_the_mean_per_seed_difference():
    rng = np.random.default_rng(1)
    a, b = _runs(rng, 3, 10, 3, 0.9), _runs(rng, 3, 10, 3, 0.6)
    diff = stats.paired_bootstrap(a, b, resamples=200)
    by_hand = np.mean([stats.miou_from_counts(*(a[k][s].sum(0) for k in ("tp", "fp", "fn")))
                       - stats.miou_from_counts(*(b[k][s].sum(0) for k in ("tp", "fp", "fn"))) for s in range(3)])
    assert diff.estimate == pytest.approx(by_hand)
    assert diff.low <= diff.estimate <= diff.high and diff.n == 3
    assert stats.verdict(diff) == "better"
    assert stats.verdict(stats.paired_bootstrap(b, a, resamples=200)) == "worse"


def test_paired_bootstrap_of_identical_methods_is_exactly_zero():
    rng = np.random.default_rng(2)
    a = _runs(rng, 2, 8, 3, 0.7)
    diff = stats.paired_bootstrap(a, a, resamples=100)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert stats.verdict(diff) == "no detectable difference at n = 2"


def test_paired_bootstrap_one_seed_one_image_reduces_to_the_single_difference():
    a = {"tp": [[[3.0, 1.0]]], "fp": [[[1.0, 0.0]]], "fn": [[[0.0, 1.0]]]}
    b = {"tp": [[[2.0, 1.0]]], "fp": [[[1.0, 1.0]]], "fn": [[[1.0, 1.0]]]}
    diff = stats.paired_bootstrap(a, b, resamples=50)
    expected = (3 / 4 + 1 / 2) / 2 - (2 / 4 + 1 / 3) / 2
    assert diff.estimate == pytest.approx(expected) and diff.low == pytest.approx(expected)
    assert diff.high == pytest.approx(expected)


def test_paired_bootstrap_interval_covers_like_an_image_bootstrap():
    # One seed: the interval is a percentile bootstrap over images; compare with a direct, slow loop.
    rng = np.random.default_rng(3)
    a, b = _runs(rng, 1, 12, 3, 0.8), _runs(rng, 1, 12, 3, 0.7)
    fast = stats.paired_bootstrap(a, b, resamples=4000, seed=5)
    draws = np.random.default_rng(9)
    slow = []
    for _ in range(4000):
        idx = draws.integers(0, 12, 12)
        slow.append(stats.miou_from_counts(*(a[k][0][idx].sum(0) for k in ("tp", "fp", "fn")))
                    - stats.miou_from_counts(*(b[k][0][idx].sum(0) for k in ("tp", "fp", "fn"))))
    low, high = np.quantile(slow, [0.025, 0.975])
    assert fast.low == pytest.approx(low, abs=0.02) and fast.high == pytest.approx(high, abs=0.02)


def test_paired_bootstrap_rejects_mismatched_runs():
    a = {"tp": np.ones((2, 3, 4)), "fp": np.ones((2, 3, 4)), "fn": np.ones((2, 3, 4))}
    b = {"tp": np.ones((3, 3, 4)), "fp": np.ones((3, 3, 4)), "fn": np.ones((3, 3, 4))}
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="one shape"):
        stats.paired_bootstrap({"tp": np.ones((2, 3)), "fp": np.ones((2, 3)), "fn": np.ones((2, 3))}, a)


def test_verdict_words_follow_the_interval():
    assert stats.verdict(stats.Interval(0.01, 0.002, 0.02, 3)) == "better"
    assert stats.verdict(stats.Interval(-0.01, -0.02, -0.001, 3)) == "worse"
    assert stats.verdict(stats.Interval(0.05, -0.01, 0.11, 3)) == "no detectable difference at n = 3"
    assert stats.Interval(0.0123, -0.01, 0.03, 3).format(signed=True) == "+0.012 [-0.010, +0.030]"
