"""The comparison of the study (notebook 05, and the ablations of notebook 06): every finished run under
``<results>/<dataset>/<use-case>/*/`` grouped by setting, each method's mean over seeds with a t-interval, and each
method paired with the baseline trained with the same seeds and scored on the same images -- the paired difference
of every score with an interval over seeds widened by the image-sampling variance (`mistudy.methods.stats`) and a verdict
worded from it -- beside the paper's single-run numbers.  `protocol_text` names every protocol choice the numbers
depend on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mistudy.io.tables import write_table
from mistudy.methods import stats
from mistudy.methods.metrics import (
    PROBABILITY_TEXT,
    SCORING_VERSION,
    VOID_BAND_PX,
    boundary_tolerance_text,
    ece_from_calibration,
    information_from_confmat,
    mean_entropy_from_sums,
    miou_from_confmat,
)
from mistudy.training import runs
from mistudy.training.config import (
    CHECKPOINT_RULES,
    DATASETS,
    HEADLINE_CHECKPOINT,
    PRIMARY_NETWORK,
    RUNTIME_OPTIONS,
    USE_CASES,
)
from mistudy.training.runs import SCORES

USE_CASE_TITLES = {  # the paper's names of the use-cases (sections 4.1-4.3)
    "baseline": "U-Net: Baseline",
    "rmi": "U-Net: Region Mutual Information Loss",
    "mutual": "Deep Mutual Learning: DeepLabV3 and U-Net",
}

NETWORK_LABELS = {"unet": "U-Net", "deeplabv3": "DeepLabV3", "unet_peer": "U-Net peer"}

# Scores beyond the paper's, each with the direction that counts as better (None: neither, e.g. entropy).
# Calibration and entropy twice: under the probabilities each network's loss trains (own: sigmoid for BCE) and under
# the softmax of its logits (`metrics.PROBABILITY_TEXT`).
EXTRA_METRICS = {"boundary_f": "higher", "ece": "lower", "ece_softmax": "lower", "mean_entropy_bits": None,
                 "mean_entropy_bits_softmax": None, "mutual_information_bits": "higher",
                 "normalized_mutual_information": "higher"}

# Scores in [0, 1], whose intervals are cut at 0 and 1 (a t-interval over 2 seeds spans +-12.7 standard errors).
BOUNDED = {*SCORES, "boundary_f", "ece", "ece_softmax", "normalized_mutual_information"}

EXTRA_LABELS = {"boundary_f": "boundary F", "ece": "ECE (own probabilities)", "ece_softmax": "ECE (softmax reading)",
                "mean_entropy_bits": "mean entropy (bits, own)",
                "mean_entropy_bits_softmax": "mean entropy (bits, softmax reading)",
                "mutual_information_bits": "I(Y;Ŷ) (bits)", "normalized_mutual_information": "NMI"}

# The paper's Tables 1-3 (U-Net; single runs). Its "IoU" column is the standard mean IoU over classes, which
# the authors' code computed; the micro IoU its text defines would be acc / (2 - acc), e.g. 0.885 for 0.9388.
PAPER_TABLE_NUMBER = {"baseline": 1, "rmi": 2, "mutual": 3}

# What the paper's text (section 4) concludes of each method against its baseline, in its own words.
PAPER_WORDS = {
    ("rmi", "cityscapes"): "does not significantly change",
    ("rmi", "voc"): "achieves worse results",
    ("mutual", "cityscapes"): "does not significantly change",
    ("mutual", "voc"): "achieves the best result",
}

PAPER_RESULTS = {
    ("baseline", "cityscapes"): {"miou": 0.5931, "pixel_accuracy": 0.9388},
    ("baseline", "voc"): {"miou": 0.1965, "pixel_accuracy": 0.7367},
    ("rmi", "cityscapes"): {"miou": 0.5244, "pixel_accuracy": 0.9345},
    ("rmi", "voc"): {"miou": 0.0607, "pixel_accuracy": 0.6893},
    ("mutual", "cityscapes"): {"miou": 0.5619, "pixel_accuracy": 0.9342},
    ("mutual", "voc"): {"miou": 0.2203, "pixel_accuracy": 0.7539},
}

# Config keys that do not change what a run measures: runs differing only here are seeds of one setting.  Not
# eval_every: best_miou chooses among the scored epochs only, and each scoring pass draws its loaders' seeds from
# torch's global generator, which DeepLabV3's dropout draws from too (docs/protocol.md, "Reproducibility").
NOT_SETTING = RUNTIME_OPTIONS | {"seed", "run_name", "run_dir", "results_dir", "resume"}

# Keys that must agree for a method's run to be compared with a baseline run of the same seed: the data, the
# evaluation and the training length (the optimiser may differ: the paper's use-cases have their own).
PAIRING_KEYS = ("dataset", "synthetic_level", "data_seed", "resize_size", "crop_size", "square_resize", "normalize",
                "train_samples", "val_samples", "select_fraction", "eval_protocol", "eval_passes", "epochs",
                "eval_every")

BOUNDARY_F_TEXT = ("boundary F-score as Csurka et al. 2013 (per image the mean F over its classes with a boundary, "
                   f"then the mean over images; the truth's void band within {VOID_BAND_PX} px of labels takes the "
                   "nearest label, void beyond it is void in the prediction)")
HOLM_TEXT = ("After Holm: the verdict once the comparisons with one baseline (each method setting paired with the "
             "same baseline runs: one per method in the study) are counted together (Holm 1979; the family-wise "
             "error held at 5%).")


def paper_claim(use_case: str, dataset: str) -> str | None:
    """The paper's verdict on a method against its baseline: its words and its single-run mIoU (None: no claim)."""
    words, ours, base = (PAPER_WORDS.get((use_case, dataset)), PAPER_RESULTS.get((use_case, dataset)),
                         PAPER_RESULTS.get(("baseline", dataset)))
    if words is None:
        return None
    return (f'"{words}" (its text); mIoU {ours["miou"]:.3f} vs {base["miou"]:.3f}, {ours["miou"] - base["miou"]:+.3f} '
            f"(Table {PAPER_TABLE_NUMBER[use_case]}, single runs)")


