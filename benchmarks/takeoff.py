"""Does the baseline take off at the quick budget?  Its validation mIoU over many seeds, per training recipe (issue 22).

    python benchmarks/takeoff.py                                   # the quick profile as it is, seeds 0-9
    python benchmarks/takeoff.py --recipe "warmup_steps=16" --recipe "warmup_steps=16 lr_schedule=cosine"
    python benchmarks/takeoff.py --seeds 0 1 2 --out /tmp/takeoff

Each recipe is a set of TrainConfig changes applied on top of the quick profile ("" = the profile unchanged).  Every
run is a real `mistudy.training.train.train` of the baseline (runs go to <out>/<recipe>/seed<k>/ and are reused when
finished).  Prints per recipe the reported mIoU (best_miou checkpoint, validation split) of each seed, how many
reach the threshold, and the mean time per run.
"""

from __future__ import annotations

import argparse
import re
import time

from mistudy.training.config import parse_assignments, study_config
from mistudy.training.train import train_or_load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", default=None, help="space-separated NAME=VALUE changes")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--threshold", type=float, default=0.4)
    p.add_argument("--out", default="results/takeoff")
    p.add_argument("--profile", default=None, help="default: env MISTUDY_PROFILE, else quick (config.resolve_profile)")
    args = p.parse_args()
    for recipe in args.recipe or [""]:
        changes = parse_assignments(recipe.split())
        name = re.sub(r"[^A-Za-z0-9=._-]", "_", recipe.replace(" ", "+")) or "profile"
        scores, seconds = [], []
        for seed in args.seeds:
            cfg = study_config("baseline", args.profile, {**changes, "progress": "none", "device": "cpu"}, seed=seed,
                               run_dir=f"{args.out}/{name}/seed{seed}")
            t0 = time.perf_counter()
            summary = train_or_load(cfg)
            seconds.append(time.perf_counter() - t0)
            scores.append(summary["networks"]["unet"]["best_miou"]["miou"])
            print(f"  {recipe or '(profile)'} seed {seed}: mIoU {scores[-1]:.3f} ({seconds[-1]:.0f} s)", flush=True)
        ok = sum(s >= args.threshold for s in scores)
        print(f"{recipe or '(profile)'}: {ok} of {len(scores)} seeds reach mIoU >= {args.threshold}; "
              f"min {min(scores):.3f}, mean {sum(scores) / len(scores):.3f}; {sum(seconds) / len(seconds):.0f} s per "
              f"run; mIoU by seed {[round(s, 3) for s in scores]}", flush=True)


if __name__ == "__main__":
    main()
