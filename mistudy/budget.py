"""The answer as a function of the training budget (notebook 05): each method's paired Δ mIoU against the baseline
after every validated epoch, and whether the baseline's curve has plateaued.

Per epoch the weights are those after that epoch (no selection), scored on the validation images from the per-image
confusion matrices each run keeps (`runs.EPOCH_CONFMATS`), and paired seed by seed with the baseline exactly as the
final tables are (`stats.paired_difference`: seeds as the units, widened by the image sampling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mistudy import runs, stats, viz
from mistudy.comparison import comparison, diff_cell, runs_for
from mistudy.config import PRIMARY_NETWORK, PROFILES, USE_CASES
from mistudy.metrics import miou_from_confmat

# The plateau criterion: the baseline's mean validation mIoU gains less than PLATEAU_GAIN over the last
# PLATEAU_FRACTION of the validated epochs (at least PLATEAU_MIN_EPOCHS of them), the gain read from a least-squares
# line through that stretch, so that one noisy epoch neither makes nor breaks a plateau.
PLATEAU_FRACTION = 0.25
PLATEAU_GAIN = 0.01
PLATEAU_MIN_EPOCHS = 3


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


def plateau(epochs, mean_curve, fraction: float = PLATEAU_FRACTION, min_gain: float = PLATEAU_GAIN) -> dict:
    """Has a curve plateaued?  The least-squares line through ``mean_curve`` [E] over the last ``fraction`` of
    ``epochs`` [E] (at least PLATEAU_MIN_EPOCHS validated epochs): its gain over that stretch against ``min_gain``.

    Returns {"plateaued", "gain" (the line's rise over the stretch), "slope_per_epoch", "from_epoch", "to_epoch"}.
    """
    e = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(mean_curve, dtype=np.float64)
    if e.shape != y.shape or e.size < 2:
        raise ValueError(f"plateau needs one value per epoch and at least two epochs, got {e.size} epochs and "
                         f"{y.size} values")
    start = e[-1] - fraction * (e[-1] - e[0])
    first = min(int(np.searchsorted(e, start)), e.size - min(PLATEAU_MIN_EPOCHS, e.size))
    tail_e, tail_y = e[first:], y[first:]
    slope = float(np.polyfit(tail_e, tail_y, 1)[0])
    gain = slope * float(tail_e[-1] - tail_e[0])
    return {"plateaued": gain < min_gain, "gain": gain, "slope_per_epoch": slope,
            "from_epoch": int(tail_e[0]), "to_epoch": int(tail_e[-1])}


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
    """One row per use-case's U-Net: its mean validation mIoU at the last epoch, the plateau test of its own curve,
    and Δ mIoU against the baseline at the last epoch.  Empty without per-epoch matrices.  curves: `budget_curves`
    (None: read them)."""
    curves = budget_curves(results_dir, dataset) if curves is None else curves
    rows = []
    for uc, c in curves.items():
        if len(c["epochs"]) < 2:
            continue
        rows.append({"dataset": dataset, "use_case": uc, "n_seeds": c["n_seeds"], "epochs": c["epochs"][-1],
                     "miou_last": float(c["curve"][:, -1].mean()), **plateau(c["epochs"], c["curve"].mean(axis=0)),
                     "diff_last": c["diffs"][-1][1] if c["diffs"] else None})
    return rows


def budget_lines(rows: list[dict]) -> list[str]:
    """The plateau verdict of each curve, in words."""
    out = []
    for r in rows:
        state = ("has plateaued" if r["plateaued"] else "is still climbing")
        line = (f"{r['dataset']} {r['use_case']}: mean validation mIoU {r['miou_last']:.3f} after {r['epochs']} "
                f"epochs (n={r['n_seeds']}); {state}: {r['gain']:+.3f} over epochs {r['from_epoch']}-{r['to_epoch']} "
                f"({r['slope_per_epoch']:+.4f} per epoch, least squares; plateau: a gain < {PLATEAU_GAIN} over the last "
                f"{PLATEAU_FRACTION:.0%} of training, at least {PLATEAU_MIN_EPOCHS} epochs)")
        if r["diff_last"] is not None:
            line += f"; Δ vs baseline at the last epoch {r['diff_last'].format(signed=True)} {stats.verdict(r['diff_last'])}"
        out.append(line)
    return out


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
        ax_curve.plot(epochs, curve.mean(axis=0), color=color, linewidth=2, label=f"{uc} U-Net (n={len(curve)})")
        if c["diffs"]:
            e = [d[0] for d in c["diffs"]]
            iv = [d[1] for d in c["diffs"]]
            ax_diff.plot(e, [d.estimate for d in iv], color=color, linewidth=2, label=f"{uc} - baseline")
            ax_diff.fill_between(e, [d.low for d in iv], [d.high for d in iv], color=color, alpha=0.2)
    ax_curve.set(xlabel="epoch", ylabel="validation mIoU", title="mean over seeds (thin: each seed)")
    ax_diff.axhline(0, color="black", linewidth=0.8)
    ax_diff.set(xlabel="epoch", ylabel="Δ mIoU vs baseline",
                title="paired Δ, 95% interval (seeds, widened by images)")
    for ax in (ax_curve, ax_diff):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: the answer as a function of the training budget (weights after each epoch, "
                 "no selection)", fontsize=10)
    fig.tight_layout()
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_budget.png", {**prov, "dataset": dataset})
    return fig


def verdicts_by_budget(results_dirs: dict[str, Path], dataset: str = "synthetic", checkpoint: str = "best_miou",
                       epochs: dict[str, int] | None = None) -> list[dict]:
    """The final tables' Δ mIoU verdict of each method at every budget (profile) that has runs, side by side:
    one row per method, per profile "Δ [95% interval] verdict (epochs, n)".  results_dirs: {profile: results dir};
    only runs of the profile's length count (``epochs``, default: the profiles' own), so that a profile still being
    trained (the long runs extended one by one) never shows a mixture; profiles without such runs are left out."""
    epochs = {p: PROFILES[p]["epochs"] for p in results_dirs if p in PROFILES} if epochs is None else epochs
    columns = {}
    for profile, results_dir in results_dirs.items():
        rows, _ = comparison(results_dir, [dataset], checkpoint)
        cells = {r["use_case"]: f"{diff_cell(r, 'miou')} {r['verdict']} ({r['epochs']} epochs, n={r['n_seeds']})"
                 for r in rows if r.get("miou_diff") is not None and r["epochs"] == epochs.get(profile, r["epochs"])}
        if cells:
            columns[profile] = cells
    methods = [uc for uc in USE_CASES if any(uc in c for c in columns.values())]
    return [{"dataset": dataset, "method (U-Net) vs baseline": uc,
             **{f"{p}: Δ mIoU [95%] verdict": c.get(uc, "–") for p, c in columns.items()}} for uc in methods]
