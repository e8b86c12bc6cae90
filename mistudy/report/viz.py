"""Figures written by the study: every file gets a provenance sidecar.

- Files: `save_figure` (PNG + provenance sidecar, through `mistudy.io.atomic`).
- Figures (pyplot, returned for the notebook to show and save): `plot_training_curves`, `plot_history_terms` (chosen
  history columns, one panel each: a loss's terms, both networks of mutual learning), `plot_predictions`
  (images, ground truth and predicted masks with a class legend, like the paper's Figures 4-9), `plot_per_class_iou`,
  `plot_learning_curves`, `plot_reliability`, `plot_effects` (forest plot); helpers `class_legend_handles`,
  `wrap_title`.  The predictions they draw come from `mistudy.training.inference.predict_samples`.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from mistudy.data import IGNORE_COLOR, IGNORE_INDEX, colorize_mask, dataset_info
from mistudy.io.atomic import atomic_path
from mistudy.io.provenance import provenance, write_provenance


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike, prov: dict | None = None,
                dpi: int = 150) -> Path:
    """Save ``fig`` as PNG at ``path`` (atomically) with a provenance sidecar; returns the path.  A figure whose
    image is unchanged is left as it is, its provenance too (only its date would change)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; got file name {path.name!r}")
    before = path.read_bytes() if path.is_file() else None
    with atomic_path(path, suffix=".png", keep_if_same=True) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    write_provenance(path, provenance(**(prov or {})), content_changed=before is None or path.read_bytes() != before)
    return path


# ------------------------------------------------------------------------------------------ figures

def _pyplot():
    import matplotlib.pyplot as plt  # imported late: the backend is chosen by the caller (notebook or Agg)

    return plt


def _split_key(key: str) -> tuple[str, str, str] | None:
    """'unet/val_miou' -> ('unet', 'val', 'miou'); other history columns -> None."""
    if "/" not in key:
        return None
    network, rest = key.split("/", 1)
    kind, _, metric = rest.partition("_")
    return (network, kind, metric) if kind in ("train", "val", "select") and metric else None


