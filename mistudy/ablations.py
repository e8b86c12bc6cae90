"""The paper's open questions as ablations (notebook 06): one factor at a time around the paper's settings.

RMI: is the lack of improvement "due to an unknown hyperparameter"?  -- bce_weight (lambda), radius, pooling.
Mutual learning: does the gain come from *mutual* information or from distillation from a larger network?  --
kl_weight, temperature, update schedule, and mutual learning between two U-Nets (no larger network).

Every setting is trained with the same seeds, data and budget as the study's baseline and reference runs (the
profile's settings plus the same overrides), so each effect is a paired difference: against the baseline
(does the method help at this setting?) and against the paper's setting of the same method (does the
hyperparameter matter?), each with a bootstrap interval over seeds and validation images.
"""

from __future__ import annotations

from pathlib import Path

from mistudy import report, runs, stats
from mistudy.config import PRIMARY_NETWORK, study_config

# name: (use-case, changes to the paper's setting of that use-case)
ABLATIONS = {
    "rmi λ=0.25": ("rmi", {"rmi_bce_weight": 0.25}),
    "rmi λ=0.75": ("rmi", {"rmi_bce_weight": 0.75}),
    "rmi radius 2": ("rmi", {"rmi_radius": 2}),
    "rmi radius 5": ("rmi", {"rmi_radius": 5}),
    "rmi avg-pool 2": ("rmi", {"rmi_pool": "avg", "rmi_pool_size": 2}),
    "rmi max-pool 2": ("rmi", {"rmi_pool": "max", "rmi_pool_size": 2}),
    "mutual KL weight 0.5": ("mutual", {"kl_weight": 0.5}),
    "mutual KL weight 2": ("mutual", {"kl_weight": 2.0}),
    "mutual T=2": ("mutual", {"kl_temperature": 2.0}),
    "mutual T=4": ("mutual", {"kl_temperature": 4.0}),
    "mutual simultaneous": ("mutual", {"mutual_schedule": "simultaneous"}),
    "mutual two U-Nets": ("mutual", {"mutual_partner": "unet"}),
}
REFERENCES = {"baseline": "baseline (CE)", "rmi": "rmi (paper: λ 0.5, radius 3, no pooling)",
              "mutual": "mutual (paper: DeepLabV3, KL 1, T=1, sequential)"}
DIRECTORY = "ablations"  # under the profile's results directory


def _run_name(name: str, seed: int) -> str:
    """'rmi λ=0.25', 3 -> 'rmi_lambda=0.25-seed3': ASCII letters, digits and =._- only."""
    name = name.replace("λ", "lambda")
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "=._-" else "_" for ch in name) + f"-seed{seed}"


def default_grid(profile: str, names=None, seeds=None) -> tuple[list[str], list[int]]:
    """The grid's names and seeds where the caller gave None: every ablation and seeds 0 1 2, except for the tiny
    smoke-test profile (two ablations, seeds 0 1: the notebook test runs in seconds)."""
    tiny = profile == "tiny"
    names = list(names) if names is not None else (["rmi radius 2", "mutual two U-Nets"] if tiny else list(ABLATIONS))
    return names, list(seeds) if seeds is not None else ([0, 1] if tiny else [0, 1, 2])


def settings(names=None) -> dict[str, tuple[str, dict]]:
    """The references (baseline, rmi, mutual at the paper's settings) and the chosen ablations, in order."""
    names = list(ABLATIONS) if names is None else list(names)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; valid: {list(ABLATIONS)}")
    return {**{label: (uc, {}) for uc, label in REFERENCES.items()}, **{n: ABLATIONS[n] for n in names}}


def configs(names=None, seeds=(0, 1, 2), profile: str | None = None, overrides: dict | None = None,
            results_dir=None, **fields) -> list[tuple[str, object]]:
    """(setting name, TrainConfig) of every run of the grid: references and ablations, every seed.

    Ablation runs go to ``<results_dir>/ablations/<dataset>/<use-case>/<setting>-seed<k>``; ``overrides`` (any
    TrainConfig field, e.g. {"epochs": 3}) apply to every run alike.  Without overrides the references are the
    study's own runs of notebooks 02-04 (``<results_dir>/<dataset>/<use-case>/seed<k>``, reused when finished);
    with overrides they are trained beside the ablations.
    """
    results = Path(results_dir or runs.project_path("results") / (profile or "quick"))
    out = []
    for name, (use_case, changes) in settings(names).items():
        shared = name in REFERENCES.values() and not overrides
        for seed in seeds:
            where = dict(results_dir=str(results)) if shared else \
                dict(results_dir=str(results / DIRECTORY), run_name=_run_name(name, seed))
            cfg = study_config(use_case, profile, {**(overrides or {}), **changes}, seed=seed, **where, **fields)
            out.append((name, cfg))
    return out


