"""How often the paired interval misses the true difference, in the model it assumes and in two it does not (issue 28).

    python benchmarks/coverage.py            # 10000 simulated studies per cell -> figures/interval_coverage.{csv,md}
    python benchmarks/coverage.py --draws 2000 --out /tmp/coverage

Each simulated study has S seeds of a method A and the baseline B scored on N = 64 validation images by a per-image
score (such as boundary F: the study's score of the summed statistics is the mean over images), so that the true
value -- the expected difference over new seeds and new validation images -- is known exactly:

* assumed:  score = 0.6 + image difficulty (shared by both methods) + seed term per (method, seed)
            + method x image interaction shared by a method's seeds + noise per (method, seed, image);
            the two methods have one law: true difference 0.
* take-off failures:  the same, and with probability P_FAIL each seed of A fails to take off and loses FAIL_LOSS on
            every image: true difference -P_FAIL x FAIL_LOSS.
* noise without interaction:  no method x image term, large noise per (seed, image): true difference 0; the noise
            enters both the seed variance and the jackknife image variance (counted twice).

Two intervals per study: the project's (`mistudy.methods.stats.paired_difference`: seeds widened by the jackknife image
variance, Cochran-Cox critical value) and a plain Student-t over the per-seed differences.  Both are computed
vectorised over the studies here; the first 20 studies of every cell are checked against `stats.paired_difference`
and `stats.t_interval` themselves.  Beside them `stats.seed_check` on each study's per-seed differences: how often
it flags a failing seed where one failed, and how often it flags any seed where none did.  Seeded: the same table
every run.  A miss rate's 95 % binomial half-width is at most 1.96 sqrt(0.25 / draws) (0.98 % at 10000 draws).
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from mistudy.io.tables import write_table
from mistudy.methods import stats

IMAGES = 64
SEEDS = (3, 5, 8)
P_FAIL, FAIL_LOSS = 0.2, 0.3
# name: (seed SD, method x image SD, noise SD per seed and image, probability a seed of A fails)
REGIMES = {
    "assumed (Gaussian seed + method x image terms)": (0.05, 0.12, 0.04, 0.0),
    f"take-off failures (a seed of A fails with p = {P_FAIL}, losing {FAIL_LOSS})": (0.02, 0.05, 0.04, P_FAIL),
    "per-seed image noise without method x image interaction": (0.01, 0.0, 0.2, 0.0),
}
IMAGE_SD, LEVEL = 0.1, 0.6


def simulate(rng, draws: int, seeds: int, seed_sd: float, interaction_sd: float, noise_sd: float, p_fail: float):
    """(per-image scores [draws, 2 (A, B), S, N], failed [draws, S]) of ``draws`` simulated studies."""
    values = (LEVEL + rng.normal(0, IMAGE_SD, (draws, 1, 1, IMAGES)) + rng.normal(0, seed_sd, (draws, 2, seeds, 1))
              + rng.normal(0, interaction_sd, (draws, 2, 1, IMAGES))
              + rng.normal(0, noise_sd, (draws, 2, seeds, IMAGES)))
    failed = rng.random((draws, seeds)) < p_fail
    values[:, 0] -= FAIL_LOSS * failed[..., None]
    return values, failed


def intervals(values: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{interval: (estimate, low, high) [draws]} of the mean paired difference, vectorised over the studies.

    Cochran-Cox: seed variance s_d^2 / S (S - 1 df) plus the jackknife variance of the mean over images, which for a
    mean of per-image scores is the variance of the seed-averaged per-image differences / N (N - 1 df); the critical
    value the variance-weighted mean of the two t quantiles.  Plain t: t_{S-1} sqrt(s_d^2 / S)."""
    draws, _, seeds, images = values.shape
    diff = values[:, 0] - values[:, 1]  # [draws, S, N]
    per_seed = diff.mean(axis=2)
    estimate = per_seed.mean(axis=1)
    seed_var = per_seed.var(axis=1, ddof=1) / seeds
    image_var = diff.mean(axis=1).var(axis=1, ddof=1) / images
    t_seeds, t_images = stats.t_quantile(0.975, seeds - 1), stats.t_quantile(0.975, images - 1)
    critical = (seed_var * t_seeds + image_var * t_images) / (seed_var + image_var)
    cc_half = critical * np.sqrt(seed_var + image_var)
    t_half = t_seeds * np.sqrt(seed_var)
    return {"Cochran-Cox (the project's)": (estimate, estimate - cc_half, estimate + cc_half),
            "plain t over seeds": (estimate, estimate - t_half, estimate + t_half)}


