"""Each method at its own learning rate: the same grid of Adam learning rates for every use-case, trained on tuning
seeds that no reported table uses, each chosen on the selection split (held out of training; never the validation
images the tables report).

    python -m mistudy study --profile P --notebooks 06 --grids tuning    # the grid (notebook 06; Ray tasks with
                                                                         # --executor ray), then its table:
        figures/<profile>/<dataset>_06_tuning.{csv,md}                   # every use-case x rate, the chosen ones
    python -m mistudy study --profile P --recipe tuned                   # the study at each method's chosen rate
    python -m mistudy study --profile P --recipe tuned --rates-from Q    # ... at the rates chosen at profile Q

A run's tuning score is its best selection-split mIoU over the validated epochs (the score the headline checkpoint
rule, best_miou, selects on); a rate's score is the mean over the tuning seeds; each use-case takes the rate with the
highest mean.  The committed table is where the tuned study reads its rates from (`chosen_rates`), so the choice is
made once, before the study's seeds are trained.
"""

from __future__ import annotations

import csv
from pathlib import Path

from mistudy.methods import stats
from mistudy.training.config import PRIMARY_NETWORK, USE_CASES

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)  # the same for every use-case: the paper's 1e-4 (rmi, mutual) to 3e-3
TUNING_SEEDS = (100, 101)  # never a study seed (those count from 0)
RECIPES = ("shared", "tuned")  # the study's recipes: the profile's one rate for every use-case, or each its own
SOURCE_FILE = "rates_from.json"  # in a tuned study's results folder: the profile whose tuning table gave its rates
RULE_TEXT = ("each use-case's rate is the one whose runs reach the highest mean best selection-split mIoU over the "
             "tuning seeds (the selection split is held out of training; the validation images are never looked at)")


def recipe_folder(recipe: str) -> str:
    """A recipe's sub-folder of results/<profile>/ and figures/<profile>/: none for the shared recipe (the profile's
    own folders), tuned/ for the tuned one."""
    return "" if recipe == "shared" else recipe


def setting_name(use_case: str, lr: float) -> str:
    """The grid's name of a use-case at a rate, e.g. 'rmi lr=0.0003' (its ablations.Setting)."""
    return f"{use_case} lr={lr:g}"


def table_stem(dataset: str) -> str:
    return f"{dataset}_06_tuning"


def selection_score(run: dict, network: str = PRIMARY_NETWORK) -> float:
    """A run's tuning score: its best selection-split mIoU over the validated epochs (history.json)."""
    from mistudy.training import runs

    values = [row[f"{network}/select_miou"] for row in runs.load_history(run["run_dir"])
              if row.get(f"{network}/select_miou") is not None]
    if not values:
        raise ValueError(f"run {run['run_dir']} has no selection-split scores (select_fraction 0): it cannot be tuned")
    return max(values)


def tuning_rows(grid: dict[str, list[dict]]) -> list[dict]:
    """One row per use-case and rate of the grid ({setting name: runs}, as `ablations.run` returns): the tuning
    seeds, the mean [t-interval] of their selection scores, and "chosen" on the best rate of each use-case."""
    rows = []
    for use_case in USE_CASES:
        mine = [(lr, grid[setting_name(use_case, lr)]) for lr in LEARNING_RATES if setting_name(use_case, lr) in grid]
        scored = [(lr, group, stats.t_interval([selection_score(r) for r in group])) for lr, group in mine]
        if not scored:
            continue
        best = max(scored, key=lambda s: s[2].estimate)[0]
        for lr, group, score in scored:
            low, high = max(score.low, 0.0), min(score.high, 1.0)  # mIoU's range (NaN for one seed: no interval)
            interval = f"{score.estimate:.3f}" if score.low != score.low else \
                f"{score.estimate:.3f} [{low:.3f}, {high:.3f}]"
            rows.append({"use_case": use_case, "lr": lr, "n": len(group),
                         "seeds": " ".join(str(r["config"]["seed"]) for r in group),
                         "selection mIoU [95% CI]": interval, "selection_miou": score.estimate, "chosen": lr == best})
    return rows


def record_source(results_dir, profile: str) -> None:
    """Note in a tuned study's results folder which profile's tuning table gave its rates (`source`)."""
    from mistudy.io import atomic

    Path(results_dir).mkdir(parents=True, exist_ok=True)
    atomic.write_json(Path(results_dir) / SOURCE_FILE, {"rates_from": profile})


def source(results_dir) -> dict:
    """{"rates_from": profile} of a tuned study's results folder (`record_source`), else {} (a shared recipe's)."""
    import json

    path = Path(results_dir) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_tuning(rows: list[dict], figures_dir, dataset: str, prov: dict, protocol: str) -> tuple[Path, Path]:
    """<figures_dir>/<dataset>_06_tuning.{csv,md}: the grid's scores and choices (the tuned study reads the CSV)."""
    from mistudy.io.tables import write_table

    title = (f"Learning-rate tuning on {dataset}: {RULE_TEXT}; intervals: Student-t over the tuning seeds, cut at 0 "
             "and 1. Chosen: "
             + ", ".join(f"{r['use_case']} {r['lr']:g}" for r in rows if r["chosen"])
             + f". Protocol (every rate alike): {protocol}.")
    return write_table(rows, Path(figures_dir) / table_stem(dataset), prov, title=title)


def chosen_rates(figures_dir, dataset: str) -> dict[str, float]:
    """{use-case: chosen learning rate} from a tuning table; FileNotFoundError naming the command that writes it."""
    path = Path(figures_dir) / f"{table_stem(dataset)}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"the tuned recipe needs the tuning table {path}: run `python -m mistudy study "
                                f"--notebooks 06 --grids tuning` with the same profile and dataset first")
    with open(path, newline="") as f:
        chosen = {r["use_case"]: float(r["lr"]) for r in csv.DictReader(f) if r["chosen"] == "True"}
    missing = [uc for uc in USE_CASES if uc not in chosen]
    if missing:
        raise ValueError(f"the tuning table {path} chose no rate for {missing}: its grid is incomplete")
    return chosen
