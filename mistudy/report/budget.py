"""The answer as a function of the training budget (notebook 05): each method's paired Δ mIoU against the baseline
after every validated epoch, and whether each curve has plateaued, is still climbing or cannot be told apart from
either with its seeds' noise (`plateau`, PLATEAU_RULE_TEXT), written as a table beside the figure (`write_budget`).

Per epoch the weights are those after that epoch (no selection), scored on the validation images from the per-image
confusion matrices each run keeps (`runs.EPOCH_CONFMATS`), and paired seed by seed with the baseline exactly as the
final tables are (`stats.paired_difference`: seeds as the units, widened by the image sampling).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from mistudy.methods import stats
from mistudy.methods.metrics import miou_from_confmat
from mistudy.report import viz
from mistudy.report.comparison import comparison, diff_cell, holm_note, paper_claim, runs_for
from mistudy.training import runs
from mistudy.training.config import PRIMARY_NETWORK, PROFILES, USE_CASES

# The plateau test of a validation-mIoU curve (issue 28).  The window: the last PLATEAU_FRACTION of the validated
# epochs, at least PLATEAU_MIN_EPOCHS of them.  Each seed's least-squares slope over the window; the slope's 95%
# interval is a Student-t interval over the seeds' slopes (S >= 2 seeds, S - 1 degrees of freedom: no assumption on
# how one seed's epochs are correlated), or for a single seed the least-squares standard error of its slope
# (points - 2 degrees of freedom, the epochs' noise taken as independent).  The projected gain over the next
# PLATEAU_FRACTION of the budget is slope x (PLATEAU_FRACTION x the last epoch), with the interval scaled alike.
# Three outcomes: "plateaued" when the gain's upper bound is below PLATEAU_GAIN (even the optimistic reading gains
# less than that), "still climbing" when its lower bound is above 0 (and it has not plateaued), else
# "undetermined": too noisy, too few seeds or too short a window to tell.  A fixed gain over a fixed share of the
# budget, judged with its noise, makes the verdict independent of the run's length and never lets one noisy epoch
# decide it: the noise widens the interval, and a wide interval is "undetermined".
PLATEAU_FRACTION = 0.25
PLATEAU_GAIN = 0.01
PLATEAU_MIN_EPOCHS = 4
PLATEAU_CONFIDENCE = 0.95
PLATEAUED, CLIMBING, UNDETERMINED = "plateaued", "still climbing", "undetermined"
PLATEAU_RULE_TEXT = (f"plateau test: least-squares slope of each seed's validation mIoU over the last "
                     f"{PLATEAU_FRACTION:.0%} of the validated epochs (at least {PLATEAU_MIN_EPOCHS}), its "
                     f"{PLATEAU_CONFIDENCE:.0%} interval a Student-t over the seeds' slopes (one seed: the "
                     f"least-squares standard error); projected gain over the next {PLATEAU_FRACTION:.0%} of the "
                     f"budget = slope x {PLATEAU_FRACTION} x last epoch; plateaued when its upper bound < "
                     f"{PLATEAU_GAIN}, still climbing when its lower bound > 0, else undetermined")


def epoch_confmats(group: list[dict], network: str = PRIMARY_NETWORK) -> dict[int, np.ndarray]:
    """{epoch: per-image confusion matrices [S, N, C, C]} over the runs (seeds) of a group, for the epochs every run
    validated (empty when a run has none: written before per-epoch matrices were kept)."""
    per_run = [runs.load_epoch_confmats(r["run_dir"], network) for r in group]
    if not per_run or not all(per_run):
        return {}
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    return {e: np.stack([p[e] for p in per_run]) for e in epochs}


def miou_curve(group: list[dict], network: str = PRIMARY_NETWORK) -> tuple[list[int], np.ndarray]:
    """(validated epochs [E], per-seed validation mIoU [S, E]) of a group of runs."""
    confmats = epoch_confmats(group, network)
    epochs = sorted(confmats)
    if not epochs:
        return [], np.zeros((len(group), 0))
    return epochs, np.stack([miou_from_confmat(confmats[e].sum(axis=1)) for e in epochs], axis=1)


@lru_cache(maxsize=None)
def _t_critical(df: float, confidence: float) -> float:
    return stats.t_quantile((1 + confidence) / 2, df)


def plateau_window(num_epochs: int, fraction: float = PLATEAU_FRACTION) -> int:
    """How many of the last validated epochs the plateau test fits: the last ``fraction`` of them, at least
    PLATEAU_MIN_EPOCHS (all of them when there are fewer)."""
    return min(num_epochs, max(PLATEAU_MIN_EPOCHS, math.ceil(fraction * num_epochs - 1e-9)))


def plateau(epochs, curves, fraction: float = PLATEAU_FRACTION, min_gain: float = PLATEAU_GAIN,
            confidence: float = PLATEAU_CONFIDENCE) -> dict:
    """The plateau test (PLATEAU_RULE_TEXT) of validation curves: ``epochs`` [E] the validated epochs (increasing),
    ``curves`` [S, E] each seed's validation mIoU (or [E]: one seed).

    Returns {"state": PLATEAUED | CLIMBING | UNDETERMINED, "plateaued": state == PLATEAUED, "n_seeds",
    "from_epoch", "to_epoch", "window" (validated epochs fitted), "slope" (stats.Interval of the mean slope per
    epoch), "horizon" (epochs projected: ``fraction`` x the last epoch), "gain" (stats.Interval of the projected
    gain slope x horizon), "slope_per_epoch" and "projected_gain" (their estimates)}.  Without an interval (one
    seed and fewer than three epochs in the window) the bounds are NaN and the state is undetermined.
    """
    e = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64)
    y = y[None] if y.ndim == 1 else y
    if e.ndim != 1 or y.ndim != 2 or y.shape[1] != e.size or e.size < 2 or y.shape[0] < 1:
        raise ValueError(f"plateau needs one value per epoch and seed ([S, E] or [E]) and at least two epochs, got "
                         f"{e.size} epochs and values of shape {np.shape(curves)}")
    if np.any(np.diff(e) <= 0) or not np.isfinite(y).all():
        raise ValueError(f"plateau needs increasing epochs and finite values, got epochs {e.tolist()}")
    k = plateau_window(e.size, fraction)
    x, w = e[-k:], y[:, -k:]
    xc = x - x.mean()
    sxx = float((xc ** 2).sum())
    per_seed = (w * xc).sum(axis=1) / sxx  # [S] least-squares slopes
    seeds = per_seed.size
    slope = float(per_seed.mean())
    if seeds >= 2:
        variance, df = float(per_seed.var(ddof=1)) / seeds, seeds - 1
    elif k >= 3:
        residuals = w[0] - w[0].mean() - per_seed[0] * xc
        variance, df = float((residuals ** 2).sum()) / (k - 2) / sxx, k - 2
    else:
        variance, df = math.nan, 0
    horizon = fraction * float(e[-1])
    if df >= 1:
        half = _t_critical(float(df), confidence) * math.sqrt(variance)
        slope_iv = stats.Interval(slope, slope - half, slope + half, seeds, confidence, ((variance, float(df)),))
    else:
        slope_iv = stats.Interval(slope, math.nan, math.nan, seeds, confidence)
    gain = stats.Interval(slope * horizon, slope_iv.low * horizon, slope_iv.high * horizon, seeds, confidence,
                          tuple((v * horizon ** 2, d) for v, d in slope_iv.components))
    if gain.high < min_gain:  # NaN compares False: no interval, no verdict
        state = PLATEAUED
    elif gain.low > 0:
        state = CLIMBING
    else:
        state = UNDETERMINED
    return {"state": state, "plateaued": state == PLATEAUED, "n_seeds": seeds, "from_epoch": int(x[0]),
            "to_epoch": int(x[-1]), "window": k, "slope": slope_iv, "horizon": horizon, "gain": gain,
            "slope_per_epoch": slope, "projected_gain": gain.estimate}


def difference_by_epoch(method: list[dict], baseline: list[dict], network: str = PRIMARY_NETWORK
                        ) -> list[tuple[int, stats.Interval]]:
    """[(epoch, Δ mIoU interval)] of ``network`` of the method runs against the baseline's U-Net, on the seeds and
    epochs both have (seeds-and-images interval, as the final tables)."""
    by_seed = {r["config"]["seed"]: r for r in baseline}
    pairs = [(r, by_seed[r["config"]["seed"]]) for r in method if r["config"]["seed"] in by_seed]
    if not pairs:
        return []
    a = epoch_confmats([m for m, _ in pairs], network)
    b = epoch_confmats([base for _, base in pairs], PRIMARY_NETWORK)
    return [(e, stats.paired_difference(a[e], b[e], miou_from_confmat)[0])
            for e in sorted(set(a) & set(b)) if a[e].shape == b[e].shape]


def budget_curves(results_dir, dataset: str) -> dict[str, dict]:
    """{use-case: {"n_seeds", "epochs" [E], "curve" [S, E] per-seed validation mIoU, "diffs" [(epoch, Interval)]
    against the baseline (empty for the baseline)}} of the use-cases with per-epoch matrices: what the budget rows
    and the budget figure are made of, read and scored once."""
    baseline = runs_for(results_dir, dataset, "baseline")
    out = {}
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        epochs, curve = miou_curve(group)
        if epochs:
            out[uc] = {"n_seeds": len(group), "epochs": epochs, "curve": curve,
                       "diffs": difference_by_epoch(group, baseline) if uc != "baseline" else []}
    return out


def budget_rows(results_dir, dataset: str, curves: dict | None = None) -> list[dict]:
    """One row per use-case's U-Net: its mean validation mIoU at the last epoch, the plateau test of its own seeds'
    curves (`plateau`: state, window, slope and projected gain with their intervals) and Δ mIoU against the
    baseline at the last epoch.  Empty without per-epoch matrices.  curves: `budget_curves` (None: read them)."""
    curves = budget_curves(results_dir, dataset) if curves is None else curves
    rows = []
    for uc, c in curves.items():
        if len(c["epochs"]) < 2:
            continue
        rows.append({"dataset": dataset, "use_case": uc, "n_seeds": c["n_seeds"], "epochs": c["epochs"][-1],
                     "miou_last": float(c["curve"][:, -1].mean()), **plateau(c["epochs"], c["curve"]),
                     "diff_last": c["diffs"][-1][1] if c["diffs"] else None})
    return rows


def _window_text(r: dict) -> str:
    return f"epochs {r['from_epoch']}-{r['to_epoch']} ({r['window']} validated)"


def budget_lines(rows: list[dict]) -> list[str]:
    """The plateau verdict of each curve, in words, each with the rule that gave it (PLATEAU_RULE_TEXT)."""
    out = []
    for r in rows:
        line = (f"{r['dataset']} {r['use_case']}: mean validation mIoU {r['miou_last']:.3f} after {r['epochs']} "
                f"epochs (n={r['n_seeds']}); {r['state']}: slope {r['slope'].format(4, signed=True)} per epoch over "
                f"{_window_text(r)}, projected gain over the next {r['horizon']:g} epochs "
                f"{r['gain'].format(3, signed=True)}")
        if r["diff_last"] is not None:
            d = r["diff_last"]
            line += f"; Δ vs baseline at the last epoch {d.format(signed=True)} {stats.verdict(d)}"
        out.append(f"{line} ({PLATEAU_RULE_TEXT})")
    return out


def budget_table(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(numbers, formatted) rows of the budget table: per use-case the epochs, seeds, last-epoch mean mIoU, the
    plateau test's window, slope and projected gain with their 95% intervals, its state, and Δ mIoU against the
    baseline at the last epoch (`stats.PAIRED_INTERVAL_TEXT`).  The CSV's rows name the plateau rule each; the
    Markdown says it once, in its title (`write_budget`)."""
    numbers, formatted = [], []
    for r in rows:
        d = r["diff_last"]
        numbers.append({
            "dataset": r["dataset"], "use_case": r["use_case"], "epochs": r["epochs"], "n_seeds": r["n_seeds"],
            "miou_last": r["miou_last"], "window_from_epoch": r["from_epoch"], "window_to_epoch": r["to_epoch"],
            "window_epochs": r["window"], "slope_per_epoch": r["slope"].estimate, "slope_low": r["slope"].low,
            "slope_high": r["slope"].high, "horizon_epochs": r["horizon"], "projected_gain": r["gain"].estimate,
            "gain_low": r["gain"].low, "gain_high": r["gain"].high, "state": r["state"],
            "diff_last": None if d is None else d.estimate, "diff_low": None if d is None else d.low,
            "diff_high": None if d is None else d.high, "diff_verdict": None if d is None else stats.verdict(d),
            "rule": PLATEAU_RULE_TEXT})
        formatted.append({
            "dataset": r["dataset"], "use-case (U-Net)": r["use_case"], "epochs": r["epochs"], "n seeds": r["n_seeds"],
            "last-epoch mean mIoU": f"{r['miou_last']:.3f}", "window": _window_text(r),
            "slope per epoch [95%]": r["slope"].format(4, signed=True),
            "projected gain [95%]": f"{r['gain'].format(3, signed=True)} over {r['horizon']:g} epochs",
            "state": r["state"],
            "Δ mIoU vs baseline, last epoch [95%]": (
                "–" if d is None else f"{d.format(signed=True)} {stats.verdict(d)}")})
    return numbers, formatted