def networks_in_order(names) -> list[str]:
    """A run's networks with the one the paper reports (the U-Net; mutual: the student) first."""
    return sorted(names, key=lambda n: n != PRIMARY_NETWORK)


def protocol_text(config: dict, metrics: dict | None = None, checkpoint: str = "best_miou") -> str:
    """Every protocol choice the numbers of a run depend on, in one sentence (``config``: a saved config.json)."""
    c = runs.config_from_json(config)  # resolved the way the run resolved them: one home for the defaults
    data_part = (f"synthetic ({c.synthetic_level} level), images generated at {c.resize_size}x{c.resize_size}"
                 if c.dataset == "synthetic" else f"{c.dataset}, resized to {c.resize_size}x{c.resize_size}"
                 if c.square_resize else f"{c.dataset}, shorter side resized to {c.resize_size}")
    sizes = ""
    if metrics:
        sizes = (f"; {metrics['train_samples']} train / {metrics.get('select_samples', 0)} selection / "
                 f"{metrics['val_samples']} validation images")
    evaluation = {"paper": f"centre {c.crop_size} crop", "full": "whole image at the training scale, scored at "
                  "the mask's resolution", "random-crop": f"random {c.crop_size} crops"}[c.eval_protocol]
    passes = c.resolved_eval_passes
    init = [f"{net} from {Path(path).name}" + (f" (head: {head})" if head else "")
            for net, path, head in (("U-Net", c.unet_weights, c.unet_head), ("DeepLabV3", c.deeplab_weights,
                                                                            c.deeplab_head)) if path]
    schedule = c.lr_schedule
    if c.warmup_steps:
        schedule = f"{c.warmup_mode} warm-up for {c.warmup_steps} steps from {c.warmup_factor:g}x, then {schedule}"
    base = "softmax CE" if c.rmi_base == "ce" else "BCE"
    method = {"baseline": "cross-entropy",
              "rmi": f"{c.rmi_bce_weight:g} {base} + {1 - c.rmi_bce_weight:g} RMI (radius {c.rmi_radius}, pooling "
                     f"{c.rmi_pool}{'' if c.rmi_pool == 'none' else ' ' + str(c.rmi_pool_size)})",
              "mutual": f"CE + {c.kl_weight:g} KL at T={c.kl_temperature:g}, partner {c.mutual_partner}, "
                        f"{c.mutual_schedule} updates"}
    return (f"{data_part}{sizes}; {c.use_case}: {method[c.use_case]}; training: random {c.crop_size} crops, "
            f"batch {c.resolved_batch_size}, Adam lr {c.resolved_lr:g} ({schedule}), {c.epochs} epochs, "
            f"{'ImageNet normalisation' if c.normalize else 'no normalisation'}, "
            f"{', '.join(init) if init else 'random init'}, precision {_precision(c.amp)}; evaluation: {evaluation}, {passes} "
            f"pass{'es' if passes > 1 else ''}; checkpoint {checkpoint}: {CHECKPOINT_RULES[checkpoint]}")


