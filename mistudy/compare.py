"""Tables of the study: one run's metrics, per-class IoU, and our results beside the paper's Tables 1-3.

A run is a directory written by `mistudy.train.train` (config.json + metrics.json). The comparison reads
every run under `<results_dir>/<dataset>/<use_case>/*/metrics.json`, groups runs that differ only in their
seed, and reports mean, sample standard deviation and number of seeds of each score.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path

from mistudy.train import RUNTIME_OPTIONS
from mistudy.viz import atomic_write_text, provenance, write_provenance

DATASETS = ("synthetic", "voc", "cityscapes")
USE_CASES = ("baseline", "rmi", "mutual")
USE_CASE_TITLES = {  # the paper's names (sections 4.1-4.3)
    "baseline": "U-Net: Baseline",
    "rmi": "U-Net: Region Mutual Information Loss",
    "mutual": "Deep Mutual Learning: DeepLabV3 and U-Net",
}
METRICS = ("pixel_accuracy", "iou_micro", "miou")
CHECKPOINT_RULES = {
    "best_miou": "weights of the epoch with the highest validation mIoU (standard rule)",
    "best_loss": "weights of the epoch with the lowest training loss (the paper's rule)",
    "last": "weights after the last epoch",
}
PRIMARY_NETWORK = "unet"  # the network the paper reports (the student, for mutual)

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


# ------------------------------------------------------------------------------------------ one run

def metrics_rows(metrics: dict, network: str = PRIMARY_NETWORK) -> list[dict]:
    """Rows last / best_loss / best_miou of one network of a run's metrics.json (the notebooks' table).

    Columns: checkpoint, epoch, pixel_accuracy, iou_micro, miou, mean_class_accuracy.
    """
    nets = metrics.get("networks", {})
    if network not in nets:
        raise ValueError(f"metrics hold networks {sorted(nets)}, not {network!r}")
    rows = []
    for checkpoint in ("last", "best_loss", "best_miou"):
        m = nets[network].get(checkpoint)
        if m is None:
            continue
        rows.append({"checkpoint": checkpoint, "epoch": m["epoch"],
                     **{k: m[k] for k in (*METRICS, "mean_class_accuracy")}})
    return rows


def per_class_rows(metrics: dict, class_names: list[str] | tuple[str, ...], checkpoint: str = "best_miou",
                   networks: list[str] | None = None) -> list[dict]:
    """One row per class: {"class": name, "<network> IoU": value or None (class absent)}."""
    nets = networks or list(metrics["networks"])
    rows = [{"class": name} for name in class_names]
    for net in nets:
        ious = metrics["networks"][net][checkpoint]["iou_per_class"]
        if len(ious) != len(class_names):
            raise ValueError(f"{net} has {len(ious)} per-class IoUs but {len(class_names)} class names were given")
        for row, v in zip(rows, ious):
            row[f"{net} IoU"] = v
    return rows


# ------------------------------------------------------------------------------------ table output

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


def write_table(rows: list[dict], path: str | os.PathLike, prov: dict | None = None,
                columns: list[str] | None = None, markdown_rows: list[dict] | None = None,
                title: str | None = None) -> tuple[Path, Path]:
    """Write `<path>.csv` and `<path>.md` (atomically), each with a provenance sidecar.

    path: the file name with or without .csv/.md. markdown_rows: other (e.g. formatted) rows for the Markdown
    version; default the same rows. Returns (csv path, md path).
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".csv", ".md") else path
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    md = (f"{title}\n\n" if title else "") + markdown_table(markdown_rows or rows, None if markdown_rows else columns)
    atomic_write_text(csv_path, csv_text(rows, columns))
    atomic_write_text(md_path, md)
    info = provenance(**(prov or {}))
    write_provenance(csv_path, info)
    write_provenance(md_path, info)
    return csv_path, md_path


# --------------------------------------------------------------------------------- all runs, seeds

def find_runs(results_dir: str | os.PathLike, dataset: str, use_case: str) -> list[Path]:
    """Finished runs (directories holding metrics.json) under <results_dir>/<dataset>/<use_case>/, sorted."""
    base = Path(results_dir) / dataset / use_case
    return sorted(p.parent for p in base.glob("*/metrics.json"))