def check_against_stats(values: np.ndarray, found: dict, count: int = 20) -> None:
    """The vectorised intervals of the first ``count`` studies equal mistudy.methods.stats' own."""
    for i in range(min(count, len(values))):
        a, b = (stats.per_image_mean(values[i, m]) for m in (0, 1))
        reference = {"Cochran-Cox (the project's)": stats.paired_difference(a, b, stats.mean_of_sums)[0],
                     "plain t over seeds": stats.t_interval(values[i, 0].mean(axis=1) - values[i, 1].mean(axis=1))}
        for name, ci in reference.items():
            got = [x[i] for x in found[name]]
            if not np.allclose(got, [ci.estimate, ci.low, ci.high], rtol=1e-9, atol=1e-12):
                raise AssertionError(f"{name}, study {i}: vectorised {got} vs mistudy.methods.stats {ci}")


def seed_check_rates(values: np.ndarray, failed: np.ndarray) -> tuple[float | None, float | None, int]:
    """(share of the studies with a failing seed in which seed_check flags one of the failing seeds, share of the
    studies without one in which it flags any seed, studies with a failing seed)."""
    per_seed = (values[:, 0] - values[:, 1]).mean(axis=2)
    caught, failing, false_flags, clean = 0, 0, 0, 0
    for d, f in zip(per_seed, failed):
        flagged = set(stats.seed_check(d).outlier_seeds)
        if f.any():
            failing += 1
            caught += bool(flagged & set(np.flatnonzero(f).tolist()))
        else:
            clean += 1
            false_flags += bool(flagged)
    return (caught / failing if failing else None), (false_flags / clean if clean else None), failing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", type=int, default=10_000, help="simulated studies per regime and number of seeds")
    p.add_argument("--out", default="figures/interval_coverage", help="table path without suffix")
    p.add_argument("--seed", type=int, default=2028)
    args = p.parse_args()
    t0 = time.perf_counter()
    rows = []
    for r, (regime, (seed_sd, interaction_sd, noise_sd, p_fail)) in enumerate(REGIMES.items()):
        truth = -p_fail * FAIL_LOSS + 0.0  # no -0.0
        for seeds in SEEDS:
            rng = np.random.default_rng([args.seed, r, seeds])
            values, failed = simulate(rng, args.draws, seeds, seed_sd, interaction_sd, noise_sd, p_fail)
            found = intervals(values)
            check_against_stats(values, found)
            caught, false_flags, failing = seed_check_rates(values, failed)
            for name, (estimate, low, high) in found.items():
                below, above = float(np.mean(high < truth)), float(np.mean(low > truth))
                miss = below + above
                rows.append({
                    "regime": regime, "seeds": seeds, "interval": name, "draws": args.draws, "true_difference": truth,
                    "miss_rate": miss, "miss_rate_95_halfwidth": 1.96 * math.sqrt(miss * (1 - miss) / args.draws),
                    "miss_interval_below_truth": below, "miss_interval_above_truth": above,
                    "mean_width": float(np.mean(high - low)),
                    "studies_with_a_failing_seed": failing if p_fail else None,
                    "seed_check_flags_a_failing_seed": caught,
                    "seed_check_flags_a_seed_without_failure": false_flags})
    seconds = time.perf_counter() - t0
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    formatted = [{
        "regime": r["regime"], "S": r["seeds"], "interval": r["interval"], "true Δ": f"{r['true_difference']:+.3f}",
        "misses [95%]": f"{r['miss_rate']:.1%} ± {r['miss_rate_95_halfwidth']:.1%}",
        "interval below / above truth": f"{r['miss_interval_below_truth']:.1%} / {r['miss_interval_above_truth']:.1%}",
        "mean width": f"{r['mean_width']:.3f}",
        "seed_check: flags a failing seed (studies with one)": (
            "–" if r["seed_check_flags_a_failing_seed"] is None else
            f"{r['seed_check_flags_a_failing_seed']:.1%} ({r['studies_with_a_failing_seed']})"),
        "seed_check: flags a seed, none failing": f"{r['seed_check_flags_a_seed_without_failure']:.1%}"}
        for r in rows]
    title = (f"Coverage of the paired 95% interval in {args.draws} simulated studies per cell (seeded, "
             f"benchmarks/coverage.py; {IMAGES} validation images, a per-image score): misses = studies whose interval "
             "excludes the true expected difference (nominal 5%), ± its 95% binomial half-width. Cochran-Cox: "
             f"{stats.PAIRED_INTERVAL_TEXT}. Plain t: Student-t over the per-seed differences alone. "
             f"{stats.SEED_CHECK_TEXT}. Regimes (SD of seed term, method x image term, per-seed image noise; image "
             "difficulty SD 0.1 shared): " + "; ".join(f"{name}: {v[0]}, {v[1]}, {v[2]}" for name, v in REGIMES.items())
             + f". Run on {cpu}, {seconds:.0f} s.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_table(rows, args.out, {
        "source": "python benchmarks/coverage.py" + (f" --draws {args.draws}" if args.draws != 10_000 else ""),
        "draws": args.draws, "seed": args.seed, "cpu": cpu, "seconds": round(seconds, 1)},
        markdown_rows=formatted, title=title)
    print(md_path.read_text())
    print(f"written: {csv_path}, {md_path} ({seconds:.0f} s on {cpu})")


if __name__ == "__main__":
    main()