def _precision(amp: str) -> str:
    return {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(amp, f"amp {amp}")


def find_and_load(results_dir, dataset: str, use_case: str) -> list[dict]:
    """Every finished run of a dataset x use-case; a run scored under another version of the metrics raises naming it
    and how to score it again (a table never mixes two definitions of a score)."""
    found = [runs.load_run(p) for p in runs.find_runs(results_dir, dataset, use_case)]
    stale = [str(r["run_dir"]) for r in found if r["metrics"].get("scoring_version", 1) != SCORING_VERSION]
    if stale:
        raise ValueError(f"{len(stale)} run(s) were scored under an older version of the metrics (now "
                         f"{SCORING_VERSION}), e.g. {stale[0]}: score them again from their checkpoints with the "
                         "command that trained them (a notebook, `mistudy train` or `mistudy study`; nothing is "
                         "trained), or move them out of the results directory")
    return found


def setting_key(config: dict) -> str:
    """What makes runs one setting: the config without the seed, paths and runtime options (NOT_SETTING)."""
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in NOT_SETTING}, sort_keys=True)


def group_by_setting(found: list[dict]) -> list[list[dict]]:
    """Split runs into groups whose configs differ only in NOT_SETTING keys (seed, device, paths...)."""
    groups: dict[str, list[dict]] = {}
    for run in found:
        groups.setdefault(setting_key(run["config"]), []).append(run)
    return [sorted(g, key=lambda r: r["config"]["seed"]) for g in groups.values()]


def _setting_label(group: list[dict], groups: list[list[dict]]) -> str:
    """The config values that tell this group from the others of its cell (empty when it is alone)."""
    if len(groups) < 2:
        return ""
    configs = [g[0]["config"] for g in groups]
    keys = sorted(k for k in configs[0] if k not in NOT_SETTING and len({json.dumps(c.get(k)) for c in configs}) > 1)
    return ", ".join(f"{k}={group[0]['config'].get(k)}" for k in keys)


def runs_for(results_dir, dataset: str, use_case: str) -> list[dict]:
    """The runs of one dataset x use-case for figures: the setting with the most seeds, lowest seed first."""
    found = find_and_load(results_dir, dataset, use_case)
    return max(group_by_setting(found), key=len) if found else []


def _pairing(config: dict) -> tuple:
    return tuple(json.dumps(config.get(k)) for k in PAIRING_KEYS)


# How each paired score is recomputed from summed per-image statistics (per_image.npz): the statistic it needs, a
# transform of the per-image arrays [S, N, ...] (None: as stored) and the score of their sums over images.
PAIRED_SCORES = {
    "miou": ("confmat", None, miou_from_confmat),
    "boundary_f": ("boundary_f", stats.per_image_mean, stats.mean_of_sums),
    "ece": ("calibration", None, ece_from_calibration),
    "ece_softmax": ("calibration_softmax", None, ece_from_calibration),
    "mean_entropy_bits": ("entropy", None, mean_entropy_from_sums),
    "mean_entropy_bits_softmax": ("entropy_softmax", None, mean_entropy_from_sums),
    "mutual_information_bits": ("confmat", None, lambda cm: information_from_confmat(cm)[0]),
    "normalized_mutual_information": ("confmat", None, lambda cm: information_from_confmat(cm)[1]),
}


def _per_image(group: list[dict], network: str, checkpoint: str, statistic: str) -> np.ndarray:
    """One per-image statistic of every run of a group, stacked over seeds: [S, N, ...]."""
    per_seed = [runs.load_per_image(r["run_dir"], network, checkpoint) for r in group]
    ids = {tuple(p["ids"]) for p in per_seed}
    if len(ids) != 1:
        raise ValueError(f"runs {[str(r['run_dir']) for r in group]} were scored on different validation images")
    missing = [str(r["run_dir"]) for r, p in zip(group, per_seed) if statistic not in p]
    if missing:
        raise KeyError(f"runs {missing} have no per-image {statistic!r} (written before it existed: train them again)")
    return np.stack([p[statistic] for p in per_seed])


