"""What a use-case notebook (02-04) shows, in a few calls: `UseCaseReport` trains (or reuses) the run, then draws its
training curves, metrics table, reliability diagram, per-class IoU and predicted masks, and what each method shows of
its own: its loss's terms over training (`loss_terms`: RMI's BCE and RMI terms; both networks of mutual learning and
their KL term), the RMI term's scale beside notebook 01's bound (`rmi_examples`, `rmi_term_examples`, `rmi_floor`),
the mutual-learning partner beside the student and the U-Net trained alone (`partners`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mistudy import data
from mistudy.io.tables import Table, Tables, write_table
from mistudy.methods import infotheory
from mistudy.methods.losses import rmi_loss_term
from mistudy.report import theory_plots, viz
from mistudy.report.comparison import EXTRA_METRICS, NETWORK_LABELS, USE_CASE_TITLES, protocol_text
from mistudy.training import runs
from mistudy.training.config import CHECKPOINTS, PRIMARY_NETWORK, USE_CASE_NOTEBOOKS, resolve_profile, study_config
from mistudy.training.inference import predict_samples
from mistudy.training.progress import weights_text
from mistudy.training.runs import SCORES
from mistudy.training.train import train_or_load


def metrics_rows(metrics: dict, network: str = PRIMARY_NETWORK) -> list[dict]:
    """Rows last / best_loss / best_miou of one network of a run's metrics.json (the notebooks' table).

    Columns: checkpoint, epoch, pixel_accuracy, iou_micro, miou, mean_class_accuracy and EXTRA_METRICS.
    """
    nets = metrics.get("networks", {})
    if network not in nets:
        raise ValueError(f"metrics hold networks {sorted(nets)}, not {network!r}")
    return [{"checkpoint": rule, "epoch": nets[network][rule]["epoch"],
             **{k: nets[network][rule].get(k) for k in (*SCORES, "mean_class_accuracy", *EXTRA_METRICS)}}
            for rule in reversed(CHECKPOINTS) if rule in nets[network]]


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


ROLES = {"deeplabv3": "partner", "unet_peer": "partner", "unet": "student"}  # in mutual learning
THIN_CLASSES = {"synthetic": ("ring", "bar")}  # the thin structures a structure-aware loss should help most


def rmi_term(labels: np.ndarray, probs: np.ndarray, radius: int = 3) -> float:
    """The RMI term the training loss minimises, for one class of one image (nats per dimension): labels [H, W] 0/1,
    probs [H, W] in [0, 1] (the loss's + 1e-6 added here too)."""
    as_batch = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))[None, None]  # noqa: E731
    return float(rmi_loss_term(as_batch(labels), as_batch(probs) + 1e-6, radius))


def rmi_floor(radius: int = 3) -> float:
    """The lowest value of the RMI term per class, ½ ln det(εI) / d = ½ ln ε (ε = 5e-4): what a class absent from
    an image contributes whatever is predicted (its Σ_Y and so Σ_{Y|P} are 0), and the value a perfect
    prediction approaches."""
    return rmi_term(np.zeros((radius, radius)), np.full((radius, radius), 0.5), radius)


EXAMPLE_DIGITS = 10  # significant digits of `rmi_term_examples`: torch's float64 reductions differ from the 12th on
                     # with the number of threads (a study's Ray tasks run one, the sequential executor two)


def rmi_term_examples(radius: int = 3, size: int = 48, seed: int = 0) -> list[dict]:
    """The RMI training term beside notebook 01's bound for its toy label map and predictions with more and more
    structure, and for a class absent from the image: rows {"case", "RMI term (nats/dim)", "bound (bits)"}, each
    number to EXAMPLE_DIGITS significant digits (the same on any number of threads)."""
    digits = lambda x: None if x is None else float(f"{x:.{EXAMPLE_DIGITS}g}")  # noqa: E731
    labels = theory_plots.toy_label_map(size)
    cases = {"class absent from the image (any prediction)": (np.zeros_like(labels),
                                                               theory_plots.noisy_prediction(labels, 0.0, seed)),
             "noise: knows nothing of the labels": (labels, theory_plots.noisy_prediction(labels, 0.0, seed)),
             "blurred truth, sigma = 3": (labels, theory_plots.blurred_prediction(labels, 3.0)),
             "blurred truth, sigma = 1": (labels, theory_plots.blurred_prediction(labels, 1.0)),
             "the truth itself": (labels, labels)}
    return [{"case": name, "RMI term (nats/dim)": digits(rmi_term(lab, prob, radius)),
             "bound (bits)": digits(infotheory.rmi_bound_bits(lab, prob, radius) if lab.any() else None)}
            for name, (lab, prob) in cases.items()]