def run(names=None, seeds=(0, 1, 2), profile: str | None = None, overrides: dict | None = None, results_dir=None,
        **fields) -> dict[str, list[dict]]:
    """Train (or reuse) every run of the grid; returns {setting: [run of each seed]} as `runs.load_run` gives."""
    from mistudy.train import train_or_load

    grid: dict[str, list[dict]] = {}
    for name, cfg in configs(names, seeds, profile, overrides, results_dir, **fields):
        summary = train_or_load(cfg)
        grid.setdefault(name, []).append(runs.load_run(summary["run_dir"]))
    return grid


def effects(grid: dict[str, list[dict]], checkpoint: str = "best_miou") -> list[dict]:
    """One row per setting: mIoU mean [t-interval], its paired difference from the baseline and from the paper's
    setting of the same method (bootstrap over seeds and images), and the scores beyond mIoU against the paper's
    setting (paired over seeds, t-interval)."""
    rows = []
    for name, group in grid.items():
        use_case = group[0]["config"]["use_case"]
        reference = grid[REFERENCES[use_case]] if name not in REFERENCES.values() else None
        scores = [r["metrics"]["networks"][PRIMARY_NETWORK][checkpoint] for r in group]
        miou = stats.t_interval([s["miou"] for s in scores])
        row = {"setting": name, "use_case": use_case, "n": len(group), "miou": miou}
        if use_case != "baseline":
            row["vs_baseline"] = report.paired_difference(group, grid[REFERENCES["baseline"]], checkpoint=checkpoint)
        if reference is not None:
            row["vs_paper_setting"] = report.paired_difference(group, reference, checkpoint=checkpoint)
            for metric in report.EXTRA_METRICS:
                row[f"{metric}_vs_paper_setting"] = report.seed_difference(group, reference, metric,
                                                                          checkpoint=checkpoint)
        rows.append(row)
    return rows


def effect_table(rows: list[dict]) -> list[dict]:
    """The effects as printable cells, with verdicts worded from the intervals."""
    out = []
    for r in rows:
        cell = {"setting": r["setting"], "n": r["n"], "mIoU [95% CI]": r["miou"].format(3)}
        for key, label in (("vs_baseline", "Δ mIoU vs baseline"), ("vs_paper_setting", "Δ mIoU vs paper's setting")):
            d = r.get(key)
            cell[label] = d.format(3, signed=True) if d else "–"
            cell[f"{label.split(' vs ')[1]}: verdict"] = stats.verdict(d) if d else "–"
        d = r.get("boundary_f_vs_paper_setting")
        cell["Δ boundary F vs paper's setting"] = d.format(3, signed=True) if d else "–"
        d = r.get("ece_vs_paper_setting")
        cell["Δ ECE vs paper's setting"] = d.format(3, signed=True) if d else "–"
        out.append(cell)
    return out


def answer_lines(rows: list[dict]) -> list[str]:
    """The ablation's answer in words, one line per setting whose interval excludes zero, plus a count of the rest."""
    lines, quiet = [], []
    for r in rows:
        d = r.get("vs_paper_setting")
        if d is None:
            continue
        v = stats.verdict(d)
        if v in ("better", "worse"):
            lines.append(f"{r['setting']}: mIoU {d.format(3, signed=True)} against the paper's setting ({v}).")
        else:
            quiet.append(r["setting"])
    if quiet:
        lines.append(f"No detectable difference from the paper's setting (n = {rows[0]['n']} seeds): "
                     + ", ".join(quiet) + ".")
    compared = sum(r.get("vs_paper_setting") is not None for r in rows)
    if compared >= 5:
        lines.append(f"{compared} settings at 95% each: about {compared / 20:.1f} of them may exclude zero by chance "
                     "alone; a single borderline verdict is a lead for more seeds, not a finding.")
    for r in rows:
        if r["setting"] == "mutual two U-Nets" and r.get("vs_baseline"):
            lines.append(f"Mutual learning between two U-Nets (no larger network) against the baseline: "
                         f"{r['vs_baseline'].format(3, signed=True)} ({stats.verdict(r['vs_baseline'])}).")
    return lines