def paired_difference(method: list[dict], baseline: list[dict], metric: str = "miou", network: str = PRIMARY_NETWORK,
                      checkpoint: str = "best_miou") -> tuple[stats.Interval, stats.Interval] | None:
    """metric(method) - metric(baseline) on the seeds both have: (seeds and images interval, images-only interval),
    `mistudy.methods.stats.paired_difference` on the runs' per-image statistics.

    None when no seed is shared, the runs were scored on different images, or per-image statistics are missing.
    """
    found = _paired_statistics(method, baseline, metric, network, checkpoint)
    if found is None:
        return None
    a, b, score, _ = found
    try:
        return stats.paired_difference(a, b, score)
    except ValueError:  # a score undefined for some seed (e.g. no boundary anywhere)
        return None


def _paired_statistics(method, baseline, metric, network, checkpoint):
    """(method's [S, N, ...], baseline's [S, N, ...] per-image statistics of the seeds both have, the score of
    their sums over images, the seeds); None when no seed is shared or the statistics are missing or differ."""
    statistic, transform, score = PAIRED_SCORES[metric]
    by_seed = {r["config"]["seed"]: r for r in baseline}
    pairs = [(r, by_seed[r["config"]["seed"]]) for r in method if r["config"]["seed"] in by_seed]
    if not pairs:
        return None
    try:
        a = _per_image([m for m, _ in pairs], network, checkpoint, statistic)
        b = _per_image([base for _, base in pairs], PRIMARY_NETWORK, checkpoint, statistic)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    if a.shape != b.shape:
        return None
    if transform is not None:
        a, b = transform(a), transform(b)
    return a, b, score, [m["config"]["seed"] for m, _ in pairs]


def seed_check(method: list[dict], baseline: list[dict], network: str = PRIMARY_NETWORK,
               checkpoint: str = "best_miou") -> tuple[stats.SeedCheck, list[int]] | None:
    """The mIoU difference seed by seed (each seed's on the whole validation set) checked for what the mean hides:
    how many seeds are better or worse (sign test) and a seed far from the others, e.g. a take-off failure
    (`stats.seed_check`), with the seeds in the check's order; None where `paired_difference` is None."""
    found = _paired_statistics(method, baseline, "miou", network, checkpoint)
    if found is None:
        return None
    a, b, score, seeds = found
    return stats.seed_check(score(a.sum(axis=1)) - score(b.sum(axis=1)), seeds=seeds), seeds


def comparison(results_dir, datasets=DATASETS, checkpoint: str = "best_miou") -> tuple[list[dict], list[str]]:
    """Our scores per dataset x use-case x network beside the paper's, and notes on what is missing.

    Each row: dataset, use_case, network, checkpoint, setting (empty unless runs of one cell differ in more than the
    seed), epochs, n_seeds, seeds, <metric>_mean / _std / _low / _high (t-interval over seeds) for METRICS,
    miou_diff / _low / _high and verdict (paired with the baseline of the same seeds and images; the baseline
    and the mutual partner have none), miou_diff_holm / holm_tests / verdict_holm (`adjust_for_the_family`), protocol,
    paper_table, paper_iou (the paper's mIoU), paper_accuracy.
    A dataset x use-case without runs keeps its paper row (n_seeds 0) when the paper has numbers for it, and
    gets a note either way.
    """
    if checkpoint not in CHECKPOINT_RULES:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINT_RULES)}, got {checkpoint!r}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; valid: {list(DATASETS)}")
    rows, notes = [], []
    for dataset in datasets:
        groups = {uc: group_by_setting(find_and_load(results_dir, dataset, uc)) for uc in USE_CASES}
        baselines = {_pairing(g[0]["config"]): g for g in groups["baseline"]}
        families = {}  # pairing key -> the rows compared with that baseline
        missing = [uc for uc, g in groups.items() if not g]
        for use_case, cell_groups in groups.items():
            paper = PAPER_RESULTS.get((use_case, dataset))
            paper_cols = {"paper_table": PAPER_TABLE_NUMBER[use_case] if paper else None,
                          "paper_iou": paper["miou"] if paper else None,
                          "paper_accuracy": paper["pixel_accuracy"] if paper else None}
            if not cell_groups and paper:
                rows.append({"dataset": dataset, "use_case": use_case, "network": PRIMARY_NETWORK,
                             "checkpoint": checkpoint, "n_seeds": 0, **paper_cols})
            for group in cell_groups:
                networks = networks_in_order(group[0]["metrics"]["networks"])
                for network in networks:
                    rows.append(_comparison_row(group, cell_groups, network, checkpoint, baselines, paper_cols))
                    families.setdefault(_pairing(group[0]["config"]), []).append(rows[-1])
        for family in families.values():
            adjust_for_the_family(family)
        if len(missing) == len(USE_CASES):
            notes.append(f"{dataset}: no finished runs under {Path(results_dir) / dataset} (run `python -m mistudy "
                         f"study --dataset {dataset}{'' if dataset == 'synthetic' else ' --data-root DIR'}`)")
        elif missing:
            notes.append(f"{dataset}: no finished runs of {', '.join(missing)}")
    return rows, notes


