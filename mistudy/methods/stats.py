"""Confidence intervals over seeds and paired differences between methods.

Two questions, two tools:

* "How good is method A?" -- mean over seeds with a Student-t interval (`t_interval`).
* "Would a new training run of A beat a new run of the baseline B?" -- `paired_difference`.  The units are the
  seeds: each seed s gives one paired difference d_s = score(A_s) - score(B_s) on the whole validation set (A and B
  trained with the same seed on the same data, scored on the same images).  The interval is a t-interval over the
  seeds, widened by the image-sampling variance of the mean difference (the same validation images serve every
  seed, so their sampling error does not average out over seeds):

      se^2 = s_d^2 / S  +  V_images,        mean(d) +- t* se,
      t* = (s_d^2 / S * t_{S-1} + V_images * t_{N-1}) / se^2       (Cochran and Cox's critical value)

  with s_d^2 the variance of the d_s, V_images the jackknife (leave-one-image-out) variance of mean(d) over the N
  validation images, and t_k the 97.5 % quantile of Student's t with k degrees of freedom.  Its coverage holds from
  S = 2 seeds up (a seeded null simulation in the tests).  The Welch-Satterthwaite degrees of freedom, the usual
  alternative, are liberal here: the seed part has S - 1 = 1 or 2 degrees of freedom, and at S = 2 a "95 %"
  Welch interval excluded a true zero in 13 % of simulated studies (Cochran-Cox: 4-6 %); the percentile bootstrap
  over seeds and images the project used before covered only 72-81 % at S = 3-5.  A second, clearly named interval,
  `images_only`, answers a narrower question: how sure we are of mean(d) on this validation set, for these
  trained networks.

What the paired interval covers.  Every seed of a study trains on the same training set (one ``data_seed`` for the
generated synthetic images, the same files for VOC and Cityscapes): the seeds vary the training randomness only
(initialisation, data order, augmentation).  The interval therefore covers that randomness and the sampling of the
validation images, NOT a new draw of the training set: "a new run of A beats a new run of B" means a new run on
these training images.

Where it holds and where it does not (issue 28; seeded simulations in the tests, the table made by
``benchmarks/coverage.py``, figures/interval_coverage.md):

* the model it assumes (a Gaussian seed term per run, a method x image interaction shared by a method's seeds,
  noise per seed and image): 95 % coverage from S = 2;
* per-seed image noise without a method x image interaction: the noise enters both the seed variance and the
  jackknife image variance (counted twice), so the interval is too wide (misses well under 5 %): conservative;
* skewed take-off failures in one method (a seed sometimes fails and loses far more than the seed spread): the
  mean over S seeds is a poor, skewed estimate of the expected difference and both this interval and a plain t over
  seeds miss it far more often than 5 % (about a quarter of the studies at S = 3-5), because with no failure
  among the seeds the interval is narrow around the typical run.  No interval over so few seeds mends that;
  `seed_check` says so beside the mean: how many seeds are better or worse (an exact sign test) and which seeds lie
  far from the others (a robust median / MAD rule), so that a bimodal method is reported as such.

Every score is recomputed from summed per-image statistics (`mistudy.methods.metrics`), so a validation set with one image
left out is scored exactly as the real one.  `verdict` words a difference from its interval, never from the point
estimate; `holm` adjusts the p-values of a family of comparisons (the ablation grid).  numpy only; scipy checks the
numbers in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# How the paired intervals are made, in the words the tables print beside them.
PAIRED_INTERVAL_TEXT = ("95% interval over seeds (each seed's difference on the whole validation set), widened by the "
                        "image-sampling variance of the mean (jackknife over validation images; Cochran-Cox critical "
                        "value); it covers training randomness (initialisation, data order, augmentation) and the "
                        "validation images, not the training set (the same training images for every seed)")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval; low/high are NaN when n is too small.

    n: seeds (the units).  components: the (variance, degrees of freedom) parts of the estimate's variance the
    interval was built from (one for a t-interval; seeds and images for a paired difference); se: the square root
    of their sum.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    components: tuple[tuple[float, float], ...] = ()

    @property
    def se(self) -> float:
        return math.sqrt(sum(v for v, _ in self.components)) if self.components else math.nan

    @property
    def p_value(self) -> float:
        """Two-sided p-value of "the true value is 0", the test this interval inverts: the level at which the
        interval's bound reaches 0 (NaN without an interval)."""
        if not self.components:
            return math.nan
        se = self.se
        if se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        z = abs(self.estimate) / se
        if len(self.components) == 1:
            return t_sf_two_sided(z, self.components[0][1])
        lo, hi = 0.0, 1.0  # alpha: the critical value falls from infinity (alpha -> 0) to 0 (alpha -> 1)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if critical_value(self.components, 1 - mid) > z else (lo, mid)
        return (lo + hi) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """'0.512 [0.480, 0.544]' ('+0.012 [...]' if signed); just the estimate when there is no interval."""
        sign = "+" if signed else ""
        text = f"{self.estimate:{sign}.{digits}f}"
        if math.isnan(self.low):
            return text
        return f"{text} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


