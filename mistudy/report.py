"""Tables and reports of the study: one run's metrics, the comparison with the paper, and the notebooks' helpers.

* Tables: `markdown_table`, `csv_text`, `write_table` (CSV + Markdown + provenance, atomically).
* One run: `metrics_rows`, `per_class_rows`; `UseCaseReport` does a use-case notebook's (02-04) work in a few calls.
* All runs: `comparison` reads every finished run under ``<results>/<dataset>/<use-case>/*/``, groups runs that
  differ only in their seed, and reports per method the mean over seeds with a t-interval and, against the
  baseline trained with the same seeds and scored on the same images, the paired difference of every score with
  an interval over seeds widened by the image-sampling variance (`mistudy.stats`) and a verdict worded from it.
  `protocol_text` names every protocol choice the numbers depend on.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from mistudy import atomic, data, runs, stats
from mistudy.metrics import (boundary_tolerance_text, ece_from_calibration, information_from_confmat,
                             mean_entropy_from_sums, miou_from_confmat)
from mistudy.config import CHECKPOINT_RULES, PRIMARY_NETWORK, RUNTIME_OPTIONS, USE_CASES

DATASETS = ("synthetic", "voc", "cityscapes")
USE_CASE_TITLES = {  # the paper's names of the use-cases (sections 4.1-4.3)
    "baseline": "U-Net: Baseline",
    "rmi": "U-Net: Region Mutual Information Loss",
    "mutual": "Deep Mutual Learning: DeepLabV3 and U-Net",
}
NETWORK_LABELS = {"unet": "U-Net", "deeplabv3": "DeepLabV3", "unet_peer": "U-Net peer"}
METRICS = ("pixel_accuracy", "iou_micro", "miou")
# Scores beyond the paper's, each with the direction that counts as better (None: neither, e.g. entropy).
EXTRA_METRICS = {"boundary_f": "higher", "ece": "lower", "mean_entropy_bits": None,
                 "mutual_information_bits": "higher", "normalized_mutual_information": "higher"}
EXTRA_LABELS = {"boundary_f": "boundary F", "ece": "ECE", "mean_entropy_bits": "mean entropy (bits)",
                "mutual_information_bits": "I(Y;Ŷ) (bits)", "normalized_mutual_information": "NMI"}

# The paper's Tables 1-3 (U-Net; single runs). Its "IoU" column is the standard mean IoU over classes, which
# the authors' code computed; the micro IoU its text defines would be acc / (2 - acc), e.g. 0.885 for 0.9388.
PAPER_TABLE_NUMBER = {"baseline": 1, "rmi": 2, "mutual": 3}
PAPER_RESULTS = {
    ("baseline", "cityscapes"): {"miou": 0.5931, "pixel_accuracy": 0.9388},
    ("baseline", "voc"): {"miou": 0.1965, "pixel_accuracy": 0.7367},
    ("rmi", "cityscapes"): {"miou": 0.5244, "pixel_accuracy": 0.9345},
    ("rmi", "voc"): {"miou": 0.0607, "pixel_accuracy": 0.6893},
    ("mutual", "cityscapes"): {"miou": 0.5619, "pixel_accuracy": 0.9342},
    ("mutual", "voc"): {"miou": 0.2203, "pixel_accuracy": 0.7539},
}

# Config keys that do not change what a run measures: runs differing only here are seeds of one setting.
NOT_SETTING = RUNTIME_OPTIONS | {"seed", "run_name", "run_dir", "results_dir", "resume", "eval_every"}
# Keys that must agree for a method's run to be compared with a baseline run of the same seed: the data, the
# evaluation and the training length (the optimiser may differ: the paper's use-cases have their own).
PAIRING_KEYS = ("dataset", "synthetic_level", "data_seed", "resize_size", "crop_size", "square_resize", "normalize",
                "train_samples", "val_samples", "select_fraction", "eval_protocol", "eval_passes", "epochs")


# ------------------------------------------------------------------------------------------------ tables

def _cell(v, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, floatfmt) if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table; None/NaN cells print as an en dash."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV with a header; None cells are empty, floats keep full precision."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows])
    return buf.getvalue()


def write_table(rows: list[dict], path, prov: dict | None = None, columns: list[str] | None = None,
                markdown_rows: list[dict] | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write ``<path>.csv`` and ``<path>.md`` (atomically), each with a provenance sidecar.

    path: the file name with or without .csv/.md.  markdown_rows: other (e.g. formatted) rows for the Markdown
    version; default the same rows.  Returns (csv path, md path).
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".csv", ".md") else path
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    md = (f"{title}\n\n" if title else "") + markdown_table(markdown_rows or rows, None if markdown_rows else columns)
    atomic.write_text(csv_path, csv_text(rows, columns))
    atomic.write_text(md_path, md)
    info = runs.provenance(**(prov or {}))
    runs.write_provenance(csv_path, info)
    runs.write_provenance(md_path, info)
    return csv_path, md_path


# -------------------------------------------------------------------------------------------------- one run

def metrics_rows(metrics: dict, network: str = PRIMARY_NETWORK) -> list[dict]:
    """Rows last / best_loss / best_miou of one network of a run's metrics.json (the notebooks' table).

    Columns: checkpoint, epoch, pixel_accuracy, iou_micro, miou, mean_class_accuracy and EXTRA_METRICS.
    """
    nets = metrics.get("networks", {})
    if network not in nets:
        raise ValueError(f"metrics hold networks {sorted(nets)}, not {network!r}")
    return [{"checkpoint": rule, "epoch": nets[network][rule]["epoch"],
             **{k: nets[network][rule].get(k) for k in (*METRICS, "mean_class_accuracy", *EXTRA_METRICS)}}
            for rule in ("last", "best_loss", "best_miou") if rule in nets[network]]


def per_class_rows(metrics: dict, class_names, checkpoint: str = "best_miou",
                   networks: list[str] | None = None) -> list[dict]:
    """One row per class: {"class": name, "<network> IoU": value or None (class absent)}."""
    rows = [{"class": name} for name in class_names]
    for net in networks or list(metrics["networks"]):
        ious = metrics["networks"][net][checkpoint]["iou_per_class"]
        if len(ious) != len(class_names):
            raise ValueError(f"{net} has {len(ious)} per-class IoUs but {len(class_names)} class names were given")
        for row, v in zip(rows, ious):
            row[f"{net} IoU"] = v
    return rows


def protocol_text(config: dict, metrics: dict | None = None, checkpoint: str = "best_miou") -> str:
    """Every protocol choice the numbers of a run depend on, in one sentence."""
    c = config
    batch = c.get("batch_size") or USE_CASES[c["use_case"]]["batch_size"]
    lr = c.get("lr") or USE_CASES[c["use_case"]]["lr"]
    data_part = (f"synthetic ({c.get('synthetic_level', data.SYNTHETIC_DEFAULT_LEVEL)} level), images generated at "
                 f"{c['resize_size']}x{c['resize_size']}" if c["dataset"] == "synthetic" else
                 f"{c['dataset']}, resized to {c['resize_size']}x{c['resize_size']}" if c.get("square_resize") else
                 f"{c['dataset']}, shorter side resized to {c['resize_size']}")
    sizes = ""
    if metrics:
        sizes = (f"; {metrics['train_samples']} train / {metrics.get('select_samples', 0)} selection / "
                 f"{metrics['val_samples']} validation images")
    passes = (metrics or {}).get("eval_passes") or c.get("eval_passes") or (5 if c["eval_protocol"] == "random-crop"
                                                                           else 1)
    evaluation = {"paper": f"centre {c['crop_size']} crop", "full": "whole image at the training scale, scored at "
                  "the mask's resolution", "random-crop": f"random {c['crop_size']} crops"}[c["eval_protocol"]]
    init = "random init"
    if c.get("deeplab_weights"):
        init = f"DeepLabV3 from {Path(c['deeplab_weights']).name} (head: {c.get('deeplab_head', 'replace')})"
    amp = c.get("amp", "auto")
    schedule = c.get("lr_schedule", "constant")
    if c.get("warmup_steps"):
        schedule = (f"{c.get('warmup_mode', 'linear')} warm-up for {c['warmup_steps']} steps from "
                    f"{c.get('warmup_factor', 0.1):g}x, then {schedule}")
    method = {"baseline": "cross-entropy",
              "rmi": f"{c.get('rmi_bce_weight', 0.5):g} BCE + {1 - c.get('rmi_bce_weight', 0.5):g} RMI (radius "
                     f"{c.get('rmi_radius', 3)}, pooling {c.get('rmi_pool', 'none')}"
                     f"{'' if c.get('rmi_pool', 'none') == 'none' else ' ' + str(c.get('rmi_pool_size', 2))})",
              "mutual": f"CE + {c.get('kl_weight', 1.0):g} KL at T={c.get('kl_temperature', 1.0):g}, partner "
                        f"{c.get('mutual_partner', 'deeplabv3')}, {c.get('mutual_schedule', 'sequential')} updates"}
    return (f"{data_part}{sizes}; {c['use_case']}: {method[c['use_case']]}; training: random {c['crop_size']} crops, "
            f"batch {batch}, Adam lr {lr:g} ({schedule}), "
            f"{c['epochs']} epochs, {'ImageNet normalisation' if c.get('normalize', True) else 'no normalisation'}, "
            f"{init}, amp {amp}; evaluation: {evaluation}, {passes} pass{'es' if passes > 1 else ''}; "
            f"checkpoint {checkpoint}: {CHECKPOINT_RULES[checkpoint]}")


# ------------------------------------------------------------------------------------------------- all runs

def find_and_load(results_dir, dataset: str, use_case: str) -> list[dict]:
    return [runs.load_run(p) for p in runs.find_runs(results_dir, dataset, use_case)]


def _setting_key(config: dict) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in NOT_SETTING}, sort_keys=True)


def group_by_setting(found: list[dict]) -> list[list[dict]]:
    """Split runs into groups whose configs differ only in NOT_SETTING keys (seed, device, paths...)."""
    groups: dict[str, list[dict]] = {}
    for run in found:
        groups.setdefault(_setting_key(run["config"]), []).append(run)
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
    "mean_entropy_bits": ("entropy", None, mean_entropy_from_sums),
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
    `mistudy.stats.paired_difference` on the runs' per-image statistics.

    None when no seed is shared, the runs were scored on different images, or per-image statistics are missing.
    """
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
    try:
        return stats.paired_difference(a, b, score)
    except ValueError:  # a score undefined for some seed (e.g. no boundary anywhere)
        return None


