"""The comparison's figures (notebook 05): per-class IoU, reliability diagrams and predictions of every use-case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mistudy import data
from mistudy.report import viz
from mistudy.report.comparison import CHECKPOINT_RULES, NETWORK_LABELS, networks_in_order, runs_for
from mistudy.training.config import USE_CASES
from mistudy.training.inference import predict_samples


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
    diagrams = {}
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        for net in networks_in_order(group[0]["metrics"]["networks"]) if group else []:
            found = [r["metrics"]["networks"][net].get(checkpoint, {}).get("reliability") for r in group]
            reading = group[0]["metrics"]["networks"][net].get(checkpoint, {}).get("probabilities", "softmax")
            if all(found):
                label = (uc if uc != "mutual" else f"mutual {NETWORK_LABELS[net]}") + \
                    (" (its sigmoids)" if reading == "sigmoid" else "")
                diagrams[f"{label} (n={len(group)})"] = pool_reliability(found)
    if not diagrams:
        return None
    fig = viz.plot_reliability(diagrams, title=f"Calibration on {dataset} ({checkpoint} weights, pooled over seeds; "
                                               "each network's own probabilities: the predicted class's)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_reliability.png", {**prov, "dataset": dataset})
    return fig


def comparison_per_class(results_dir, dataset: str, checkpoint: str, figures_dir, prov: dict):
    """Grouped bars of the per-class IoU of every use-case (mean over seeds); None when the dataset has no runs."""
    per_class = {}
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        for net in networks_in_order(group[0]["metrics"]["networks"]) if group else []:
            label = uc if uc != "mutual" else f"mutual {NETWORK_LABELS[net]}"
            per_seed = [r["metrics"]["networks"][net][checkpoint]["iou_per_class"] for r in group]
            per_class[f"{label} (n={len(group)})"] = [list(c) for c in zip(*per_seed)]
    if not per_class:
        return None
    fig = viz.plot_per_class_iou(per_class, data.dataset_info(dataset).class_names,
                                 title=f"Per-class IoU on {dataset} ({checkpoint} weights; bar: mean over the seeds, "
                                       "dots: each seed)",
                                 absent_label=f"class absent from this {'level' if dataset == 'synthetic' else 'split'}"
                                              " (no IoU, not 0)")
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_per_class_iou.png", {**prov, "dataset": dataset})
    return fig


def comparison_predictions(results_dir, dataset: str, checkpoint: str, figures_dir, prov: dict,
                           num_examples: int = 4, device: str = "cpu"):
    """The same validation images through every use-case (lowest seed of each); None when there are no runs.
    Runs validated on other images than the first use-case's are left out, with a printed note."""
    columns, reference = {}, None
    for uc in USE_CASES:
        group = runs_for(results_dir, dataset, uc)
        if not group:
            continue
        run = group[0]
        seed = run["config"]["seed"]
        samples = predict_samples(run["run_dir"], range(min(num_examples, run["metrics"]["val_samples"])),
                                         checkpoint, device=device)
        if reference is None:
            reference = samples
        elif len(samples["targets"]) != len(reference["targets"]) or not all(
                np.array_equal(a, b) for a, b in zip(samples["targets"], reference["targets"])):
            print(f"note: {dataset} {uc} ({run['run_dir']}) was validated on other images; left out of the figure")
            continue
        for net in networks_in_order(samples["predictions"]):
            label = {"baseline": "baseline U-Net", "rmi": "RMI U-Net"}.get(uc, f"mutual {NETWORK_LABELS[net]}") + \
                f", seed {seed}"
            columns[label] = samples["predictions"][net]
    if reference is None:
        return None
    fig = viz.plot_predictions(reference["images"], reference["targets"], columns, dataset,
                               title=viz.wrap_title(f"The three use-cases on the same {dataset} validation images "
                                                    f"(each the lowest seed's run, {checkpoint} checkpoint: "
                                                    f"{CHECKPOINT_RULES.get(checkpoint, checkpoint)})", 110))
    viz.save_figure(fig, Path(figures_dir) / f"{dataset}_05_predictions.png", {**prov, "dataset": dataset})
    return fig