# --------------------------------------------------------------------------------------- Student's t

def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz; Numerical
    Recipes' betacf), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def _t_cdf_upper(x: float, df: float) -> float:
    """P(T > x) for x >= 0: 0.5 * I_{df / (df + x^2)}(df / 2, 1 / 2)."""
    return 0.5 * _betainc(df / 2, 0.5, df / (df + x * x))


def t_sf_two_sided(x: float, df: float) -> float:
    """P(|T| > |x|) for Student's t with df degrees of freedom (df > 0; large df tend to the normal)."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    x = abs(float(x))
    if math.isinf(x):
        return 0.0
    return min(1.0, 2 * _t_cdf_upper(x, min(df, 1e7)))


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
    df = min(df, 1e7)
    tail = min(p, 1 - p)
    lo, hi = 0.0, 1.0
    while _t_cdf_upper(hi, df) > tail:  # bracket the quantile
        lo, hi = hi, hi * 2
        if hi > 1e7:
            raise ValueError(f"t quantile out of range for p={p}, df={df}")
    for _ in range(70):
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
    _check_confidence(confidence)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    return _interval(mean, [(float(x.var(ddof=1)) / x.size, x.size - 1)], int(x.size), confidence)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def critical_value(components, confidence: float = 0.95) -> float:
    """Cochran and Cox's critical value of an estimate whose variance is a sum of independently estimated parts:
    the variance-weighted mean of each part's t quantile, sum_k v_k t_{df_k} / sum_k v_k (one part: its t quantile).
    Conservative where the Welch-Satterthwaite degrees of freedom are liberal (few seeds)."""
    parts = [(v, df) for v, df in components if v > 0]
    if not parts:
        return 0.0
    q = (1 + confidence) / 2
    return sum(v * t_quantile(q, df) for v, df in parts) / sum(v for v, _ in parts)


def _interval(estimate: float, components, n: int, confidence: float) -> Interval:
    """estimate +- critical value * se, from the variance components [(variance, df)]."""
    components = tuple((float(v), float(df)) for v, df in components)
    half = critical_value(components, confidence) * math.sqrt(sum(v for v, _ in components))
    return Interval(estimate, estimate - half, estimate + half, n, confidence, components)


# ------------------------------------------------------------------------------ paired differences

def seed_and_image_interval(per_seed: np.ndarray, image_variance: float, num_images: int,
                            confidence: float = 0.95) -> Interval:
    """The paired interval over seeds, widened by the image-sampling variance (module docstring).

    per_seed: the S paired differences d_s; image_variance: the variance of mean(d) over the sampling of the
    ``num_images`` validation images.  Variance components s_d^2 / S (S - 1 degrees of freedom) and image_variance
    (N - 1), combined with Cochran and Cox's critical value.  S = 1 has no seed variance to estimate: NaN bounds.
    """
    d = np.asarray(per_seed, dtype=np.float64).ravel()
    _check_confidence(confidence)
    if d.size == 0 or np.isnan(d).any():
        raise ValueError(f"per-seed differences must be numbers, got {d.tolist()}")
    if not image_variance >= 0 or num_images < 1:
        raise ValueError(f"image_variance must be >= 0 and num_images >= 1, got {image_variance}, {num_images}")
    estimate = float(d.mean())
    if d.size == 1:
        return Interval(estimate, math.nan, math.nan, 1, confidence)
    components = [(float(d.var(ddof=1)) / d.size, d.size - 1)]
    if num_images > 1:
        components.append((float(image_variance), num_images - 1))
    return _interval(estimate, components, int(d.size), confidence)


def images_only_interval(estimate: float, image_variance: float, num_images: int, seeds: int,
                         confidence: float = 0.95) -> Interval:
    """estimate +- t_{N-1} sqrt(image_variance): how sure we are of the mean difference on this validation set, for
    these trained networks (a new training run is not part of the question).  n in the result: the seeds."""
    _check_confidence(confidence)
    if num_images < 2:
        return Interval(float(estimate), math.nan, math.nan, seeds, confidence)
    return _interval(float(estimate), [(float(image_variance), num_images - 1)], seeds, confidence)


def jackknife_variance(leave_one_out: np.ndarray) -> float:
    """The jackknife variance (N - 1) / N * sum_n (theta_(n) - mean)^2 of an estimate from its N leave-one-out
    values (NaN values, e.g. an undefined score, are left out)."""
    x = np.asarray(leave_one_out, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return 0.0
    return float((x.size - 1) / x.size * ((x - x.mean()) ** 2).sum())


def paired_difference(method: np.ndarray, baseline: np.ndarray, score: Callable[[np.ndarray], np.ndarray],
                      confidence: float = 0.95) -> tuple[Interval, Interval]:
    """(seeds and images interval, images-only interval) of mean_s score(method_s) - score(baseline_s).

    method, baseline: per-image statistics [S, N, ...] -- seed s of both trained with the same seed, image n the same
        validation image (e.g. confusion matrices [S, N, C, C]).
    score: a function of statistics summed over images [..., *stat shape] -> scores [...], vectorised over leading
        axes (e.g. `mistudy.methods.metrics.miou_from_confmat`).
    The per-seed differences use every image; the image variance is the jackknife over images of the mean
    difference, each image left out of every seed's sums at once (the pairing is kept).
    """
    a, b = (np.asarray(x, dtype=np.float64) for x in (method, baseline))
    if a.shape != b.shape:
        raise ValueError(f"method and baseline differ in shape: {a.shape} vs {b.shape} (seeds, images and "
                         "statistics must match: the same seeds on the same validation images)")
    if a.ndim < 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"per-image statistics must be [seeds, images, ...] with at least one of each, got {a.shape}")
    seeds, images = a.shape[:2]
    totals = [x.sum(axis=1) for x in (a, b)]  # [S, ...]
    per_seed = score(totals[0]) - score(totals[1])  # [S]
    if np.isnan(per_seed).any():
        raise ValueError(f"the score is undefined for some seeds ({per_seed.tolist()})")
    # leave image n out of every seed: totals - x[:, n]  ->  [S, N, ...] -> mean over seeds [N]
    left_out = np.nanmean(score(totals[0][:, None] - a) - score(totals[1][:, None] - b), axis=0)
    variance = jackknife_variance(left_out)
    return (seed_and_image_interval(per_seed, variance, images, confidence),
            images_only_interval(float(per_seed.mean()), variance, images, seeds, confidence))


def per_image_mean(values: np.ndarray) -> np.ndarray:
    """Per-image values [S, N] (NaN where undefined) as statistics [S, N, 2] (value, defined) whose sum over
    images `mean_of_sums` turns into the mean over the defined images: a per-image score, paired like any other."""
    v = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(v)
    return np.stack([np.where(defined, v, 0.0), defined.astype(np.float64)], axis=-1)


def mean_of_sums(sums: np.ndarray) -> np.ndarray:
    """(sum of values, count) [..., 2] -> the mean [...] (NaN for a count of 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], 1), np.nan)


