"""The paper's open questions as ablations (notebook 06): one factor at a time around the paper's settings.

RMI: is the lack of improvement "due to an unknown hyperparameter"?  -- bce_weight (lambda), radius, pooling.
Mutual learning: does the gain come from *mutual* information or from distillation from a larger network?  --
kl_weight, temperature, update schedule, and mutual learning between two U-Nets (no larger network).

Every setting is trained with the same seeds, data and budget as the study's baseline and reference runs (the
profile's settings plus the same overrides), so each effect is a paired difference: against the baseline
(does the method help at this setting?) and against the paper's setting of the same method (does the
hyperparameter matter?), each with an interval over seeds and validation images (`mistudy.methods.stats`), and with
verdicts adjusted for the number of settings compared (Holm).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mistudy.io.tables import write_table
from mistudy.methods import stats
from mistudy.report import comparison, tuning
from mistudy.training import pretrain, runs
from mistudy.training.config import PRIMARY_NETWORK, USE_CASES, resolve_profile, study_config, study_seeds

PRETRAINED = "<pretrained>"  # a weights option's value: the profile's `mistudy pretrain` weights of that network
SLOW_START = {"warmup_steps": "<10% of the steps>", "warmup_mode": "constant", "warmup_factor": 0.1}
BASELINE = "baseline (CE)"
# the pretrained stand-ins, head and all (`pretrain.HEAD`)
KEPT_DEEPLAB = {"deeplab_weights": PRETRAINED, "deeplab_head": pretrain.HEAD}
KEPT_UNET = {"unet_weights": PRETRAINED, "unet_head": pretrain.HEAD}


@dataclass(frozen=True)
class Setting:
    """One setting of a grid: a use-case, the changes to its paper setting, and the setting its "vs baseline"
    difference is taken against (the plain baseline unless the setting changes what a fair baseline is)."""

    use_case: str
    changes: dict = field(default_factory=dict)
    baseline: str = BASELINE


ABLATIONS = {
    # RMI: the paper's "unknown hyperparameter"?
    "rmi λ=0.25": Setting("rmi", {"rmi_bce_weight": 0.25}),
    "rmi λ=0.75": Setting("rmi", {"rmi_bce_weight": 0.75}),
    "rmi radius 2": Setting("rmi", {"rmi_radius": 2}),
    "rmi radius 5": Setting("rmi", {"rmi_radius": 5}),
    "rmi avg-pool 2": Setting("rmi", {"rmi_pool": "avg", "rmi_pool_size": 2}),
    "rmi max-pool 2": Setting("rmi", {"rmi_pool": "max", "rmi_pool_size": 2}),
    # controls that separate RMI's parts: the switch from softmax CE to sigmoid BCE, and the RMI term itself
    "rmi λ=1 (BCE alone)": Setting("rmi", {"rmi_bce_weight": 1.0}),
    "rmi added to softmax CE": Setting("rmi", {"rmi_base": "ce"}),
    # the RMI authors' recipe, with the baseline given the same slow start
    "baseline, slow start": Setting("baseline", SLOW_START),
    "rmi, RMI authors' recipe (avg-pool 4, slow start)": Setting(
        "rmi", {"rmi_pool": "avg", "rmi_pool_size": 4, **SLOW_START}, baseline="baseline, slow start"),
    # mutual learning: mutual information, or distillation from a larger network?
    "mutual KL weight 0.5": Setting("mutual", {"kl_weight": 0.5}),
    "mutual KL weight 2": Setting("mutual", {"kl_weight": 2.0}),
    "mutual T=2": Setting("mutual", {"kl_temperature": 2.0}),
    "mutual T=4": Setting("mutual", {"kl_temperature": 4.0}),
    "mutual simultaneous": Setting("mutual", {"mutual_schedule": "simultaneous"}),
    "mutual two U-Nets": Setting("mutual", {"mutual_partner": "unet"}),
    # the partner's head start: pretrained (the paper's COCO DeepLabV3, here `mistudy pretrain`) or from scratch
    "mutual, pretrained DeepLabV3 partner (head kept)": Setting("mutual", KEPT_DEEPLAB),
    # the regime where the methods' authors showed gains: fine-tuning pretrained networks
    "baseline, pretrained U-Net": Setting("baseline", KEPT_UNET),
    "rmi, pretrained U-Net": Setting("rmi", KEPT_UNET, baseline="baseline, pretrained U-Net"),
    "mutual, both pretrained (heads kept)": Setting("mutual", {**KEPT_DEEPLAB, **KEPT_UNET},
                                                    baseline="baseline, pretrained U-Net"),
}
# each use-case at every rate of the tuning grid (`mistudy.report.tuning`)
ABLATIONS |= {tuning.setting_name(uc, lr): Setting(uc, {"lr": lr}) for uc in USE_CASES for lr in tuning.LEARNING_RATES}
GRIDS = {
    # notebook 06's default: the paper's open questions and the controls of each method's parts
    "ablations": [n for n, s in ABLATIONS.items() if "lr" not in s.changes and n not in (
        "baseline, pretrained U-Net", "rmi, pretrained U-Net", "mutual, both pretrained (heads kept)")],
    # the pretrained regime: RMI fine-tuning a pretrained U-Net against CE fine-tuning it; the authors' mutual set-up
    # (a pretrained DeepLabV3, a U-Net from scratch) against the from-scratch baseline; both networks pretrained
    "pretrained": ["baseline, pretrained U-Net", "rmi, pretrained U-Net",
                   "mutual, pretrained DeepLabV3 partner (head kept)", "mutual, both pretrained (heads kept)"],
    # every use-case at every rate, on the tuning seeds, chosen on the selection split (`mistudy.report.tuning`)
    "tuning": [n for n, s in ABLATIONS.items() if "lr" in s.changes],
    # the controls of RMI's parts alone (e.g. at a longer budget): the switch to sigmoid BCE, RMI on softmax CE
    "controls": ["rmi λ=1 (BCE alone)", "rmi added to softmax CE"],
}
REFERENCES = {"baseline": BASELINE, "rmi": "rmi (paper: λ 0.5, radius 3, no pooling)",
              "mutual": "mutual (paper: DeepLabV3, KL 1, T=1, sequential)"}
DIRECTORY = "ablations"  # under the profile's results directory


def _run_name(name: str, seed: int) -> str:
    """'rmi λ=0.25', 3 -> 'rmi_lambda=0.25-seed3': ASCII letters, digits and =._- only."""
    name = name.replace("λ", "lambda")
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "=._-" else "_" for ch in name) + f"-seed{seed}"


def default_grid(profile: str, names=None, seeds=None, grid: str = "ablations") -> tuple[list[str], list[int]]:
    """The grid's names and seeds where the caller gave None: the ``grid``'s settings (GRIDS) and the profile's study
    seeds (`config.study_seeds`; the tuning grid: its own, `tuning.TUNING_SEEDS`), except for the tiny smoke-test
    profile's two settings (the notebook test runs in seconds)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid: {list(GRIDS)}")
    tiny = profile == "tiny"
    tiny_names = [tuning.setting_name("baseline", 3e-3), tuning.setting_name("rmi", 3e-3)] if grid == "tuning" \
        else ["rmi radius 2", "mutual two U-Nets"]
    names = list(names) if names is not None else (tiny_names if tiny else GRIDS[grid])
    default_seeds = list(tuning.TUNING_SEEDS) if grid == "tuning" else study_seeds(profile)
    return names, list(seeds) if seeds is not None else default_seeds