def adjust_for_the_family(rows: list[dict]) -> None:
    """Holm's adjustment over the comparisons with one baseline (``rows``: those paired with the same baseline runs;
    each method setting's U-Net row with a paired Δ mIoU counts): sets miou_diff_holm (the adjusted p-value),
    holm_tests (the family's size) and verdict_holm, so that "better" / "worse" after it hold with the family-wise
    error at 5% however many methods the table compares.  Runs of another length pair with another baseline and form
    a family of their own (a long profile's runs extended one by one)."""
    family = [r for r in rows if r["network"] == PRIMARY_NETWORK and r.get("miou_diff_p") is not None]
    for r, p in zip(family, stats.holm([r["miou_diff_p"] for r in family])):
        d = stats.Interval(r["miou_diff"], r["miou_diff_low"], r["miou_diff_high"], r["n_seeds"])
        r |= {"miou_diff_holm": p, "holm_tests": len(family), "verdict_holm": stats.adjusted_verdict(d, p)}


def family_size(row: dict) -> str:
    """The size of the row's Holm family in words: "1 comparison", "2 comparisons"."""
    return f"{row['holm_tests']} comparison{'' if row['holm_tests'] == 1 else 's'}"


def holm_note(row: dict) -> str:
    """The note "; after Holm (2 comparisons): <verdict>" where Holm's adjustment changes the row's verdict, else
    an empty string."""
    if row.get("verdict_holm") is None or row["verdict_holm"] == row.get("verdict"):
        return ""
    return f"; after Holm ({family_size(row)}): {row['verdict_holm']}"