def comparison(results_dir, datasets=DATASETS, checkpoint: str = "best_miou") -> tuple[list[dict], list[str]]:
    """Our scores per dataset x use-case x network beside the paper's, and notes on what is missing.

    Each row: dataset, use_case, network, checkpoint, setting (empty unless runs of one cell differ in more than the
    seed), epochs, n_seeds, seeds, <metric>_mean / _std / _low / _high (t-interval over seeds) for METRICS,
    miou_diff / _low / _high and verdict (paired with the baseline of the same seeds and images; the baseline
    and the mutual teacher have none), protocol, paper_table, paper_iou (the paper's mIoU), paper_accuracy.
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
                networks = sorted(group[0]["metrics"]["networks"], key=lambda n: n != PRIMARY_NETWORK)
                for network in networks:
                    rows.append(_comparison_row(group, cell_groups, network, checkpoint, baselines, paper_cols))
        if len(missing) == len(USE_CASES):
            notes.append(f"{dataset}: no finished runs under {Path(results_dir) / dataset} (run `python -m mistudy "
                         f"study --dataset {dataset}{'' if dataset == 'synthetic' else ' --data-root DIR'}`)")
        elif missing:
            notes.append(f"{dataset}: no finished runs of {', '.join(missing)}")
    return rows, notes


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
           "boundary_tolerance": boundary_tolerance_text(first["config"].get("boundary_tolerance"))}
    for m in (*METRICS, *EXTRA_METRICS):
        values = [s.get(m) for s in scores]
        if any(v is None for v in values):  # a run written before the metric existed
            continue
        ci = stats.t_interval(values)
        row |= {f"{m}_mean": ci.estimate, f"{m}_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                f"{m}_low": None if math.isnan(ci.low) else ci.low, f"{m}_high": None if math.isnan(ci.high) else ci.high}
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
    row |= {"verdict": row.pop("miou_verdict"), "protocol": protocol_text(first["config"], first["metrics"], checkpoint)}
    return {**row, **(paper_cols if network == PRIMARY_NETWORK else dict.fromkeys(paper_cols))}


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


def _diff_cell(row: dict, metric: str) -> str:
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
                cell[f"Δ {label}"] = _diff_cell(r, m)
        out.append(cell)
    return out


def format_comparison(rows: list[dict]) -> list[dict]:
    """The comparison rows as printable cells."""
    out = []
    for r in rows:
        role = " (student)" if r["use_case"] == "mutual" and r["network"] == PRIMARY_NETWORK else \
            " (teacher)" if r["use_case"] == "mutual" else ""
        cell = {"dataset": r["dataset"], "use-case": r["use_case"], "network": NETWORK_LABELS[r["network"]] + role}
        if any(row.get("setting") for row in rows):
            cell["setting"] = r.get("setting")
        diff = "–" if r.get("miou_diff") is None else \
            f"{r['miou_diff']:+.3f} [{r['miou_diff_low']:+.3f}, {r['miou_diff_high']:+.3f}]"
        cell |= {"epochs": r.get("epochs"), "n": r["n_seeds"],
                 "pixel accuracy [95% CI]": _ci_cell(r, "pixel_accuracy"), "mIoU [95% CI]": _ci_cell(r, "miou"),
                 "Δ mIoU vs baseline [95% CI]": diff, "verdict": r.get("verdict") or "–",
                 "paper mIoU": r.get("paper_iou"), "paper accuracy": r.get("paper_accuracy")}
        out.append(cell)
    return out


def comparison_title(rows: list[dict], checkpoint: str) -> str:
    protocols = list(dict.fromkeys(f"{r['dataset']}: {r['protocol']}" for r in rows if r.get("protocol")))
    return "\n".join([
        f"Our results beside the paper's Tables 1-3 (checkpoint {checkpoint}: {CHECKPOINT_RULES[checkpoint]}).",
        "mIoU and pixel accuracy: mean over seeds (n) with a 95% Student-t interval. Δ mIoU: the method's U-Net minus "
        "the baseline's, trained with the same seeds and scored on the same validation images, averaged over seeds, "
        f"with a {stats.PAIRED_INTERVAL_TEXT}; the verdict reads the interval: better / worse when it excludes 0, else "
        "no detectable difference at that n. The paper reports single runs; its IoU is the mean IoU over classes.",
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
                    f"{_tolerances(rows)}), top-label expected calibration error (15 bins), mean predictive entropy "
                    "and the mutual information between prediction and ground truth, each the mean over seeds [95% "
                    "t-interval]; Δ: the method's U-Net minus the baseline's over the same seeds and validation images "
                    f"[{stats.PAIRED_INTERVAL_TEXT}].")
    return write_table(rows, path, prov, markdown_rows=format_comparison(rows), title=comparison_title(rows, checkpoint))


BOUNDARY_F_TEXT = ("boundary F-score as Csurka et al. 2013 (per image the mean F over its classes with a boundary, "
                   "then the mean over images; void in the truth is void in the prediction)")


def _tolerances(rows: list[dict]) -> str:
    return ", ".join(dict.fromkeys(r["boundary_tolerance"] for r in rows if r.get("boundary_tolerance"))) or "–"


def summary_lines(rows: list[dict]) -> list[str]:
    """Per method and dataset: on which metric it differs from the baseline, worded from the intervals, with the
    paper's claim beside it."""
    lines = []
    for r in rows:
        if r["use_case"] == "baseline" or r["network"] != PRIMARY_NETWORK or not r.get("n_seeds"):
            continue
        paper = PAPER_RESULTS.get((r["use_case"], r["dataset"]))
        base = PAPER_RESULTS.get(("baseline", r["dataset"]))
        claim = (f" The paper: {paper['miou'] - base['miou']:+.3f} mIoU against its baseline (single runs, "
                 "no interval)." if paper and base else "")
        parts = []
        if r.get("miou_diff") is not None:
            parts.append(f"mIoU {_diff_cell(r, 'miou')} ({r['verdict']})")
        for m in EXTRA_METRICS:
            if r.get(f"{m}_diff") is not None:
                parts.append(f"{EXTRA_LABELS[m]} {_diff_cell(r, m)} ({r[f'{m}_verdict']})")
        if not parts:
            lines.append(f"{r['dataset']}, {r['use_case']}: no paired baseline runs, no difference computed.{claim}")
            continue
        lines.append(f"{r['dataset']}, {r['use_case']} vs baseline, n = {r['n_seeds']} seeds: " + "; ".join(parts)
                     + "." + claim)
    return lines