def write_budget(rows: list[dict], path, prov: dict | None = None) -> tuple[Path, Path]:
    """<path>.{csv,md}: `budget_table` (numbers in the CSV, formatted in the Markdown), with provenance."""
    from mistudy.io.tables import write_table

    numbers, formatted = budget_table(rows)
    title = ("The answer as a function of the training budget: each use-case's validation mIoU curve (weights after "
             f"each epoch, no selection), its plateau state ({PLATEAU_RULE_TEXT}), and Δ mIoU against the baseline at "
             f"the last epoch ({stats.PAIRED_INTERVAL_TEXT}).")
    return write_table(numbers, path, prov, markdown_rows=formatted, title=title)


def budget_figure(results_dir, dataset: str, figures_dir, prov: dict, curves: dict | None = None):
    """Two panels: every use-case's mean validation mIoU per epoch (seeds as thin lines), and each method's Δ mIoU
    against the baseline per epoch with its 95% interval.  Saved as <dataset>_05_budget.png; None without
    per-epoch matrices.  curves: `budget_curves` (None: read them)."""
    import matplotlib.pyplot as plt

    curves = budget_curves(results_dir, dataset) if curves is None else curves
    if not curves:
        return None
    fig, (ax_curve, ax_diff) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (uc, c) in enumerate(curves.items()):
        epochs, curve, color = c["epochs"], c["curve"], f"C{i}"
        ax_curve.plot(epochs, curve.T, color=color, alpha=0.25, linewidth=0.8)
        state = f"; {plateau(epochs, curve)['state']}" if len(epochs) >= 2 else ""
        ax_curve.plot(epochs, curve.mean(axis=0), color=color, linewidth=2, label=f"{uc} U-Net (n={len(curve)}{state})")
        if c["diffs"]:
            e = [d[0] for d in c["diffs"]]
            iv = [d[1] for d in c["diffs"]]
            ax_diff.plot(e, [d.estimate for d in iv], color=color, linewidth=2, label=f"{uc} - baseline")
            ax_diff.fill_between(e, [d.low for d in iv], [d.high for d in iv], color=color, alpha=0.2)
    ax_curve.set(xlabel="epoch", ylabel="validation mIoU",
                 title="mean over seeds (thin: each seed); legend: plateau test")
    ax_diff.axhline(0, color="black", linewidth=0.8)
    ax_diff.set(xlabel="epoch", ylabel="Δ mIoU vs baseline",
                title="paired Δ, 95% interval (seeds, widened by images)")
    for ax in (ax_curve, ax_diff):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: the answer as a function of the training budget (weights after each epoch, "
                 "no selection)", fontsize=10)
    fig.tight_layout()
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_budget.png",
                    {**prov, "dataset": dataset, "plateau_rule": PLATEAU_RULE_TEXT})
    return fig