def _comparison_row(group, cell_groups, network, checkpoint, baselines, paper_cols) -> dict:
    first = group[0]
    scores = [r["metrics"]["networks"][network].get(checkpoint) for r in group]
    if any(s is None for s in scores):
        bad = [str(r["run_dir"]) for r, s in zip(group, scores) if s is None]
        raise ValueError(f"runs {bad} have no {checkpoint!r} metrics for {network} (best_miou needs a selection "
                         "split: select_fraction > 0)")
    row = {"dataset": first["config"]["dataset"], "use_case": first["config"]["use_case"], "network": network,
           "checkpoint": checkpoint, "setting": _setting_label(group, cell_groups),
           "epochs": first["config"]["epochs"], "n_seeds": len(group),
           "seeds": " ".join(str(r["config"]["seed"]) for r in group),
           "boundary_tolerance": boundary_tolerance_text(first["config"].get("boundary_tolerance"),
                                                         scored_size(first["config"]))}
    for m in (*SCORES, *EXTRA_METRICS):
        values = [s.get(m) for s in scores]
        if any(v is None for v in values):  # a run written before the metric existed
            continue
        ci = stats.t_interval(values)
        low, high = (None, None) if math.isnan(ci.low) else (ci.low, ci.high)
        if m in BOUNDED and low is not None:  # a t-interval of few seeds reaches past the score's range: cut there
            low, high = max(low, 0.0), min(high, 1.0)
        row |= {f"{m}_mean": ci.estimate, f"{m}_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                f"{m}_low": low, f"{m}_high": high}
    base = None
    if row["use_case"] != "baseline" and network == PRIMARY_NETWORK:
        base = baselines.get(_pairing(first["config"]))
    for m, better in {"miou": "higher", **EXTRA_METRICS}.items():
        found = paired_difference(group, base, m, network, checkpoint) if base else None
        d, images_only = found if found else (None, None)
        row |= {f"{m}_diff": d.estimate if d else None, f"{m}_diff_low": _finite(d.low) if d else None,
                f"{m}_diff_high": _finite(d.high) if d else None, f"{m}_diff_p": _finite(d.p_value) if d else None,
                f"{m}_diff_images_low": _finite(images_only.low) if d else None,
                f"{m}_diff_images_high": _finite(images_only.high) if d else None,
                f"{m}_verdict": _directed_verdict(d, better) if d else None}
    found = seed_check(group, base, network, checkpoint) if base else None
    check, seeds = found or (None, [])
    row |= {"verdict": row.pop("miou_verdict"), "seeds_check": check.text if check else None,
            "outlier_seeds": " ".join(str(seeds[i]) for i in check.outlier_seeds) if check else None,
            "protocol": protocol_text(first["config"], first["metrics"], checkpoint)}
    return {**row, **(paper_cols if network == PRIMARY_NETWORK else dict.fromkeys(paper_cols))}


def scored_size(config: dict) -> tuple[int, int] | None:
    """The size of every scored image of a run, (H, W), where one size holds for all: the crop of the paper and
    random-crop protocols (None for "full": each image at its own size)."""
    c = runs.config_from_json(config)
    return None if c.eval_protocol == "full" else (c.crop_size, c.crop_size)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def _directed_verdict(d: stats.Interval, better: str | None) -> str:
    if better is None:
        return stats.verdict(d, "higher", "lower")
    return stats.verdict(d, *(("better", "worse") if better == "higher" else ("worse", "better")))


def _ci_cell(row: dict, metric: str) -> str:
    if not row.get("n_seeds") or row.get(f"{metric}_mean") is None:
        return "–"
    mean, low = row[f"{metric}_mean"], row.get(f"{metric}_low")
    return f"{mean:.3f}" if low is None else f"{mean:.3f} [{low:.3f}, {row[f'{metric}_high']:.3f}]"


def diff_cell(row: dict, metric: str) -> str:
    d = row.get(f"{metric}_diff")
    if d is None:
        return "–"
    low = row.get(f"{metric}_diff_low")
    return f"{d:+.3f}" if low is None else f"{d:+.3f} [{low:+.3f}, {row[f'{metric}_diff_high']:+.3f}]"


def format_extra(rows: list[dict]) -> list[dict]:
    """The scores beyond the paper's as printable cells: mean [t-interval] and, for methods, the paired difference
    from the baseline over seeds [t-interval]."""
    out = []
    for r in rows:
        if not r.get("n_seeds"):
            continue
        cell = {"dataset": r["dataset"], "use-case": r["use_case"], "network": NETWORK_LABELS[r["network"]], "n": r["n_seeds"]}
        for m, label in EXTRA_LABELS.items():
            cell[label] = _ci_cell(r, m)
            if r["use_case"] != "baseline" and r["network"] == PRIMARY_NETWORK:
                cell[f"Δ {label}"] = diff_cell(r, m)
        out.append(cell)
    return out


def format_comparison(rows: list[dict]) -> list[dict]:
    """The comparison rows as printable cells."""
    out = []
    for r in rows:
        # the paper's "teacher" is named for what it is here: a partner, which may be weaker than its student
        role = " (student)" if r["use_case"] == "mutual" and r["network"] == PRIMARY_NETWORK else \
            " (partner)" if r["use_case"] == "mutual" else ""
        cell = {"dataset": r["dataset"], "use-case": r["use_case"], "network": NETWORK_LABELS[r["network"]] + role}
        if any(row.get("setting") for row in rows):
            cell["setting"] = r.get("setting")
        diff = diff_cell(r, "miou")
        cell |= {"epochs": r.get("epochs"), "n": r["n_seeds"],
                 "pixel accuracy [95% CI]": _ci_cell(r, "pixel_accuracy"), "mIoU [95% CI]": _ci_cell(r, "miou"),
                 "Δ mIoU vs baseline [95% CI]": diff, "verdict": r.get("verdict") or "–",
                 "verdict after Holm": f"{r['verdict_holm']} ({family_size(r)})" if r.get("verdict_holm") else "–",
                 "seed by seed": r.get("seeds_check") or "–",
                 "paper mIoU": r.get("paper_iou"), "paper accuracy": r.get("paper_accuracy")}
        out.append(cell)
    return out


def comparison_title(rows: list[dict], checkpoint: str) -> str:
    protocols = list(dict.fromkeys(f"{r['dataset']}: {r['protocol']}" for r in rows if r.get("protocol")))
    return "\n".join([
        f"Our results beside the paper's Tables 1-3 (checkpoint {checkpoint}: {CHECKPOINT_RULES[checkpoint]}).",
        "mIoU and pixel accuracy: mean over seeds (n) with a 95% Student-t interval, cut at 0 and 1 (the scores' range, "
        "which the interval of few seeds can pass). Δ mIoU: the method's U-Net minus "
        "the baseline's, trained with the same seeds and scored on the same validation images, averaged over seeds, "
        f"with a {stats.PAIRED_INTERVAL_TEXT}; the verdict reads the interval: better / worse when it excludes 0, else "
        f"no detectable difference at that n. {HOLM_TEXT} The paper reports single runs; its IoU is the mean IoU "
        "over classes.",
        f"Seed by seed: {stats.SEED_CHECK_TEXT}.",
        *[f"Protocol, {p}." for p in protocols]])


def write_comparison(rows: list[dict], path, prov: dict | None = None, checkpoint: str = "best_miou"):
    """<path>.{csv,md}: every column as numbers (CSV) and the paper's scores formatted (Markdown); beside them
    <path>_beyond_miou.md: boundary F, calibration, entropy and mutual information.  Returns (csv, md)."""
    prov = {"checkpoint": checkpoint, **(prov or {})}
    extra = format_extra(rows)
    if extra:
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".csv", ".md") else path
        write_table(extra, stem.with_name(stem.name + "_beyond_miou"), prov, markdown_rows=extra,
                    title=f"Beyond mIoU (checkpoint {checkpoint}): {BOUNDARY_F_TEXT} (tolerance: "
                    f"{_tolerances(rows)}), top-label expected calibration error (15 bins) and mean predictive entropy "
                    f"({PROBABILITY_TEXT}), "
                    "and the mutual information between prediction and ground truth, each the mean over seeds [95% "
                    "t-interval]; Δ: the method's U-Net minus the baseline's over the same seeds and validation images "
                    f"[{stats.PAIRED_INTERVAL_TEXT}]. The runs' protocols (precision included) are those of "
                    f"{stem.name}.md:\n" + "\n".join(dict.fromkeys(f"Protocol, {r['dataset']}: {r['protocol']}"
                                                                  for r in rows if r.get("protocol"))))
    return write_table(rows, path, prov, markdown_rows=format_comparison(rows), title=comparison_title(rows, checkpoint))