# ------------------------------------------------------------------------------------------- verdicts

def holm(p_values) -> list[float]:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the given order (NaN stays NaN and is not counted).

    Rejecting where the adjusted p < alpha keeps the probability of any false "better"/"worse" in the family below
    alpha (Holm 1979).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(np.isfinite(p))
    order = known[np.argsort(p[known], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


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


def adjusted_verdict(difference: Interval, adjusted_p: float, alpha: float = 0.05, better: str = "better",
                     worse: str = "worse") -> str:
    """The verdict of a test whose p-value was adjusted for the family it belongs to (`holm`)."""
    if math.isnan(adjusted_p):
        return f"no interval at n = {difference.n}"
    if adjusted_p < alpha:
        return better if difference.estimate > 0 else worse
    return f"no detectable difference at n = {difference.n}"


# ------------------------------------------------------------------------------------ beside the mean

# seed_check's outlier rule: a seed's difference lies farther than SEED_OUTLIER_SCALE robust standard deviations
# (1.4826 x the median absolute deviation) from the median of the seeds' differences, and farther than
# SEED_OUTLIER_FLOOR (in mIoU; pass another floor for a metric on another scale); from 3 seeds up.  The floor
# matters at 3-5 seeds, where the MAD of so few values is often tiny: in benchmarks/coverage.py's take-off regime
# (figures/interval_coverage.md) a floor of 0.05 flagged a seed in 9-18 % of the studies without any failure, 0.1
# in 0.4-0.6 %, catching the failing seeds as often (66 / 82 / 90 % of the studies with a failure at S = 3 / 5 / 8;
# at S = 3 two failures among three seeds make the good seed the odd one out).  Where the seeds' differences spread
# widely anyway (SD ~0.07, the assumed regime's) it flags a seed in 16-19 % of the studies: a flag says "far from
# the others", not "failed".
SEED_OUTLIER_SCALE = 3.0
SEED_OUTLIER_FLOOR = 0.1
SEED_CHECK_TEXT = (f"seed check: seeds better / worse with an exact two-sided sign test; an outlier seed lies more "
                   f"than max({SEED_OUTLIER_SCALE:g} x 1.4826 x MAD, {SEED_OUTLIER_FLOOR}) from the median of the "
                   "seeds' differences (from 3 seeds)")


@dataclass(frozen=True)
class SeedCheck:
    """What the seeds say beside their mean (`seed_check`).

    n: seeds; n_better / n_worse: seeds whose difference is > 0 / < 0 (ties are neither); sign_p: the exact
    two-sided sign-test p-value of "better and worse equally likely" over the untied seeds (1.0 without any);
    outlier_seeds: positions (0-based, in the order given) of the seeds whose difference lies far from the others';
    text: the same in a short phrase for tables.
    """

    n: int
    n_better: int
    n_worse: int
    sign_p: float
    outlier_seeds: tuple[int, ...]
    text: str


def sign_test_p(n_better: int, n_worse: int) -> float:
    """Exact two-sided sign test: P(a Binomial(n, 1/2) count at least as far from n/2 as the observed), n the untied
    seeds, i.e. min(1, 2 P(X <= min(k, n - k))); 1.0 when n = 0."""
    n = n_better + n_worse
    if n == 0:
        return 1.0
    k = min(n_better, n_worse)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def seed_check(differences, seeds=None, scale: float = SEED_OUTLIER_SCALE,
               floor: float = SEED_OUTLIER_FLOOR) -> SeedCheck:
    """The per-seed paired differences [S] looked at one by one: how many seeds are better and worse (an exact sign
    test) and which seeds are outliers, |d_s - median| > max(scale x 1.4826 x MAD, floor) (S >= 3; MAD the median
    absolute deviation from the median).  The companion of the paired interval where its mean may mislead: a method
    whose seeds sometimes fail to take off gives a bimodal, skewed set of differences (module docstring).

    seeds: the seeds' names for the text (default: their positions); outlier_seeds are always positions.
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"seed_check needs finite per-seed differences, got {d.tolist()}")
    names = list(range(d.size)) if seeds is None else list(seeds)
    if len(names) != d.size:
        raise ValueError(f"{len(names)} seed names for {d.size} differences")
    better, worse = int((d > 0).sum()), int((d < 0).sum())
    p = sign_test_p(better, worse)
    outliers: tuple[int, ...] = ()
    median = float(np.median(d))
    if d.size >= 3:
        mad = float(np.median(np.abs(d - median)))
        outliers = tuple(int(i) for i in np.flatnonzero(np.abs(d - median) > max(scale * 1.4826 * mad, floor)))
    text = f"{better} of {d.size} seeds better"
    if better + worse < d.size:
        text += f", {worse} worse, {d.size - better - worse} tied"
    elif worse:
        text += f", {worse} worse"
    text += f" (sign test p = {p:.2g})"
    if outliers:
        which = " and ".join(str(names[i]) for i in outliers)
        values = ", ".join(f"{d[i]:+.2f}" for i in outliers)
        role = "an outlier" if len(outliers) == 1 else "outliers"
        text += (f"; seed{'s' if len(outliers) > 1 else ''} {which} {role} ({values} vs median {median:+.2f}): the "
                 "mean may not describe a typical run")
    return SeedCheck(int(d.size), better, worse, p, outliers, text)