def settings(names=None) -> dict[str, Setting]:
    """The references (baseline, rmi, mutual at the paper's settings), the baselines the chosen ablations are
    compared with, and the chosen ablations, in order."""
    names = GRIDS["ablations"] if names is None else list(names)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; valid: {list(ABLATIONS)}")
    chosen = {n: ABLATIONS[n] for n in names}
    extra = {b: ABLATIONS[b] for s in chosen.values() for b in [s.baseline] if b != BASELINE and b not in chosen}
    return {**{label: Setting(uc) for uc, label in REFERENCES.items()}, **extra, **chosen}


def _resolve(changes: dict, base, profile: str) -> dict:
    """The markers of a setting's changes made concrete: PRETRAINED -> the profile's weights file of that network,
    the slow start's length -> 10% of the run's optimisation steps."""
    out = {}
    for key, value in changes.items():
        if value == PRETRAINED:
            value = str(pretrain.weights_path(profile, "unet" if key == "unet_weights" else "deeplabv3"))
        elif value == SLOW_START["warmup_steps"]:
            from mistudy.training import loaders

            images = base.train_samples or len(loaders.build_datasets(base)["train"])
            value = max(1, round(0.1 * base.epochs * (images // base.resolved_batch_size)))
        out[key] = value
    return out


def configs(names=None, seeds=None, profile: str | None = None, overrides: dict | None = None,
            results_dir=None, resume: bool = False, **fields) -> list[tuple[str, object]]:
    """(setting name, TrainConfig) of every run of the grid: references and ablations, every seed; with ``resume``,
    the runs that exist are continued (an interrupted grid, or a longer one) and the others start.  ``seeds``: None,
    the profile's study seeds (`config.study_seeds`).

    Ablation runs go to ``<results_dir>/ablations/<dataset>/<use-case>/<setting>-seed<k>``; ``overrides`` (any
    TrainConfig field, e.g. {"epochs": 3}) apply to every run alike.  Without overrides the references are the
    study's own runs of notebooks 02-04 (``<results_dir>/<dataset>/<use-case>/seed<k>``, reused when finished);
    with overrides they are trained beside the ablations.
    """
    profile = resolve_profile(profile, fields.get("dataset", "synthetic"))
    seeds = study_seeds(profile) if seeds is None else seeds
    results = Path(results_dir or runs.default_results_dir(profile))
    out, seen = [], {}
    for name, setting in settings(names).items():
        for seed in seeds:
            # the references are the study's own 02-04 runs, except on tuning seeds: those never reach its tables
            shared = name in REFERENCES.values() and not overrides and seed not in tuning.TUNING_SEEDS
            where = dict(results_dir=str(results)) if shared else \
                dict(results_dir=str(results / DIRECTORY), run_name=_run_name(name, seed))
            base = study_config(setting.use_case, profile, overrides, seed=seed, **where, **fields)
            changes = _resolve(setting.changes, base, profile)
            cfg = study_config(setting.use_case, profile, {**(overrides or {}), **changes}, seed=seed, **where,
                               **fields)
            # a setting that changes nothing (e.g. the tuning grid's rate that is the profile's) is an earlier
            # setting's run, the reference's first: one run, never two identical ones
            resolved = asdict(cfg) | {"lr": cfg.resolved_lr, "batch_size": cfg.resolved_batch_size}
            cfg = seen.setdefault((seed, comparison.setting_key(resolved)), cfg)
            out.append((name, runs.resume_if_started(cfg) if resume else cfg))
    return out


def run(names=None, seeds=None, profile: str | None = None, overrides: dict | None = None, results_dir=None,
        resume: bool = False, **fields) -> dict[str, list[dict]]:
    """Train (or reuse) every run of the grid (``resume``: continue those that exist); returns {setting: [run of each
    seed]} as `runs.load_run` gives."""
    from mistudy.training.train import train_or_load

    grid: dict[str, list[dict]] = {}
    for name, cfg in configs(names, seeds, profile, overrides, results_dir, resume, **fields):
        summary = train_or_load(cfg)
        grid.setdefault(name, []).append(runs.load_run(summary["run_dir"]))
    return grid


FAMILIES = {"vs_baseline": "baseline", "vs_paper_setting": "paper's setting"}  # each column one family of tests


def _difference(method, reference, metric="miou", checkpoint="best_miou"):
    found = comparison.paired_difference(method, reference, metric, checkpoint=checkpoint)
    return found[0] if found else None


def _after_first_epoch(group: list[dict], partner: str) -> dict[str, float] | None:
    """{"partner", "student"}: the mean over seeds of each network's validation mIoU after the first epoch (the
    partner's head start: a pretrained partner leads its student from scratch there); None when a run of the group
    has no history or was not scored after its first epoch."""
    keys = {"partner": f"{partner}/val_miou", "student": f"{PRIMARY_NETWORK}/val_miou"}
    first = [(runs.load_history(r["run_dir"]) or [{}])[0] for r in group]
    # a run without a history, or not scored after its first epoch (eval_every > 1): no head start to show
    if any(h.get("epoch") != 1 or any(k not in h for k in keys.values()) for h in first):
        return None
    return {role: statistics.fmean(h[key] for h in first) for role, key in keys.items()}


def effects(grid: dict[str, list[dict]], checkpoint: str = "best_miou") -> list[dict]:
    """One row per setting: mIoU mean [t-interval], its paired difference from the baseline and from the paper's
    setting of the same method, and the scores beyond mIoU against the paper's setting (each
    `mistudy.methods.stats.paired_difference`: seeds and validation images); "<family>_holm": the Holm-adjusted p-value of
    the difference within its column (the grid's family of simultaneous tests)."""
    rows = []
    for name, group in grid.items():
        use_case = group[0]["config"]["use_case"]
        reference = grid[REFERENCES[use_case]] if name not in REFERENCES.values() else None
        baseline = ABLATIONS[name].baseline if name in ABLATIONS else BASELINE
        scores = [r["metrics"]["networks"][PRIMARY_NETWORK][checkpoint] for r in group]
        miou = stats.t_interval([s["miou"] for s in scores])
        row = {"setting": name, "use_case": use_case, "n": len(group), "miou": miou, "baseline": baseline}
        partners = [n for n in group[0]["metrics"]["networks"] if n != PRIMARY_NETWORK]
        if partners:  # mutual learning: the partner's strength beside its student's, at the end and at the start
            row["partner"] = partners[0]
            row["partner_miou"] = stats.t_interval([r["metrics"]["networks"][partners[0]][checkpoint]["miou"]
                                                    for r in group])
            row["after_epoch_1"] = _after_first_epoch(group, partners[0])
        if use_case != "baseline":
            row["vs_baseline"] = _difference(group, grid[baseline], checkpoint=checkpoint)
        if reference is not None:
            row["vs_paper_setting"] = _difference(group, reference, checkpoint=checkpoint)
            for metric in comparison.EXTRA_METRICS:
                row[f"{metric}_vs_paper_setting"] = _difference(group, reference, metric, checkpoint)
        rows.append(row)
    for key in FAMILIES:
        family = [r for r in rows if r.get(key) is not None]
        for r, p in zip(family, stats.holm([r[key].p_value for r in family])):
            r[f"{key}_holm"], r[f"{key}_tests"] = p, len(family)
    return rows


def _partner_cell(row: dict) -> str:
    """"deeplabv3 0.514 [0.498, 0.531]; after epoch 1: 0.401 (student 0.190)": the partner's mIoU under the table's
    checkpoint rule and, after the first epoch, its mean beside its student's; "–" without a partner."""
    if not row.get("partner"):
        return "–"
    start = row.get("after_epoch_1")
    return f"{row['partner']} {row['partner_miou'].format(3)}" + (
        f"; after epoch 1: {start['partner']:.3f} (student {start['student']:.3f})" if start else "")


def effect_table(rows: list[dict]) -> list[dict]:
    """The effects as printable cells, with verdicts worded from the intervals, raw and Holm-adjusted for the
    number of settings compared in the column."""
    # a column's family: the settings that have its difference (the references and baselines have none, and
    # their cells must still fall under the same column)
    tests = {key: sum(r.get(key) is not None for r in rows) for key in FAMILIES}
    out = []
    for r in rows:
        cell = {"setting": r["setting"], "n": r["n"], "mIoU [95% CI]": r["miou"].format(3),
                "partner's mIoU [95% CI]": _partner_cell(r),
                "baseline": r["baseline"] if r.get("vs_baseline") else "–"}
        for key, label in FAMILIES.items():
            d = r.get(key)
            cell[f"Δ mIoU vs {label}"] = d.format(3, signed=True) if d else "–"
            cell[f"vs {label}: verdict"] = stats.verdict(d) if d else "–"
            cell[f"vs {label}: Holm ({tests[key]} tests)"] = \
                stats.adjusted_verdict(d, r[f"{key}_holm"]) if d else "–"
        d = r.get("boundary_f_vs_paper_setting")
        cell["Δ boundary F vs paper's setting"] = d.format(3, signed=True) if d else "–"
        d = r.get("ece_vs_paper_setting")
        cell["Δ ECE (own probabilities) vs paper's setting"] = d.format(3, signed=True) if d else "–"
        out.append(cell)
    return out


def answer_lines(rows: list[dict]) -> list[str]:
    """The ablation's answer in words: the settings whose interval excludes zero, with their verdict once the
    family of comparisons is accounted for (Holm), and a count of the rest (the tuning grid: the chosen rates)."""
    if rows and "chosen" in rows[0]:
        return [f"{r['use_case']}: learning rate {r['lr']:g} chosen, selection-split mIoU {r['selection mIoU [95% CI]']} "
                f"(seeds {r['seeds']})" for r in rows if r["chosen"]]
    lines, quiet = [], []
    for r in rows:
        d = r.get("vs_paper_setting")
        if d is None:
            continue
        v, held = stats.verdict(d), stats.adjusted_verdict(d, r["vs_paper_setting_holm"])
        if v in ("better", "worse"):
            survives = f"holds after Holm's adjustment for {r['vs_paper_setting_tests']} comparisons" \
                if held == v else f"not after Holm's adjustment for {r['vs_paper_setting_tests']} comparisons"
            lines.append(f"{r['setting']}: mIoU {d.format(3, signed=True)} against the paper's setting ({v}; {survives}).")
        else:
            quiet.append(r["setting"])
    if quiet:
        lines.append(f"No detectable difference from the paper's setting (n = {rows[0]['n']} seeds): "
                     + ", ".join(quiet) + ".")
    for r in rows:
        if r["setting"] == "mutual two U-Nets" and r.get("vs_baseline"):
            lines.append(f"Mutual learning between two U-Nets (no larger network) against the baseline: "
                         f"{r['vs_baseline'].format(3, signed=True)} ({stats.verdict(r['vs_baseline'])}).")
    return lines


def write_results(rows: list[dict], grid: dict[str, list[dict]], figures_dir, dataset: str, profile: str,
                  checkpoint: str = "best_miou", overrides: dict | None = None, results_dir=None,
                  name: str = "ablations"):
    """Notebook 06's table and forest plot, written to ``<figures_dir>/<dataset>_06_<name>.{csv,md,png}`` (name: the
    grid's) with their provenance; returns (table rows, figure)."""
    from mistudy.report import viz

    found = [r for g in grid.values() for r in g]
    seeds = sorted({r["config"]["seed"] for r in found})
    prov = dict(dataset=dataset, profile=profile, **comparison.runs_provenance(found), overrides=overrides or {},
                checkpoint=checkpoint, notebook="06_ablations.ipynb", results_dir=str(results_dir))
    reference = grid[REFERENCES["baseline"]][0]
    if name == "tuning":  # rows: `tuning.tuning_rows`; no figure
        protocol = comparison.protocol_text(reference["config"], reference["metrics"], checkpoint)
        tuning.write_tuning(rows, figures_dir, dataset, prov, protocol.replace(
            f"Adam lr {reference['config']['lr']:g}", "Adam lr as in the row"))
        return rows, None
    table = effect_table(rows)
    write_table(table, Path(figures_dir) / f"{dataset}_06_{name}", prov, title="\n".join([
        f"{'Ablations' if name == 'ablations' else 'The ' + name + ' grid'} on {dataset} ({profile} profile, seeds {' '.join(map(str, seeds))}, checkpoint {checkpoint}): "
        f"mIoU mean over seeds [95% t-interval]; Δ: paired differences [{stats.PAIRED_INTERVAL_TEXT}]. Holm: the "
        "verdict once the column's comparisons are counted together (family-wise 5%). Mutual rows: the partner's "
        "mIoU under the same checkpoint rule, then each network's validation mIoU after the first epoch (mean over "
        "seeds, from each run's history, whatever the rule): the partner's head start.",
        f"Protocol (every setting alike, the named change aside): "
        f"{comparison.protocol_text(reference['config'], reference['metrics'], checkpoint)}."]))
    verdicts = {key: [stats.adjusted_verdict(r[key], r[f"{key}_holm"]) if r.get(key) else None for r in rows]
                for key in FAMILIES}
    references = {"vs_baseline": [r["baseline"] if r.get("vs_baseline") else None for r in rows],
                  "vs_paper_setting": [REFERENCES[r["use_case"]] if r.get("vs_paper_setting") else None
                                       for r in rows]}
    fig = viz.plot_effects(rows, {"vs_baseline": "Δ mIoU vs the row's baseline",
                                  "vs_paper_setting": "Δ mIoU vs the paper's setting of its method"},
                           title=f"{'Ablations' if name == 'ablations' else 'The ' + name + ' grid'} on {dataset} "
                                 f"({profile} profile: {reference['config']['epochs']} epochs; checkpoint "
                                 f"{checkpoint}): effects with 95% intervals over {len(seeds)} seeds and the "
                                 f"validation images, coloured by the table's Holm verdict",
                           verdicts=verdicts, references=references, xlabel="Δ mIoU (95% interval)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_06_{name}.png", prov)
    return table, fig