def mean_per_class_iou(group: list[dict], network: str, checkpoint: str = "best_miou") -> list[float | None]:
    """Per-class IoU averaged over runs (seeds); a class absent from every run stays None."""
    per_run = [r["metrics"]["networks"][network][checkpoint]["iou_per_class"] for r in group]
    if len({len(p) for p in per_run}) != 1:
        raise ValueError("runs have different numbers of classes")
    out = []
    for values in zip(*per_run):
        present = [v for v in values if v is not None]
        out.append(float(np.mean(present)) if present else None)
    return out


def pool_reliability(diagrams: list[dict]) -> dict:
    """Reliability diagrams of several runs (seeds) pooled bin by bin (counts added, means weighted by count), with
    the pooled ECE."""
    bins = len(diagrams[0]["count"])
    count = np.zeros(bins)
    conf_sum, acc_sum = np.zeros(bins), np.zeros(bins)
    for d in diagrams:
        n = np.array(d["count"], dtype=float)
        count += n
        conf_sum += n * np.array([c or 0.0 for c in d["confidence"]])
        acc_sum += n * np.array([a or 0.0 for a in d["accuracy"]])
    safe = np.maximum(count, 1)
    conf, acc = conf_sum / safe, acc_sum / safe
    ece = float((count * np.abs(conf - acc)).sum() / count.sum()) if count.sum() else None
    return {"confidence": [c if n else None for c, n in zip(conf.tolist(), count)],
            "accuracy": [a if n else None for a, n in zip(acc.tolist(), count)], "count": count.astype(int).tolist(),
            "ece": ece}