def _curve_plateau(results_dir, dataset: str, use_case: str, epochs: int | None, n_seeds: int) -> dict | None:
    """The plateau test of a use-case's U-Net validation curves when they are those of the table's runs (the same
    last epoch and number of seeds); None without per-epoch matrices or when they differ."""
    found_epochs, curve = miou_curve(runs_for(results_dir, dataset, use_case))
    if len(found_epochs) < 2 or (epochs is not None and found_epochs[-1] != epochs) or len(curve) != n_seeds:
        return None
    return plateau(found_epochs, curve)


BASELINE_CURVE_ROW = "baseline (its own curve)"


BUDGET_PROFILES = ("quick", "standard", "long")  # the same recipe trained longer: the budgets side by side


def verdicts_by_budget(results_dirs: dict[str, Path], dataset: str = "synthetic", checkpoint: str = "best_miou",
                       epochs: dict[str, int] | None = None) -> list[dict]:
    """The final tables' Δ mIoU verdict of each method at every budget (profile) that has runs, side by side:
    one row per method, per profile "Δ [95% interval] verdict (epochs, n; curve <plateau state>)", mutual
    learning's with its student's and partner's mean mIoU.  results_dirs:
    {profile: results dir}; only runs of the profile's length count (``epochs``, default: the profiles' own), so
    that a profile still being trained (the long runs extended one by one) never shows a mixture; profiles without
    such runs are left out.  Where the runs kept per-epoch matrices, each cell names the plateau state of the
    method's own validation curve (`plateau`, PLATEAU_RULE_TEXT) and a first row BASELINE_CURVE_ROW gives the
    baseline's: a verdict "at the baseline's plateau" holds only where that row says plateaued."""
    epochs = {p: PROFILES[p]["epochs"] for p in results_dirs if p in PROFILES} if epochs is None else epochs
    columns, baseline_cells = {}, {}
    stale = {}
    for profile, results_dir in results_dirs.items():
        try:
            rows, _ = comparison(results_dir, [dataset], checkpoint)
        except ValueError as e:  # e.g. another profile's runs scored under an older metrics version: said, not mixed
            stale[profile] = f"– (not compared: {e})"
            continue
        length = epochs.get(profile)
        cells = {}
        for r in rows:
            if r.get("miou_diff") is None or r["epochs"] != (length or r["epochs"]):
                continue
            test = _curve_plateau(results_dir, dataset, r["use_case"], r["epochs"], r["n_seeds"])
            curve = f"; curve {test['state']}" if test else ""
            partners = [p for p in rows if (p["use_case"], p.get("setting") or "", p["epochs"]) == (
                r["use_case"], r.get("setting") or "", r["epochs"]) and p["network"] != PRIMARY_NETWORK
                and p.get("n_seeds") and p.get("miou_mean") is not None]
            strength = "".join(f"; mIoU student {r['miou_mean']:.3f}, partner {p['miou_mean']:.3f}" for p in partners)
            cells[r["use_case"]] = (f"{diff_cell(r, 'miou')} {r['verdict']}{holm_note(r)} ({r['epochs']} epochs, "
                                    f"n={r['n_seeds']}{curve}{strength})")
        base = [r for r in rows if r["use_case"] == "baseline" and r["network"] == PRIMARY_NETWORK
                and r.get("n_seeds") and r["epochs"] == (length or r["epochs"])]
        test = _curve_plateau(results_dir, dataset, "baseline", base[0]["epochs"], base[0]["n_seeds"]) if base else None
        if cells and test:
            baseline_cells[profile] = (f"curve {test['state']}: projected gain {test['gain'].format(3, signed=True)} "
                                       f"over the next {test['horizon']:g} epochs ({base[0]['epochs']} epochs, "
                                       f"n={test['n_seeds']})")
        if cells:
            columns[profile] = cells
    if stale and columns:
        columns |= {p: {} for p in stale}
    methods = [uc for uc in USE_CASES if any(uc in c for c in columns.values())]
    out = [{"dataset": dataset, "method (U-Net) vs baseline": uc,
            **{f"{p}: Δ mIoU [95%] verdict": stale.get(p) or c.get(uc, "–") for p, c in columns.items()},
            "the paper": paper_claim(uc, dataset) or "– (no claim on this dataset)"} for uc in methods]
    if baseline_cells:
        out.insert(0, {"dataset": dataset, "method (U-Net) vs baseline": BASELINE_CURVE_ROW,
                       **{f"{p}: Δ mIoU [95%] verdict": baseline_cells.get(p, "–")
                          for p in columns}})
    return out