def _tolerances(rows: list[dict]) -> str:
    return ", ".join(dict.fromkeys(r["boundary_tolerance"] for r in rows if r.get("boundary_tolerance"))) or "–"


def summary_lines(rows: list[dict]) -> list[str]:
    """Per method and dataset: on which metric it differs from the baseline, worded from the intervals, with the
    paper's claim beside it."""
    lines = []
    for r in rows:
        if r["use_case"] == "baseline" or r["network"] != PRIMARY_NETWORK or not r.get("n_seeds"):
            continue
        found = paper_claim(r["use_case"], r["dataset"])
        claim = f" The paper: {found}." if found else ""
        parts = []
        if r.get("miou_diff") is not None:
            parts.append(f"mIoU {diff_cell(r, 'miou')} ({r['verdict']}{holm_note(r)})")
        for m in EXTRA_METRICS:
            if r.get(f"{m}_diff") is not None:
                parts.append(f"{EXTRA_LABELS[m]} {diff_cell(r, m)} ({r[f'{m}_verdict']})")
        if not parts:
            lines.append(f"{r['dataset']}, {r['use_case']}: no paired baseline runs, no difference computed.{claim}")
            continue
        lines.append(f"{r['dataset']}, {r['use_case']} vs baseline, n = {r['n_seeds']} seeds: " + "; ".join(parts)
                     + "." + claim)
    return lines