def comparison_reliability(results_dir, dataset: str, checkpoint: str, figures_dir, prov: dict):
    """Reliability diagrams of every use-case's networks (pooled over seeds); None without runs."""
    from mistudy import viz

    diagrams = {}
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        for net in sorted(group[0]["metrics"]["networks"], key=lambda n: n != PRIMARY_NETWORK) if group else []:
            found = [r["metrics"]["networks"][net].get(checkpoint, {}).get("reliability") for r in group]
            if all(found):
                label = uc if uc != "mutual" else f"mutual {NETWORK_LABELS[net]}"
                diagrams[f"{label} (n={len(group)})"] = pool_reliability(found)
    if not diagrams:
        return None
    fig = viz.plot_reliability(diagrams, title=f"Calibration on {dataset} ({checkpoint} weights, pooled over seeds)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_reliability.png", {**prov, "dataset": dataset})
    return fig


# ------------------------------------------------------------------------------------ the use-case notebooks

NOTEBOOK_OF = {"baseline": "02_baseline", "rmi": "03_rmi", "mutual": "04_mutual_learning"}


class UseCaseReport:
    """What a use-case notebook (02-04) shows, in a few calls: train (or load) the run, then its training curves,
    metrics table, per-class IoU and predicted masks.  Each figure and table is written to ``figures_dir`` with a
    provenance file beside it, and returned for the notebook to display."""

    def __init__(self, cfg, figures_dir, device: str | None = None):
        self.cfg, self.figures_dir = cfg, Path(figures_dir)
        self.device = device or ("cpu" if cfg.device == "auto" else cfg.device)
        self.info = data.dataset_info(cfg.dataset)
        self.title = USE_CASE_TITLES[cfg.use_case]
        self.summary: dict | None = None

    def describe(self) -> str:
        c = self.cfg
        level = f", {c.synthetic_level} level" if c.dataset == "synthetic" else ""
        return (f"{self.title}: networks {', '.join(c.networks)} on {c.dataset}{level} ({self.info.num_classes} "
                f"classes)\n{c.epochs} epochs, batch {c.resolved_batch_size}, Adam lr {c.resolved_lr:g}, crop "
                f"{c.crop_size} after resize {c.resize_size}, {c.eval_protocol} evaluation protocol "
                f"({c.resolved_eval_passes} pass{'es' if c.resolved_eval_passes > 1 else ''})\n"
                f"samples: train {c.train_samples or 'all'}, validation {c.val_samples or 'all'}, selection split "
                f"{c.select_fraction:g} of train; seed {c.seed}")

    def train(self) -> dict:
        from mistudy.train import train_or_load

        self.summary = train_or_load(self.cfg)
        self.run_dir = Path(self.summary["run_dir"])
        self.prov = dict(dataset=self.cfg.dataset, device=self.summary.get("device"), epochs=self.cfg.epochs,
                         seed=self.cfg.seed, notebook=f"{NOTEBOOK_OF[self.cfg.use_case]}.ipynb",
                         run_dir=str(self.run_dir), protocol=protocol_text(runs_config(self.run_dir), self.summary))
        self.stem = self.figures_dir / f"{self.cfg.dataset}_{NOTEBOOK_OF[self.cfg.use_case]}_{self.run_dir.name}"
        return self.summary

    def _need_run(self) -> None:
        if self.summary is None:
            raise RuntimeError("call train() first")

    def curves(self):
        from mistudy import viz

        self._need_run()
        fig = viz.plot_training_curves(runs.load_history(self.run_dir),
                                       title=f"{self.title} on {self.cfg.dataset} ({self.run_dir.name})")
        viz.save_figure(fig, f"{self.stem}_curves.png", self.prov)
        return fig

    def metrics(self) -> str:
        """Validation scores of the weights kept by the three rules, one table per network (Markdown)."""
        self._need_run()
        rules = "last epoch, lowest training loss (paper), highest selection-split mIoU"
        out = []
        for network in self.cfg.networks:
            rows = metrics_rows(self.summary, network)
            label = NETWORK_LABELS[network]
            write_table(rows, f"{self.stem}_metrics_{network}", {**self.prov, "network": network},
                        title=f"{self.title}, {label} on {self.cfg.dataset}: validation scores of the weights at the "
                              f"{rules}")
            out.append(f"{label}\n" + markdown_table(rows))
        return "\n".join(out)

    def per_class(self, checkpoint: str = "best_miou"):
        """(Markdown table, figure) of the per-class IoU of every network."""
        from mistudy import viz

        self._need_run()
        checkpoint = checkpoint if checkpoint in self.summary["networks"][PRIMARY_NETWORK] else "last"
        rows = per_class_rows(self.summary, self.info.class_names, checkpoint)
        write_table(rows, f"{self.stem}_per_class_iou", self.prov,
                    title=f"Per-class IoU ({checkpoint} weights), {self.title}, {self.cfg.dataset}")
        per_class = {NETWORK_LABELS[n]: [r[f"{n} IoU"] for r in rows] for n in self.cfg.networks}
        fig = viz.plot_per_class_iou(per_class, self.info.class_names,
                                     title=f"Per-class IoU, {self.title}, {self.cfg.dataset}")
        viz.save_figure(fig, f"{self.stem}_per_class_iou.png", self.prov)
        return markdown_table(rows), fig

    def reliability(self, checkpoint: str = "best_miou"):
        """Reliability diagram (calibration) of every network."""
        from mistudy import viz

        self._need_run()
        checkpoint = checkpoint if checkpoint in self.summary["networks"][PRIMARY_NETWORK] else "last"
        diagrams = {NETWORK_LABELS[n]: {**m[checkpoint]["reliability"], "ece": m[checkpoint]["ece"]}
                    for n, m in self.summary["networks"].items()}
        fig = viz.plot_reliability(diagrams, title=f"{self.title} on {self.cfg.dataset}: calibration ({checkpoint} "
                                                   "weights)")
        viz.save_figure(fig, f"{self.stem}_reliability.png", self.prov)
        return fig

    def predictions(self, num_examples: int = 4, checkpoint: str = "best_miou"):
        from mistudy import engine, viz

        self._need_run()
        checkpoint = checkpoint if checkpoint in self.summary["networks"][PRIMARY_NETWORK] else "last"
        samples = engine.predict_samples(self.run_dir, range(min(num_examples, self.summary["val_samples"])),
                                         checkpoint, device=self.device)
        predictions = {NETWORK_LABELS[n]: masks for n, masks in samples["predictions"].items()}
        fig = viz.plot_predictions(samples["images"], samples["targets"], predictions, self.cfg.dataset,
                                   title=f"{self.title} on {self.cfg.dataset}: predicted masks ({checkpoint} weights)")
        viz.save_figure(fig, f"{self.stem}_predictions.png", self.prov)
        return fig