def budget_results_dirs() -> dict[str, Path]:
    """{profile: its own results folder} of the budgets compared side by side (BUDGET_PROFILES)."""
    return {p: runs.default_results_dir(p) for p in BUDGET_PROFILES}


def write_verdicts_by_budget(results_dir, profile: str, datasets, figures_dir, prov: dict,
                             checkpoint: str = "best_miou") -> tuple[list[tuple[list[dict], str]], list[str]]:
    """Notebook 05's table of the verdicts at every budget (`verdicts_by_budget`), one per dataset with runs, written
    to <figures_dir>/<dataset>_verdicts_by_budget.{csv,md}.  Only where ``results_dir`` is ``profile``'s own folder
    (the budgets compare the profiles' own folders; a tuned recipe's or a hand-picked folder is not among them).
    Returns ([(rows, title) of each table written], notes)."""
    from mistudy.io.tables import write_table

    budgets = budget_results_dirs()
    if Path(results_dir).resolve() != runs.default_results_dir(profile).resolve():
        return [], [f"{results_dir} is not a profile's own folder: the budgets' table compares those only; not written"]
    tables = []
    for d in datasets:
        rows = verdicts_by_budget(budgets, d, checkpoint)
        if rows:
            title = (f"{d}: Δ mIoU vs baseline at each budget ({checkpoint} weights; {stats.PAIRED_INTERVAL_TEXT}); "
                     f"curve: the plateau state of each U-Net's own validation curve ({PLATEAU_RULE_TEXT})")
            write_table(rows, Path(figures_dir) / f"{d}_verdicts_by_budget", {**prov, "profiles": list(budgets)},
                        title=title)
            tables.append((rows, title))
    return tables, []