class UseCaseReport:
    """What a use-case notebook (02-04) shows, in a few calls: train (or load) the run, then its training curves,
    metrics table, per-class IoU and predicted masks.  Each figure and table is written to ``figures_dir`` with a
    provenance file beside it, and returned for the notebook to display (tables display as tables in JupyterLab
    and as Markdown text headless)."""

    def __init__(self, cfg, figures_dir, device: str | None = None):
        self.cfg, self.figures_dir = cfg, Path(figures_dir)
        self.device = device or ("cpu" if cfg.device == "auto" else cfg.device)
        self.info = data.dataset_info(cfg.dataset)
        self.title = USE_CASE_TITLES[cfg.use_case]
        self.summary: dict | None = None

    @classmethod
    def for_notebook(cls, use_case: str, profile: str | None = None, config: dict | None = None, results_dir=None,
                     figures_dir=None, **fields) -> "UseCaseReport":
        """The report of a use-case notebook's parameters: the profile's settings (no profile: the dataset's default,
        `config.resolve_profile`), ``fields`` (dataset, data_root, download, device, seed, resume), then ``config``;
        runs and figures in the profile's default folders unless given."""
        profile = resolve_profile(profile, fields.get("dataset", "synthetic"))
        cfg = study_config(use_case, profile, config, results_dir=str(results_dir or runs.default_results_dir(profile)),
                           **fields)
        return cls(cfg, figures_dir or runs.default_figures_dir(profile))

    def describe(self) -> str:
        c = self.cfg
        level = f", {c.synthetic_level} level" if c.dataset == "synthetic" else ""
        return (f"{self.title}: networks {', '.join(c.networks)} on {c.dataset}{level} ({self.info.num_classes} "
                f"classes)\n{c.epochs} epochs, batch {c.resolved_batch_size}, Adam lr {c.resolved_lr:g}, crop "
                f"{c.crop_size} after resize {c.resize_size}, {c.eval_protocol} evaluation protocol "
                f"({c.resolved_eval_passes} pass{'es' if c.resolved_eval_passes > 1 else ''})\n"
                f"samples: train {c.train_samples or 'all'}, validation {c.val_samples or 'all'}, selection split "
                f"{c.select_fraction:g} of train; seed {c.seed}"
                + "".join(f"\nstarts from {part}" for part in weights_text(c)))

    def train(self) -> dict:
        """Train the run, or reuse it when finished; prints where the run and the figures go."""
        self.summary = train_or_load(self.cfg)
        self.run_dir = Path(self.summary["run_dir"])
        self.prov = dict(dataset=self.cfg.dataset, device=self.summary.get("device"), epochs=self.cfg.epochs,
                         seed=self.cfg.seed, notebook=f"{USE_CASE_NOTEBOOKS[self.cfg.use_case]}.ipynb",
                         run_dir=str(self.run_dir), protocol=protocol_text(self.summary.get("config") or
                                                                           runs.load_run(self.run_dir)["config"],
                                                                           self.summary))
        self.stem = self.figures_dir / f"{self.cfg.dataset}_{USE_CASE_NOTEBOOKS[self.cfg.use_case]}_{self.run_dir.name}"
        print(f"run directory: {self.run_dir.resolve()}\nfigures and tables: {self.figures_dir.resolve()}")
        return self.summary

    def _need_run(self) -> None:
        if self.summary is None:
            raise RuntimeError("call train() first")

    def _checkpoint(self, checkpoint: str) -> str:
        """``checkpoint`` if the run kept it; else "last", said once (best_miou needs a selection split)."""
        if checkpoint in self.summary["networks"][self.cfg.networks[-1]]:
            return checkpoint
        print(f"note: the run kept no {checkpoint} weights (no selection split): showing the last epoch's")
        return "last"

    def curves(self):
        self._need_run()
        fig = viz.plot_training_curves(runs.load_history(self.run_dir),
                                       title=f"{self.title} on {self.cfg.dataset} ({self.run_dir.name})")
        viz.save_figure(fig, f"{self.stem}_curves.png", self.prov)
        return fig

    def metrics(self) -> Tables:
        """Validation scores of the weights kept by the three rules, one table per network."""
        self._need_run()
        rules = "last epoch, lowest training loss (paper), highest selection-split mIoU"
        out = Tables()
        for network in self.cfg.networks:
            rows = metrics_rows(self.summary, network)
            label = NETWORK_LABELS[network]
            title = f"{self.title}, {label} on {self.cfg.dataset}: validation scores of the weights at the {rules}"
            write_table(rows, f"{self.stem}_metrics_{network}", {**self.prov, "network": network}, title=title)
            out.append(Table(rows, label))
        return out

    def per_class(self, checkpoint: str = "best_miou", beside_baseline: bool = False):
        """(table, figure) of the per-class IoU of every network; ``beside_baseline``: with the U-Net of the baseline
        run of the same seed beside them, when it has finished in the same results folder."""
        self._need_run()
        checkpoint = self._checkpoint(checkpoint)
        rows = per_class_rows(self.summary, self.info.class_names, checkpoint)
        per_class = {self._label(n): [r[f"{n} IoU"] for r in rows] for n in self.cfg.networks}
        base_dir, base = self._baseline_metrics() if beside_baseline else (None, None)
        if base is not None and checkpoint in base["networks"].get(PRIMARY_NETWORK, {}):
            column = f"baseline {PRIMARY_NETWORK} IoU"
            for row, v in zip(rows, base["networks"][PRIMARY_NETWORK][checkpoint]["iou_per_class"]):
                row[column] = v
            if len(self.cfg.networks) == 1:  # "U-Net" twice: name the use-cases
                per_class = {f"{label}, {self.cfg.use_case}": v for label, v in per_class.items()}
            per_class[f"{NETWORK_LABELS[PRIMARY_NETWORK]}, baseline"] = [r[column] for r in rows]
        elif beside_baseline:
            print(f"(no finished baseline run in {base_dir} to set beside this one)")
        title = f"Per-class IoU ({checkpoint} weights), {self.title}, {self.cfg.dataset}"
        write_table(rows, f"{self.stem}_per_class_iou", self.prov, title=title)
        fig = viz.plot_per_class_iou(per_class, self.info.class_names,
                                     title=f"Per-class IoU, {self.title}, {self.cfg.dataset}")
        viz.save_figure(fig, f"{self.stem}_per_class_iou.png", self.prov)
        return Table(rows, title), fig

    def loss_terms(self):
        """The method's own curves per epoch, one panel per history column: rmi: the total loss, its per-pixel term
        (BCE, or CE with rmi_base="ce") and its RMI term, zero dashed; mutual: both networks' validation mIoU,
        cross-entropy and KL term; baseline: its loss and validation mIoU."""
        self._need_run()
        zero = [(0.0, "0")]
        if self.cfg.use_case == "rmi":
            lam, base = self.cfg.rmi_bce_weight, self.cfg.rmi_base.upper()
            panels = {"train_loss": f"total: {lam:g}·{base} + {1 - lam:g}·RMI",
                      f"train_{self.cfg.rmi_base}": f"{base} term",
                      "train_rmi": r"RMI term: $\sum_c\ \frac{1}{2d}\ \ln\det(\Sigma_{Y|P}+\varepsilon I)$"}
            refs, what = {"train_loss": zero, "train_rmi": zero}, "the loss and its terms"
        elif self.cfg.use_case == "mutual":
            panels = {"val_miou": "validation mIoU", "train_ce": "cross-entropy",
                      "train_kl": "KL(p_other ‖ p_self), towards the other network"}
            refs, what = {}, "both networks"
        else:
            panels, refs, what = {"train_loss": "training loss", "val_miou": "validation mIoU"}, {}, "the loss"
        labels = {n: self._label(n) for n in self.cfg.networks}
        fig = viz.plot_history_terms(runs.load_history(self.run_dir), panels, self.cfg.networks, labels, refs,
                                     title=f"{self.title} on {self.cfg.dataset} ({self.run_dir.name}): {what} per "
                                           f"epoch (losses: means over the training images, nats)")
        viz.save_figure(fig, f"{self.stem}_loss_terms.png", self.prov)
        return fig

    def rmi_examples(self) -> Table:
        """The RMI term beside notebook 01's bound for toy predictions (`rmi_term_examples`), at this run's radius."""
        self._need_run()
        rows = rmi_term_examples(self.cfg.rmi_radius, seed=self.cfg.seed)
        title = (f"The RMI term of one class (radius {self.cfg.rmi_radius}; floor ½ ln ε = "
                 f"{rmi_floor(self.cfg.rmi_radius):.2f} nats) beside notebook 01's bound, on notebook 01's toy map")
        write_table(rows, f"{self.stem}_rmi_examples", self.prov, title=title)
        return Table(rows, title, floatfmt=".2f")

    def partners(self, checkpoint: str = "best_miou") -> Table:
        """Mutual learning: each network's validation scores side by side (the partner's strength beside the
        student's), and the U-Net trained alone (the baseline run of the same seed) when it has finished."""
        self._need_run()
        checkpoint = self._checkpoint(checkpoint)
        keys = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy", "boundary_f": "boundary F", "ece": "ECE"}

        def row(label, scores):
            return {"network": label, "epoch": scores.get("epoch"), **{k: scores.get(m) for m, k in keys.items()}}

        rows = [row(self._label(n), self.summary["networks"][n][checkpoint]) for n in self.cfg.networks]
        base_dir, base = self._baseline_metrics()
        alone = (base or {}).get("networks", {}).get(PRIMARY_NETWORK, {}).get(checkpoint)
        if alone is not None:
            rows.append(row(f"{NETWORK_LABELS[PRIMARY_NETWORK]} alone (baseline, same seed)", alone))
        elif self.cfg.use_case != "baseline":
            print(f"(no finished baseline run in {base_dir} to set the U-Net trained alone beside)")
        title = f"{self.title} on {self.cfg.dataset}: validation scores of each network ({checkpoint} weights)"
        write_table(rows, f"{self.stem}_networks", self.prov, title=title)
        return Table(rows, title)

    def _label(self, network: str) -> str:
        """A network's name in figures and tables, with its role when there are two (mutual learning)."""
        return NETWORK_LABELS[network] + (f" ({ROLES[network]})" if len(self.cfg.networks) > 1 else "")

    def _baseline_metrics(self) -> tuple[Path, dict | None]:
        """(run directory, metrics or None) of the baseline run of the same seed in the same results folder."""
        base_dir = runs.run_path(self.cfg.results_dir, self.cfg.dataset, "baseline", self.run_dir.name)
        return base_dir, runs.load_metrics(base_dir) if self.cfg.use_case != "baseline" else None

    def reliability(self, checkpoint: str = "best_miou"):
        """Reliability diagram (calibration) of every network."""
        self._need_run()
        checkpoint = self._checkpoint(checkpoint)
        diagrams = {NETWORK_LABELS[n]: {**m[checkpoint]["reliability"], "ece": m[checkpoint]["ece"]}
                    for n, m in self.summary["networks"].items()}
        reading = "per-class sigmoids, as BCE trains them" if self.cfg.probabilities == "sigmoid" else "softmax"
        fig = viz.plot_reliability(diagrams, title=f"{self.title} on {self.cfg.dataset}: calibration ({checkpoint} "
                                                   f"weights; confidence: the predicted class's probability, {reading})")
        viz.save_figure(fig, f"{self.stem}_reliability.png", self.prov)
        return fig

    def predictions(self, num_examples: int = 4, checkpoint: str = "best_miou"):
        self._need_run()
        checkpoint = self._checkpoint(checkpoint)
        samples = predict_samples(self.run_dir, range(min(num_examples, self.summary["val_samples"])), checkpoint,
                                  device=self.device)
        predictions = {NETWORK_LABELS[n]: masks for n, masks in samples["predictions"].items()}
        fig = viz.plot_predictions(samples["images"], samples["targets"], predictions, self.cfg.dataset,
                                   title=f"{self.title} on {self.cfg.dataset}, seed {self.cfg.seed}: predicted masks "
                                         f"({checkpoint} weights)")
        viz.save_figure(fig, f"{self.stem}_predictions.png", self.prov)
        return fig

    def reading(self, checkpoint: str = "best_miou") -> list[str]:
        """What to look for in this method's results, worded from this run and the baseline run of the same seed
        (when it has finished in the same results folder): single-seed observations, not verdicts -- notebook 05
        pairs all seeds with intervals."""
        self._need_run()
        checkpoint = self._checkpoint(checkpoint)
        lines = []
        base_dir, base = self._baseline_metrics()
        mine = self.summary["networks"][PRIMARY_NETWORK][checkpoint]
        theirs = (base or {}).get("networks", {}).get(PRIMARY_NETWORK, {}).get(checkpoint)
        if self.cfg.use_case == "rmi":
            lines.append("RMI scores neighbourhoods, not pixels: where it helps, it should help at class boundaries "
                         "and on thin structures first (boundary F, the thin classes' IoU), even before mIoU.")
        if self.cfg.use_case == "mutual":
            lines += self._partner_lines(checkpoint)
        if theirs is None:
            if self.cfg.use_case != "baseline":
                lines.append(f"(no finished baseline run in {base_dir} to set this run beside)")
            return lines
        for key, label in (("miou", "mIoU"), ("boundary_f", "boundary F"), ("ece", "ECE (own probabilities)")):
            if mine.get(key) is not None and theirs.get(key) is not None:
                lines.append(f"{label}: {mine[key]:.3f} here against {theirs[key]:.3f} for the baseline of the same "
                             f"seed ({mine[key] - theirs[key]:+.3f}).")
        names = list(self.info.class_names)
        for cls in THIN_CLASSES.get(self.cfg.dataset, ()):
            i = names.index(cls)
            a, b = mine["iou_per_class"][i], theirs["iou_per_class"][i]
            if a is not None and b is not None:
                lines.append(f"thin class {cls!r}: IoU {a:.3f} here against {b:.3f} for the baseline ({a - b:+.3f}).")
        return lines

    def _partner_lines(self, checkpoint: str) -> list[str]:
        """Mutual learning: how the partner learnt beside the U-Net, from the history and the final scores."""
        partner = self.cfg.networks[0]
        history = runs.load_history(self.run_dir)
        curve = [r.get(f"{partner}/val_miou") for r in history if r.get(f"{partner}/val_miou") is not None]
        student = [r.get(f"{PRIMARY_NETWORK}/val_miou") for r in history
                   if r.get(f"{PRIMARY_NETWORK}/val_miou") is not None]
        lines = [f"The U-Net learns from its partner's softened prediction: a partner that knows less than the U-Net "
                 f"pulls it towards worse answers. The {NETWORK_LABELS[partner]} partner's validation mIoU went "
                 f"{curve[0]:.3f} -> {curve[-1]:.3f} against the U-Net's {student[0]:.3f} -> {student[-1]:.3f}."
                 if curve and student else "No per-epoch validation scores were kept for the partner."]
        kl = [r.get(f"{PRIMARY_NETWORK}/train_kl") for r in history if r.get(f"{PRIMARY_NETWORK}/train_kl") is not None]
        if len(kl) > 1:
            lines.append(f"The U-Net's KL term went {kl[0]:.3f} -> {kl[-1]:.3f} nats: the two networks "
                         f"{'came to agree' if kl[-1] < kl[0] else 'drifted apart'} over training.")
        return lines