# ------------------------------------------------------------------------------- the comparison notebook

def runs_provenance(found: list[dict]) -> dict:
    """What a figure or table over several runs came from: the devices they ran on (as resolved, never "auto"),
    AMP, epochs and seeds, each as a sorted list of the values found."""
    def values(get):
        return sorted({get(r) for r in found}, key=str)

    return dict(device=values(lambda r: r["metrics"].get("device", r["config"]["device"])),
                amp=values(lambda r: r["config"].get("amp")), epochs=values(lambda r: r["config"]["epochs"]),
                seed=values(lambda r: r["config"]["seed"]))


def comparison_provenance(results_dir, datasets, checkpoint: str) -> dict:
    found = [r for d in datasets for uc in USE_CASES for r in runs_for(results_dir, d, uc)]
    return dict(datasets=[d for d in datasets if any(runs_for(results_dir, d, uc) for uc in USE_CASES)],
                **runs_provenance(found), checkpoint=checkpoint, notebook="05_comparison.ipynb",
                results_dir=str(Path(results_dir).resolve()))


def comparison_per_class(results_dir, dataset: str, checkpoint: str, figures_dir, prov: dict):
    """Grouped bars of the per-class IoU of every use-case (mean over seeds); None when the dataset has no runs."""
    from mistudy import viz

    per_class = {}
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        for net in sorted(group[0]["metrics"]["networks"], key=lambda n: n != PRIMARY_NETWORK) if group else []:
            label = uc if uc != "mutual" else f"mutual {NETWORK_LABELS[net]}"
            per_class[f"{label} (n={len(group)})"] = mean_per_class_iou(group, net, checkpoint)
    if not per_class:
        return None
    fig = viz.plot_per_class_iou(per_class, data.dataset_info(dataset).class_names,
                                 title=f"Per-class IoU on {dataset} ({checkpoint} weights, mean over seeds)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_per_class_iou.png", {**prov, "dataset": dataset})
    return fig