def plot_training_curves(history: list[dict], title: str = "") -> matplotlib.figure.Figure:
    """Training losses, validation mIoU / micro IoU (and selection-split mIoU) and validation pixel accuracy per epoch.

    history: rows of `mistudy.training.runs.load_history` ({"epoch", "<net>/train_<part>", "<net>/val_<metric>",
    "<net>/select_<metric>", ...}); one line per network (and loss part: the total loss solid, its parts dashed /
    dotted).
    """
    if not history:
        raise ValueError("history is empty: the run has not finished an epoch")
    plt = _pyplot()
    fig, (ax_loss, ax_iou, ax_acc) = plt.subplots(1, 3, figsize=(14, 3.8))
    keys = list(dict.fromkeys(k for row in history for k in row))
    networks = list(dict.fromkeys(s[0] for s in map(_split_key, keys) if s))
    # loss parts per network (rmi: bce and rmi; mutual: ce and kl); a single part (baseline: ce) equals the total:
    # draw the total only
    train_keys = [s for s in map(_split_key, keys) if s and s[1] == "train" and s[2] != "loss"]
    parts = {n: [metric for net, _, metric in train_keys if net == n] for n in networks}
    colors = dict(zip(networks, plt.rcParams["axes.prop_cycle"].by_key()["color"]))

    def series(key):
        pts = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key in keys:
        split = _split_key(key)
        if not split:
            continue
        network, kind, metric = split
        x, y = series(key)
        style = dict(color=colors[network], marker="o", markersize=3)
        if kind == "train":
            if metric != "loss" and len(parts[network]) < 2:
                continue
            linestyle = "-" if metric == "loss" else ("--", ":", "-.")[parts[network].index(metric) % 3]
            ax_loss.plot(x, y, linestyle=linestyle, label=f"{network} {metric}", **style)
        elif metric == "miou":
            dashed = kind == "select"
            ax_iou.plot(x, y, linestyle="--" if dashed else "-",
                        label=f"{network} mIoU ({'selection split' if dashed else 'validation'})", **style)
        elif kind == "select":
            continue
        elif metric == "iou_micro":
            ax_iou.plot(x, y, linestyle=":", label=f"{network} micro IoU", **style)
        elif metric == "pixel_accuracy":
            ax_acc.plot(x, y, label=f"{network}", **style)
    for ax, name in ((ax_loss, "training loss"), (ax_iou, "IoU"), (ax_acc, "validation pixel accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in (ax_iou, ax_acc):
        ax.set_ylim(0, 1)
    negative = sorted({m for n, kind, m in filter(None, map(_split_key, keys)) if kind == "train"
                       and any(v < 0 for v in series(f"{n}/train_{m}")[1])})
    if negative:  # RMI's term (and a loss containing it) is a bound on minus the mutual information, not a distance
        ax_loss.axhline(0, color="0.3", linewidth=0.8)
        ax_loss.set_xlabel("epoch\n" + wrap_title(f"below 0 ({', '.join(negative)}): RMI's term is minus a lower "
                                                  "bound on the mutual information between labels and prediction (up "
                                                  "to a constant), so it can be negative; lower is better", 60),
                           fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history_terms(history: list[dict], panels: dict[str, str], networks, labels: dict[str, str] | None = None,
                       references: dict[str, list[tuple[float, str]]] | None = None,
                       title: str = "") -> matplotlib.figure.Figure:
    """Chosen history columns per epoch, one panel each, one line per network (epochs without a value skipped).

    panels: {column suffix: panel title}, e.g. {"train_bce": "BCE term", "train_rmi": "RMI term"}: the panel draws
    "<network>/<suffix>" of every network that has it; labels: {network: legend label}; references: {suffix:
    [(y, label), ...]} horizontal dashed lines (e.g. a term's floor).  A panel no network has a value for says so.
    """
    if not history:
        raise ValueError("history is empty: the run has not finished an epoch")
    if not panels:
        raise ValueError("no panels asked for")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    colors = dict(zip(networks, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, (suffix, panel) in zip(axes[0], panels.items()):
        for network in networks:
            pts = [(row["epoch"], row[f"{network}/{suffix}"]) for row in history
                   if row.get(f"{network}/{suffix}") is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, color=colors[network],
                        label=(labels or {}).get(network, network))
        for y, label in (references or {}).get(suffix, []):
            ax.axhline(y, color="0.4", linestyle="--", linewidth=1, label=label)
        if not ax.lines:
            ax.text(0.5, 0.5, "not in this run's history", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(wrap_title(title, 50 * len(panels)))
    fig.tight_layout()
    return fig


def class_legend_handles(dataset: str, class_ids=None, include_ignore: bool = False) -> list:
    """Colour patches with class names for a legend (all classes, or `class_ids`), plus 'ignore' if asked."""
    info = dataset_info(dataset)
    ids = range(info.num_classes) if class_ids is None else sorted(int(i) for i in class_ids)
    handles = [Patch(facecolor=info.palette[i] / 255.0, edgecolor="0.5", label=info.class_names[i]) for i in ids]
    if include_ignore:
        handles.append(Patch(facecolor=tuple(c / 255.0 for c in IGNORE_COLOR), edgecolor="0.5", label="ignored (255)"))
    return handles


def plot_predictions(images, targets, predictions: dict[str, list], dataset: str,
                     title: str = "") -> matplotlib.figure.Figure:
    """Images, ground truth and each method's predicted masks side by side (the paper's Figures 4-9).

    images: N display images [H, W, 3] in [0, 1] (see `display_image`); targets: N masks [H, W] of class ids
    (255 = ignored); predictions: {column title: N masks [H, W]}. The legend names the classes that appear.
    """
    n = len(images)
    if n == 0 or len(targets) != n or any(len(p) != n for p in predictions.values()):
        raise ValueError(f"need the same number (>0) of images, targets and predictions per method, got {n}, "
                         f"{len(targets)}, {[len(p) for p in predictions.values()]}")
    plt = _pyplot()
    columns = ["image", "ground truth", *predictions]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.3 * len(columns), 2.3 * n + 0.8), squeeze=False)
    present = set()
    for i in range(n):
        masks = [np.asarray(targets[i])] + [np.asarray(p[i]) for p in predictions.values()]
        for m in masks:
            present |= set(np.unique(m).tolist())
        panels = [images[i]] + [colorize_mask(m, dataset) for m in masks]
        for ax, panel in zip(axes[i], panels):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, m in zip(axes[i][2:], masks[1:]):  # a one-colour prediction is a finding, not a broken figure
            labelled = m[np.asarray(targets[i]) != IGNORE_INDEX]
            if labelled.size and (labelled == labelled.flat[0]).all():
                name = dataset_info(dataset).class_names[int(labelled.flat[0])]
                ax.set_xlabel(f"{name} everywhere", fontsize=8, color="tab:red")
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize=9)
    ignored = IGNORE_INDEX in present
    handles = class_legend_handles(dataset, present - {IGNORE_INDEX}, include_ignore=ignored)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    # below the panels; saved and displayed with bbox_inches="tight", so it stays in the picture
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 7),
               fontsize=8, frameon=False)
    return fig


def plot_per_class_iou(per_class: dict[str, list], class_names, title: str = "",
                       absent_label: str = "class absent (no IoU)") -> matplotlib.figure.Figure:
    """Grouped bars: per-class IoU of each method.  per_class: {label: [IoU or None per class]} (one run) or
    {label: [[IoU or None per seed] per class]} (several seeds: the bar is the mean over the seeds where the class
    is present, each seed a dot, the range a line).  A class absent from the truth and the predictions has no IoU: a
    hatched box marks it, never a bar of 0; a present class scored 0 shows a dark tick at 0."""
    labels = list(per_class)
    for label, values in per_class.items():
        if len(values) != len(class_names):
            raise ValueError(f"{label}: {len(values)} IoUs for {len(class_names)} classes")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.3 * len(class_names) * len(labels) + 2) + 3), 4.2))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(class_names))
    any_absent = any_zero = any_spread = False
    for k, label in enumerate(labels):
        seeds = [v if isinstance(v, (list, tuple)) else [v] for v in per_class[label]]
        present = [[float(s) for s in c if s is not None] for c in seeds]
        mean = np.array([np.mean(c) if c else np.nan for c in present])
        offset = x + (k - (len(labels) - 1) / 2) * width
        bars = ax.bar(offset, np.nan_to_num(mean), width, label=label)
        colour = bars.patches[0].get_facecolor() if bars.patches else None
        for xi, c in zip(offset, present):
            if len(c) > 1:
                any_spread = True
                ax.plot([xi, xi], [min(c), max(c)], color="0.15", linewidth=1)
                ax.plot(np.full(len(c), xi), c, "o", color="0.15", markersize=2.5)
        absent = np.isnan(mean)
        for xi in offset[absent]:  # no IoU at all: a hatched box, so it is not read as 0
            ax.bar(xi, 1.0, width, bottom=0, fill=False, edgecolor="0.6", hatch="///", linewidth=0)
        any_absent |= bool(absent.any())
        zero = ~absent & (np.nan_to_num(mean) == 0)
        if zero.any():
            any_zero = True
            ax.plot(offset[zero], np.zeros(zero.sum()), "_", color=colour, markersize=12, markeredgewidth=3)
    handles, _ = ax.get_legend_handles_labels()
    if any_spread:
        handles.append(Line2D([], [], color="0.15", marker="o", markersize=2.5, linewidth=1,
                              label="each seed (line: their range)"))
    if any_absent:
        handles.append(Patch(facecolor="none", edgecolor="0.6", hatch="///", label=absent_label))
    if any_zero:
        handles.append(Line2D([], [], color="0.3", marker="_", markersize=12, markeredgewidth=3, linewidth=0,
                              label="IoU 0 (present, never found)"))
    slanted = len(class_names) > 8  # long lists of names need slanted labels
    ax.set_xticks(x, class_names, rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_ylim(-0.03, 1)  # room for the tick of an IoU of 0
    ax.set_ylabel("IoU")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if title:
        ax.set_title(wrap_title(title, 90))
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: dict[str, list[list[dict]]], metric: str = "unet/val_miou", title: str = "",
                         band: str = "range") -> matplotlib.figure.Figure:
    """One line per setting (e.g. synthetic level): the mean over seeds of ``metric`` per epoch, with the range of
    the seeds shaded.  curves: {label: [history of seed 0, history of seed 1, ...]}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, histories in curves.items():
        epochs = sorted({row["epoch"] for h in histories for row in h if row.get(metric) is not None})
        values = np.array([[next(r[metric] for r in h if r["epoch"] == e) for e in epochs] for h in histories])
        mean = values.mean(axis=0)
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{label} (n={len(histories)})")
        ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    split, _, score = metric.split("/")[-1].partition("_")
    ax.set_ylabel(f"{ {'val': 'validation', 'select': 'selection split'}.get(split, split)} "
                  f"{ {'miou': 'mIoU', 'pixel_accuracy': 'pixel accuracy'}.get(score, score)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(wrap_title(title, 70), fontsize=10)
    fig.tight_layout()
    return fig


def plot_reliability(diagrams: dict[str, dict], title: str = "") -> matplotlib.figure.Figure:
    """Reliability diagrams: accuracy against mean confidence per confidence bin, one line per label, the
    diagonal (perfect calibration) dashed.  diagrams: {label: {"confidence", "accuracy", "count": per bin, "ece"}}
    (`SegmentationMetrics.compute()["reliability"]` with its "ece"); empty bins (None) are skipped."""
    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1)
    for label, d in diagrams.items():
        pts = [(c, a, n) for c, a, n in zip(d["confidence"], d["accuracy"], d["count"]) if c is not None and n]
        if not pts:
            continue
        conf, acc, count = map(np.array, zip(*pts))
        ece = f", ECE {d['ece']:.3f}" if d.get("ece") is not None else ""
        line, = ax.plot(conf, acc, marker="o", markersize=3, label=f"{label}{ece}")
        ax_count.plot(conf, count / count.sum(), marker="o", markersize=3, color=line.get_color(), label=label)
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="reliability")
    ax_count.set(xlabel="confidence", ylabel="share of labelled pixels", xlim=(0, 1), title="confidence histogram")
    for a in (ax, ax_count):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}


def plot_effects(rows: list[dict], keys: dict[str, str], title: str = "", verdicts: dict[str, list] | None = None,
                 references: dict[str, list] | None = None, xlabel: str = "Δ (95% interval)"
                 ) -> matplotlib.figure.Figure:
    """Forest plot: one panel per key of ``keys`` ({row key: panel title}), one row per setting, the estimate with
    its interval as a horizontal bar, zero dashed, one x-scale for every panel, the legend beside.  rows: dicts with
    "setting" and `mistudy.methods.stats.Interval` values (None: not applicable).  verdicts: {key: [verdict per row]},
    the verdict the table reads (e.g. Holm-adjusted): "better"/"worse" colour the row, anything else is grey, and
    a hollow marker says the interval alone excludes 0 where that verdict does not; without it, the interval's own.
    references: {key: [what the row is compared with, per row]}, written above each bar; a row without a bar in a
    panel whose other rows are compared with it says "reference" there."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys) + 2.6, 0.55 * len(rows) + 1.8), sharey=True,
                             sharex=True, squeeze=False)
    y = np.arange(len(rows))[::-1]
    for ax, (key, panel) in zip(axes[0], keys.items()):
        compared_with = set((references or {}).get(key) or [])
        for i, (yi, row) in enumerate(zip(y, rows)):
            d = row.get(key)
            if d is None:
                if row["setting"] in compared_with:
                    ax.annotate("reference", (0.5, yi), xycoords=("axes fraction", "data"), ha="center",
                                va="center", fontsize=8, color="0.35", style="italic")
                continue
            interval = not np.isnan(d.low)
            raw = "better" if interval and d.low > 0 else "worse" if interval and d.high < 0 else None
            verdict = (verdicts or {}).get(key, [None] * len(rows))[i] if verdicts and key in verdicts else raw
            colour = VERDICT_COLOURS.get(verdict, "0.5")
            hollow = raw is not None and verdict != raw
            if interval:
                ax.plot([d.low, d.high], [yi, yi], color=colour, linewidth=2)
            ax.plot([d.estimate], [yi], "o", color=colour, markersize=6, markerfacecolor="white" if hollow else colour)
            ref = (references or {}).get(key)
            if ref and ref[i]:
                ax.annotate(f"vs {ref[i]}", (0, yi), xycoords=("axes fraction", "data"), xytext=(3, 4),
                            textcoords="offset points", fontsize=7, color="0.35", va="bottom")
        ax.axvline(0, color="0.3", linestyle="--", linewidth=1)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [r["setting"] for r in rows])
    axes[0][0].set_ylim(-0.6, len(rows) - 0.2)
    what = "after Holm's adjustment (the table's verdict)" if verdicts else "the interval on its own"
    legend = [Line2D([], [], color=c, marker="o", linewidth=2, label=t) for c, t in
              (("tab:green", f"better, {what}"), ("tab:red", f"worse, {what}"),
               ("0.5", f"no detectable difference, {what}"))]
    if verdicts:
        legend.append(Line2D([], [], color="0.5", marker="o", markerfacecolor="white", linewidth=2,
                             label="hollow: the interval alone\nexcludes 0, not after Holm"))
    fig.legend(handles=legend, loc="center left", fontsize=8, frameon=False, bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(wrap_title(title, 45 * len(keys)), fontsize=11)
    fig.tight_layout()
    return fig


def wrap_title(title: str, width: int = 70) -> str:
    """A long title over several lines (matplotlib does not wrap titles to the figure)."""
    return "\n".join(textwrap.wrap(title, width)) if len(title) > width else title