def verdicts_by_rule(results_dir, datasets=DATASETS) -> list[dict]:
    """Each method's Δ mIoU against the baseline under every checkpoint rule (best_miou, best_loss, last), side by
    side: one row per dataset x method setting, "robust" only where the three verdicts agree, else the rule each
    verdict depends on is plain to see.  The headline rule (HEADLINE_CHECKPOINT) is marked; beside the verdicts, the
    mIoU of the networks compared under it (`_networks_cell`: mutual learning's partner beside its student), and
    last the three verdicts read again after Holm's adjustment (`adjust_for_the_family`)."""
    tables = {rule: comparison(results_dir, datasets, rule)[0] for rule in CHECKPOINT_RULES}
    keyed = {rule: {(r["dataset"], r["use_case"], r.get("setting", "")): r for r in rows
                    if r["network"] == PRIMARY_NETWORK and r.get("miou_diff") is not None}
             for rule, rows in tables.items()}
    headline = tables[HEADLINE_CHECKPOINT]
    out = []
    for key in keyed[HEADLINE_CHECKPOINT]:
        found = {rule: keyed[rule].get(key) for rule in CHECKPOINT_RULES}
        verdicts = {rule: r["verdict"] if r else None for rule, r in found.items()}
        adjusted = {rule: r.get("verdict_holm") if r else None for rule, r in found.items()}
        row = {"dataset": key[0], "method (U-Net) vs baseline": key[1] + (f" ({key[2]})" if key[2] else ""),
               "n": found[HEADLINE_CHECKPOINT]["n_seeds"],
               "mIoU [95% CI] under the headline rule": _networks_cell(headline, found[HEADLINE_CHECKPOINT])}
        for rule, r in found.items():
            label = f"{rule}{' (headline)' if rule == HEADLINE_CHECKPOINT else ''}"
            row[f"{label}: Δ mIoU [95%] verdict"] = (f"{diff_cell(r, 'miou')} {r['verdict']}{holm_note(r)}" if r
                                                     else "–")
        row["across the rules"] = _across(verdicts)
        headline_row = found[HEADLINE_CHECKPOINT]
        row["across the rules, after Holm"] = (f"{_across(adjusted)} ({family_size(headline_row)})"
                                               if headline_row.get("holm_tests") else "–")
        out.append(row)
    return out


def _across(verdicts: dict) -> str:
    """The words "robust: <verdict> under every rule" where the rules' verdicts agree, else each rule's verdict."""
    if len(set(verdicts.values())) == 1:
        return f"robust: {verdicts[HEADLINE_CHECKPOINT]} under every rule"
    return "depends on the rule: " + ", ".join(f"{rule} {v or '–'}" for rule, v in verdicts.items())


def _networks_cell(rows: list[dict], method: dict) -> str:
    """The ``method`` row's U-Net, its partner's (mutual learning) and the baseline's mIoU [t-interval], those of its
    dataset and length (the runs its difference pairs; the partner of its setting too): how strong each network of
    a verdict is, the partner beside its student (e.g. a partner weaker than it)."""
    def paired(r: dict) -> bool:
        return r["dataset"] == method["dataset"] and r.get("epochs") == method.get("epochs") and bool(r.get("n_seeds"))

    use_case = method["use_case"]
    partners = [r for r in rows if paired(r) and r["use_case"] == use_case and r["network"] != PRIMARY_NETWORK
                and (r.get("setting") or "") == (method.get("setting") or "")]
    base = [r for r in rows if paired(r) and r["use_case"] == "baseline" and r["network"] == PRIMARY_NETWORK]
    parts = [f"{'student' if use_case == 'mutual' else use_case} {_ci_cell(method, 'miou')}"]
    parts += [f"partner ({NETWORK_LABELS[r['network']]}) {_ci_cell(r, 'miou')}" for r in partners]
    parts += [f"baseline {_ci_cell(r, 'miou')}" for r in base[:1]]
    return "; ".join(parts)


def by_rule_title() -> str:
    return (f"Δ mIoU of each method's U-Net against the baseline under each checkpoint rule "
            f"({'; '.join(f'{k}: {v}' for k, v in CHECKPOINT_RULES.items())}); headline rule {HEADLINE_CHECKPOINT}, "
            f"declared before the runs; {stats.PAIRED_INTERVAL_TEXT}. A verdict is robust where the three rules agree. "
            f"{HOLM_TEXT}")


def runs_provenance(found: list[dict]) -> dict:
    """What a figure or table over several runs came from: the devices they ran on (as resolved, never "auto"),
    AMP, epochs, seeds and the metrics' scoring version, each as a sorted list of the values found."""
    def values(get):
        return sorted({get(r) for r in found}, key=str)

    return dict(device=values(lambda r: r["metrics"].get("device", r["config"]["device"])),
                amp=values(lambda r: r["config"].get("amp")), epochs=values(lambda r: r["config"]["epochs"]),
                seed=values(lambda r: r["config"]["seed"]),
                scoring_version=values(lambda r: r["metrics"].get("scoring_version", 1)))


def comparison_provenance(results_dir, datasets, checkpoint: str) -> dict:
    found = [r for d in datasets for uc in USE_CASES for r in runs_for(results_dir, d, uc)]
    from mistudy.report import tuning

    return dict(datasets=[d for d in datasets if any(runs_for(results_dir, d, uc) for uc in USE_CASES)],
                **runs_provenance(found), checkpoint=checkpoint, notebook="05_comparison.ipynb",
                results_dir=str(Path(results_dir).resolve()), **tuning.source(results_dir))
