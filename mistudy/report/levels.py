"""`python -m mistudy levels`: how fast the baseline U-Net learns each synthetic difficulty level.

Trains the baseline with every seed on every level with a profile's settings, for longer than the profile
(--epochs), and writes `<figures>/synthetic_levels_curves.png` (validation mIoU per epoch, mean over seeds and
their range) and `<figures>/synthetic_levels.{csv,md}` (mean and t-interval at the profile's own budget and at the
end).  This is the measurement the levels and the default were chosen by (README "The synthetic benchmark").
Finished runs are reused (`<results>/levels/<level>/seed<k>`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mistudy import data
from mistudy.io.cli import OneLineParser, non_negative_int, positive_int
from mistudy.io.tables import Table, write_table
from mistudy.methods import stats
from mistudy.report import viz
from mistudy.training import runs
from mistudy.training.config import DEFAULT_PROFILE, PROFILES, resolve_profile, study_config, study_seeds


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="mistudy levels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=list(data.SYNTHETIC_LEVELS), choices=list(data.SYNTHETIC_LEVELS))
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="default: the profile's study "
                   "seeds (mistudy.training.config.STUDY_SEEDS)")
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="settings of every run (default: env "
                   f"MISTUDY_PROFILE, else {DEFAULT_PROFILE})")
    p.add_argument("--epochs", type=positive_int, default=24, help="epochs of every run (default: 24, four times "
                   "the quick profile's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--results-dir", default=None, help="default: <project>/results/levels")
    p.add_argument("--figures-dir", default=None, help="default: <project>/figures")
    args = p.parse_args(argv)
    args.profile = resolve_profile(args.profile)
    args.seeds = args.seeds if args.seeds is not None else study_seeds(args.profile)
    results = Path(args.results_dir or runs.project_path("results") / "levels")
    figures = Path(args.figures_dir or runs.project_path("figures"))
    budget = PROFILES[args.profile]["epochs"]
    curves, rows = {}, []
    for level in args.levels:
        histories = []
        for seed in args.seeds:
            cfg = study_config("baseline", args.profile, {"epochs": args.epochs}, synthetic_level=level, seed=seed,
                               device=args.device, run_dir=str(results / level / f"seed{seed}"), progress="log")
            from mistudy.training.train import train_or_load

            train_or_load(cfg)
            histories.append(runs.load_history(cfg.resolved_run_dir()))
        curves[level] = histories
        row = {"level": level, "n": len(histories)}
        for label, epoch in ((f"epoch {budget} ({args.profile} budget)", budget), (f"epoch {args.epochs}", args.epochs)):
            values = [next(r["unet/val_miou"] for r in h if r["epoch"] == epoch) for h in histories]
            row[f"val mIoU at {label}"] = stats.t_interval(values).format(3)
        rows.append(row)
    settings = {k: v for k, v in PROFILES[args.profile].items() if k != "epochs"}
    title = (f"Baseline U-Net on each synthetic level: validation mIoU per epoch (mean over seeds, range shaded); "
             f"{args.profile} profile settings, {args.epochs} epochs")
    prov = {"source": "python -m mistudy levels " + " ".join(argv or sys.argv[1:]), "profile": args.profile,
            "settings": settings, "epochs": args.epochs, "seeds": args.seeds, "results_dir": str(results)}
    fig = viz.plot_learning_curves(curves, title=title)
    ax = fig.axes[0]
    ax.axvline(budget, color="0.4", linestyle=":", linewidth=1)
    ax.text(budget, 0.02, f" {args.profile} budget", fontsize=8, color="0.3")
    viz.save_figure(fig, figures / "synthetic_levels_curves.png", prov)
    write_table(rows, figures / "synthetic_levels", prov, title=title + " (95% t-intervals over seeds)")
    print(Table(rows))
    return 0