def comparison_predictions(results_dir, dataset: str, checkpoint: str, figures_dir, prov: dict,
                           num_examples: int = 4, device: str = "cpu"):
    """The same validation images through every use-case (lowest seed of each); None when there are no runs.
    Runs validated on other images than the first use-case's are left out, with a printed note."""
    from mistudy import engine, viz

    columns, reference = {}, None
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        if not group:
            continue
        run = group[0]
        samples = engine.predict_samples(run["run_dir"], range(min(num_examples, run["metrics"]["val_samples"])),
                                         checkpoint, device=device)
        if reference is None:
            reference = samples
        elif len(samples["targets"]) != len(reference["targets"]) or not all(
                np.array_equal(a, b) for a, b in zip(samples["targets"], reference["targets"])):
            print(f"note: {dataset} {uc} ({run['run_dir']}) was validated on other images; left out of the figure")
            continue
        for net in sorted(samples["predictions"], key=lambda n: n != PRIMARY_NETWORK):
            label = {"baseline": "baseline U-Net", "rmi": "RMI U-Net"}.get(uc, f"mutual {NETWORK_LABELS[net]}")
            columns[label] = samples["predictions"][net]
    if reference is None:
        return None
    fig = viz.plot_predictions(reference["images"], reference["targets"], columns, dataset,
                               title=f"The three use-cases on the same {dataset} validation images ({checkpoint} "
                                     "weights)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_predictions.png", {**prov, "dataset": dataset})
    return fig


def runs_config(run_dir) -> dict:
    return json.loads((Path(run_dir) / "config.json").read_text())