def load_run(run_dir: str | os.PathLike) -> dict:
    """{"run_dir", "config", "metrics"} of a finished run; a missing or broken file raises naming it."""
    run_dir = Path(run_dir)
    out = {"run_dir": run_dir}
    for name in ("config", "metrics"):
        path = run_dir / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a finished run")
        try:
            out[name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
    return out


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation (n - 1), n); the deviation is None for a single value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    values = [float(v) for v in values]
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else None), n


def format_mean_std(mean: float | None, std: float | None, n: int, digits: int = 4) -> str:
    """'0.8123' for one run, '0.8123 ± 0.0100 (n=3)' for several, '–' for none."""
    if not n or mean is None:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def _setting_key(config: dict) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in NOT_SETTING}, sort_keys=True)


def group_by_setting(runs: list[dict]) -> list[list[dict]]:
    """Split runs into groups whose configs differ only in NOT_SETTING keys (seed, device, paths...)."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(_setting_key(run["config"]), []).append(run)
    return list(groups.values())


def _setting_label(group: list[dict], groups: list[list[dict]]) -> str:
    """The config values that tell this group from the others of its cell (empty when it is alone)."""
    if len(groups) < 2:
        return ""
    configs = [g[0]["config"] for g in groups]
    keys = sorted(k for k in configs[0] if k not in NOT_SETTING and len({json.dumps(c.get(k)) for c in configs}) > 1)
    return ", ".join(f"{k}={group[0]['config'].get(k)}" for k in keys)


def comparison_rows(results_dir: str | os.PathLike, datasets: list[str] | tuple[str, ...] = DATASETS,
                    checkpoint: str = "best_miou") -> tuple[list[dict], list[str]]:
    """Our scores per dataset x use-case x network beside the paper's, and notes on what is missing.

    Each row: dataset, use_case, network, checkpoint, setting (empty unless runs of one cell differ in more
    than the seed), epochs, n_seeds, seeds, <metric>_mean / <metric>_std for METRICS, paper_table,
    paper_iou (= the paper's mIoU), paper_accuracy. A dataset x use-case without runs keeps its paper row
    (n_seeds 0) when the paper has numbers for it, and gets a note either way. Mutual learning has a row for
    each network; the paper's numbers sit on the U-Net (student) row.
    """
    if checkpoint not in CHECKPOINT_RULES:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINT_RULES)}, got {checkpoint!r}")
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; valid: {list(DATASETS)}")
    rows, notes = [], []
    for dataset in datasets:
        missing = []
        for use_case in USE_CASES:
            paper = PAPER_RESULTS.get((use_case, dataset))
            paper_cols = {"paper_table": PAPER_TABLE_NUMBER[use_case] if paper else None,
                          "paper_iou": paper["miou"] if paper else None,
                          "paper_accuracy": paper["pixel_accuracy"] if paper else None}
            runs = [load_run(p) for p in find_runs(results_dir, dataset, use_case)]
            if not runs:
                missing.append(use_case)
                if paper:
                    rows.append({"dataset": dataset, "use_case": use_case, "network": PRIMARY_NETWORK,
                                 "checkpoint": checkpoint, "setting": "", "epochs": None, "n_seeds": 0, "seeds": "",
                                 **{f"{m}_{s}": None for m in METRICS for s in ("mean", "std")}, **paper_cols})
                continue
            groups = group_by_setting(runs)
            for group in groups:
                networks = list(group[0]["metrics"]["networks"])
                networks.sort(key=lambda n: n != PRIMARY_NETWORK)  # the paper's network first
                for network in networks:
                    scores = [r["metrics"]["networks"][network].get(checkpoint) for r in group]
                    if any(s is None for s in scores):
                        bad = [str(r["run_dir"]) for r, s in zip(group, scores) if s is None]
                        raise ValueError(f"runs {bad} have no {checkpoint!r} metrics for {network}")
                    row = {"dataset": dataset, "use_case": use_case, "network": network, "checkpoint": checkpoint,
                           "setting": _setting_label(group, groups), "epochs": group[0]["config"]["epochs"],
                           "n_seeds": len(group), "seeds": " ".join(str(r["config"]["seed"]) for r in group)}
                    for m in METRICS:
                        mean, std, _ = mean_std([s[m] for s in scores])
                        row[f"{m}_mean"], row[f"{m}_std"] = mean, std
                    primary = network == PRIMARY_NETWORK
                    rows.append({**row, **(paper_cols if primary else dict.fromkeys(paper_cols))})
        if len(missing) == len(USE_CASES):
            notes.append(f"{dataset}: no finished runs under {Path(results_dir) / dataset} "
                         f"(run `python -m mistudy study --dataset {dataset}"
                         f"{'' if dataset == 'synthetic' else ' --data-root DIR'}`)")
        elif missing:
            notes.append(f"{dataset}: no finished runs of {', '.join(missing)}")
    return rows, notes


def format_comparison(rows: list[dict]) -> list[dict]:
    """The comparison rows as printable cells: 'mean ± std (n=k)' per metric, paper numbers to 4 digits."""
    out = []
    for r in rows:
        net = r["network"] + (" (student)" if r["use_case"] == "mutual" and r["network"] == PRIMARY_NETWORK
                              else " (teacher)" if r["use_case"] == "mutual" else "")
        cell = {"dataset": r["dataset"], "use-case": r["use_case"], "network": net}
        if any(row["setting"] for row in rows):
            cell["setting"] = r["setting"]
        cell |= {"epochs": r["epochs"], "seeds": r["n_seeds"],
                 "pixel accuracy": format_mean_std(r["pixel_accuracy_mean"], r["pixel_accuracy_std"], r["n_seeds"]),
                 "micro IoU": format_mean_std(r["iou_micro_mean"], r["iou_micro_std"], r["n_seeds"]),
                 "mIoU": format_mean_std(r["miou_mean"], r["miou_std"], r["n_seeds"]),
                 "paper IoU (mIoU)": r["paper_iou"], "paper accuracy": r["paper_accuracy"],
                 "paper table": r["paper_table"]}
        out.append(cell)
    return out


def write_comparison(rows: list[dict], path: str | os.PathLike, prov: dict | None = None,
                     checkpoint: str = "best_miou") -> tuple[Path, Path]:
    """figures/comparison_table.{csv,md}: CSV with numeric columns, Markdown with formatted cells."""
    title = (f"Our results beside the paper's Tables 1-3. Checkpoint: {checkpoint} = {CHECKPOINT_RULES[checkpoint]}. "
             "Mean ± sample standard deviation over seeds (n) where several seeds exist; the paper reports single "
             "runs. The paper's IoU is the standard mean IoU over classes; micro IoU = acc / (2 - acc).")
    return write_table(rows, path, {"checkpoint": checkpoint, **(prov or {})}, markdown_rows=format_comparison(rows),
                       title=title)


def mean_per_class_iou(runs: list[dict], network: str, checkpoint: str = "best_miou") -> list[float | None]:
    """Per-class IoU averaged over runs (seeds); a class absent from every run stays None."""
    per_run = [r["metrics"]["networks"][network][checkpoint]["iou_per_class"] for r in runs]
    if len({len(p) for p in per_run}) != 1:
        raise ValueError("runs have different numbers of classes")
    out = []
    for values in zip(*per_run):
        present = [v for v in values if v is not None]
        out.append(statistics.fmean(present) if present else None)
    return out


def runs_for(results_dir: str | os.PathLike, dataset: str, use_case: str) -> list[dict]:
    """The finished runs of one dataset x use-case for figures: the setting with the most seeds, lowest seed first.

    Empty when there are none. (The table keeps every setting; a figure shows one.)
    """
    runs = [load_run(p) for p in find_runs(results_dir, dataset, use_case)]
    if not runs:
        return []
    group = max(group_by_setting(runs), key=len)  # max keeps the first of equally large groups
    return sorted(group, key=lambda r: r["config"]["seed"])
