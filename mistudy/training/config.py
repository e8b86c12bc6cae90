"""The configuration of one training run: `TrainConfig`, every option documented in its field's metadata.

The command line (`python -m mistudy train --<option>`), the study (`--set option=value`) and the notebooks
(`config={...}`) are all generated from these fields, so a new field reaches every entry point by itself.
Field metadata: ``help`` (shown by --help), ``choices``, ``low`` (smallest allowed number) and ``kind``:

* ``"runtime"`` -- changes how fast a run goes or where its data is read, not what it computes;
* ``"where"``   -- where the run directory is and whether to continue it;
* ``"length"``  -- how long to train (may grow when a run is resumed).
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from mistudy import data

# The paper's settings (section 3.2) per use-case; batch_size / lr None in a TrainConfig means these.
USE_CASES = {
    "baseline": dict(networks=("unet",), batch_size=8, lr=1e-3),
    "rmi": dict(networks=("unet",), batch_size=2, lr=1e-4),
    "mutual": dict(networks=("deeplabv3", "unet"), batch_size=10, lr=1e-4),
}
# The notebook of each use-case (its number and name; the study runs it once per dataset and seed).
USE_CASE_NOTEBOOKS = {"baseline": "02_baseline", "rmi": "03_rmi", "mutual": "04_mutual_learning"}
PRIMARY_NETWORK = "unet"  # the network the paper's tables report (the student, for mutual)
DATASETS = data.DATASETS
LR_SCHEDULES = ("constant", "cosine", "poly")
CHECKPOINTS = ("best_miou", "best_loss", "last")
# The selection rule of the headline verdicts, declared before any run; every verdict is also reported under the
# other rules (`comparison.verdicts_by_rule`) and called robust only where all three agree.
HEADLINE_CHECKPOINT = "best_miou"
CHECKPOINT_RULES = {
    "best_miou": "weights of the epoch with the highest mIoU on the selection split (held out of train)",
    "best_loss": "weights of the epoch with the lowest training loss (the paper's rule)",
    "last": "weights after the last epoch",
}


def _opt(default, help: str, *, choices=None, low=None, positive: bool = False, kind: str | None = None):
    """A field with its metadata: ``low`` the smallest allowed number, ``positive`` numbers must be > 0."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "positive": positive,
                                            "kind": kind})


def use_case_dir(results_dir, dataset: str, use_case: str) -> Path:
    """<results_dir>/<dataset>/<use_case>/: the folder of a use-case's runs (`mistudy.training.runs.find_runs`)."""
    return Path(results_dir) / dataset / use_case


def run_path(results_dir, dataset: str, use_case: str, name: str) -> Path:
    """A default run directory, <results_dir>/<dataset>/<use_case>/<name> (name: seed<k> unless run_name is set)."""
    return use_case_dir(results_dir, dataset, use_case) / name


# the options that start a run's networks from a local weights file (its content is recorded: `runs.check_weights`)
WEIGHTS_OPTIONS = ("unet_weights", "deeplab_weights", "deeplab_backbone_weights")


@dataclass
class TrainConfig:
    # what to train
    use_case: str = _opt("baseline", "baseline (U-Net + CE), rmi (U-Net + BCE/RMI) or mutual (DeepLabV3 + U-Net, "
                         "deep mutual learning)", choices=tuple(USE_CASES))
    dataset: str = _opt("synthetic", "synthetic (generated, no download), voc (PASCAL VOC 2012), voc_aug (VOC 2012 "
                        "trained on its 10,582 images with the SBD annotations, the RMI authors' set) or cityscapes",
                        choices=DATASETS)
    synthetic_level: str = _opt(data.SYNTHETIC_DEFAULT_LEVEL, "difficulty of the synthetic dataset: easy, medium "
                                "or hard (the original generator)", choices=tuple(data.SYNTHETIC_LEVELS))
    data_root: str | None = _opt(None, "dataset root: VOC: the folder holding VOCdevkit/ (voc_aug: and SBD/); "
                                 "Cityscapes: the folder holding leftImg8bit/ and gtFine/", kind="runtime")
    download: bool = _opt(False, "fetch what the run needs and lacks: PASCAL VOC 2012 into data_root (torchvision's "
                          "VOCSegmentation(download=True), 2 GB; voc_aug: and SBD, its SBDataset(download=True), "
                          "1.4 GB) and named weights into torch's hub cache; without it nothing is downloaded",
                          kind="runtime")
    # where
    run_dir: str | None = _opt(None, "run directory (none: <results-dir>/<dataset>/<use-case>/<run-name>)",
                               kind="where")
    results_dir: str = _opt("results", "parent of the default run directories", kind="where")
    run_name: str | None = _opt(None, "name of the run directory (none: seed<seed>)", kind="where")
    resume: bool = _opt(False, "continue the run in run_dir from its last checkpoint", kind="where")
    # optimisation
    epochs: int = _opt(200, "training epochs (paper: 200)", low=1, kind="length")
    batch_size: int | None = _opt(None, "training batch size (none: the paper's, baseline 8, rmi 2, mutual 10)",
                                  low=1)
    lr: float | None = _opt(None, "Adam learning rate (none: the paper's, baseline 1e-3, rmi and mutual 1e-4)",
                            positive=True)
    weight_decay: float = _opt(0.0, "Adam weight decay", low=0)
    lr_schedule: str = _opt("constant", "learning rate after the warm-up: constant (the paper), cosine (to 0 at the "
                            "last step) or poly ((1 - t/T)^0.9, the RMI authors' and DeepLab's)",
                            choices=LR_SCHEDULES)
    warmup_steps: int = _opt(0, "optimisation steps of warm-up at the start of training (every network alike)", low=0)
    warmup_mode: str = _opt("linear", "warm-up: linear (from warmup_factor x lr up to lr) or constant (warmup_factor x "
                            "lr throughout, the RMI authors' slow start)", choices=("linear", "constant"))
    warmup_factor: float = _opt(0.1, "learning-rate factor at the start of the warm-up (RMI authors' slow start: "
                                "1e-4 against their lr 1e-2)", positive=True)
    # data
    resize_size: int = _opt(234, "shorter side after resizing, before cropping (the authors' Resize(234))", low=1)
    crop_size: int = _opt(224, "training crop and 'paper' evaluation centre crop (paper: 224)", low=1)
    square_resize: bool = _opt(False, "resize to resize_size x resize_size, as the paper's text says (the authors' "
                               "code resizes the shorter side)")
    normalize: bool = _opt(True, "normalise images with ImageNet mean/std (the authors did not)")
    train_samples: int | None = _opt(None, "use the first N training samples (synthetic: generate N)", low=1)
    val_samples: int | None = _opt(None, "use the first N validation samples (synthetic: generate N)", low=1)
    select_fraction: float = _opt(0.1, "share of the training set held out as the selection split for best_miou "
                                  "(VOC/Cityscapes: files chosen by a hash of their names; synthetic: a split of "
                                  "its own, this share of train_samples); 0: no selection split, no best_miou", low=0)
    cache_dir: str | None = _opt(None, "cache of resized images and masks (VOC/Cityscapes): no JPEG/PNG decoding "
                                 "after the first epoch", kind="runtime")
    num_workers: int | None = _opt(None, "DataLoader worker processes (none: 0 on CPU, where they compete with "
                                   "training for the cores; min(8, cores / GPUs) on CUDA, where a study's task "
                                   "counts its share of the cores)", low=0, kind="runtime")
    # evaluation
    eval_protocol: str = _opt("paper", "paper: resize + deterministic centre crop; full: the network sees the "
                              "image resized as in training, scored at the mask's own resolution; random-crop: "
                              "resize + random crops as the authors evaluated (seeded)", choices=data.PROTOCOLS)
    eval_passes: int | None = _opt(None, "passes over the validation split pooled into one confusion matrix "
                                   "(none: 5 for random-crop, as the authors' scripts; 1 otherwise)", low=1)
    boundary_tolerance: float | None = _opt(None, "pixels within which a predicted class boundary matches a true one "
                                            "(boundary F-score) (none: 0.75 percent of the image diagonal, as Csurka et al. "
                                            "2013)", low=0)
    # a setting, fixed for the life of a run: it decides which epochs best_miou chooses among and, on networks with
    # dropout, moves the random stream (docs/protocol.md, "Reproducibility")
    eval_every: int = _opt(1, "validate every N epochs (and always after the last)", low=1)
    eval_batch_size: int | None = _opt(None, "validation batch size (none: the training batch size; 1 for "
                                       "full-resolution real data)", low=1, kind="runtime")
    # losses
    rmi_radius: int = _opt(3, "RMI neighbourhood side (paper: 3)", low=1)
    rmi_pool: str = _opt("none", "RMI down-sampling before the neighbourhoods: none (paper), max or avg (RMI "
                         "authors: avg)", choices=("none", "max", "avg"))
    rmi_pool_size: int = _opt(2, "RMI pooling kernel = stride (RMI authors: 2)", low=1)
    rmi_bce_weight: float = _opt(0.5, "lambda in lambda*BCE + (1-lambda)*RMI (paper: 0.5); 1: BCE alone", low=0)
    rmi_base: str = _opt("bce", "the rmi use-case's per-pixel loss and probabilities: bce (the paper and the RMI "
                         "authors: sigmoid BCE, RMI of sigmoid probabilities) or ce (softmax cross-entropy, RMI of "
                         "softmax probabilities)", choices=("bce", "ce"))
    kl_weight: float = _opt(1.0, "weight of KL(p_other || p_self) in each mutual-learning loss", low=0)
    kl_temperature: float = _opt(1.0, "softmax temperature of the mutual-learning KL (1 = Zhang et al.)",
                                 positive=True)
    mutual_partner: str = _opt("deeplabv3", "the U-Net's partner in mutual learning: deeplabv3 (the paper: "
                               "DeepLabV3-ResNet50) or unet (a second U-Net, as Zhang et al.'s peers: mutual learning "
                               "without a larger network)", choices=("deeplabv3", "unet"))
    mutual_schedule: str = _opt("sequential", "sequential (Zhang et al. Algorithm 1, 3 forward passes) or "
                                "simultaneous (one pair)", choices=("sequential", "simultaneous"))
    # models
    unet_features: int = _opt(32, "U-Net width of the first level (Buda et al.: 32)", low=1)
    network: str = _opt("unet", "the network the baseline and rmi use-cases train: unet (the paper) or deeplabv3 "
                        "(e.g. to pretrain the mutual-learning partner)", choices=("unet", "deeplabv3"))
    unet_weights: str | None = _opt(None, "local U-Net state dict (or a run's best_*.pt) to start the U-Net from, e.g. "
                                    "written by `mistudy pretrain` (never downloaded)")
    unet_head: str = _opt("keep", "with --unet-weights: keep (every layer; the last one new only if the number of "
                          "classes differs) or replace (the last 1x1 layer always new)", choices=("keep", "replace"))
    deeplab_weights: str | None = _opt(None, "DeepLabV3-ResNet50 weights to start from: a torchvision weights name "
                                       "(COCO_WITH_VOC_LABELS_V1, the authors' choice; fetched with --download) or a "
                                       "local state dict")
    deeplab_head: str = _opt("replace", "with --deeplab-weights: replace (a new DeepLabHead, as the authors) or "
                             "keep (the whole head from the file; its last layer new only where the number of classes "
                             "differs)", choices=("replace", "keep"))
    deeplab_backbone_weights: str | None = _opt(None, "ImageNet ResNet-50 weights for DeepLabV3's backbone: a "
                                                "torchvision weights name (IMAGENET1K_V1, IMAGENET1K_V2; fetched with "
                                                "--download) or a local state dict")
    # machinery
    seed: int = _opt(0, "seed of initialisation, data order and augmentation", low=0)
    data_seed: int = _opt(0, "seed of the generated synthetic images (fixed across --seed, so that seeds vary "
                          "training only)", low=0)
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N", kind="runtime")
    amp: str = _opt("auto", "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16 or off",
                    choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool | None = _opt(None, "channels-last memory format (none: on for CUDA)")
    compile: bool = _opt(False, "torch.compile the networks (worth it on a GPU for runs longer than a few minutes)",
                         kind="runtime")
    compile_mode: str = _opt("default", "torch.compile mode: default, reduce-overhead (CUDA graphs: fewer launches, "
                             "for small batches such as rmi's 2) or max-autotune; needs --compile",
                             choices=("default", "reduce-overhead", "max-autotune"), kind="runtime")
    finite_check_every: int | None = _opt(None, "steps between NaN/inf checks of the training loss, each a "
                                          "GPU-to-host read-back (none: 1 on CPU, 50 on CUDA; the epoch's last "
                                          "step is always checked)", low=1, kind="runtime")
    sync_bn: bool = _opt(False, "SyncBatchNorm under torchrun")
    progress: str = _opt("auto", "auto (bars; env MISTUDY_PROGRESS overrides), bar, log (one line per epoch) or "
                         "none", choices=("auto", "bar", "log", "none"), kind="runtime")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad option; cheap, so it runs before any training."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {list(meta['choices'])}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            if meta["positive"] and value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not value > 0):
                raise ValueError(f"{f.name} must be a number > 0, got {value!r}")
            if meta["low"] is not None and value is not None:
                integer = type_name(f).startswith("int")
                if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                        or value < meta["low"]:
                    what = "a positive integer" if meta["low"] == 1 else ("an integer >= 0" if integer else ">= 0")
                    raise ValueError(f"{f.name} must be {what}, got {value!r}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True")
        if not 0.0 <= self.rmi_bce_weight <= 1.0:
            raise ValueError(f"rmi_bce_weight must be in [0, 1], got {self.rmi_bce_weight}")
        if self.warmup_factor > 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if not 0.0 <= self.select_fraction < 1.0:
            raise ValueError(f"select_fraction must be in [0, 1), got {self.select_fraction}")
        if self.eval_passes not in (None, 1) and self.eval_protocol != "random-crop":
            raise ValueError(f"eval_passes={self.eval_passes} repeats identical crops: only the random-crop protocol "
                             "draws new crops per pass")
        try:
            device = torch.device(self.device) if self.device != "auto" else None
        except RuntimeError:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        if device is not None and device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        name = self.run_name
        if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
            raise ValueError(f"run_name must be one plain folder name (no '/', not '.' or '..'), got {name!r}: runs "
                             "stay inside <results_dir>/<dataset>/<use-case>/ (run_dir= names any other place)")
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        if self.dataset != "synthetic" and self.data_root is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_root= (the directory holding the data)")
        from mistudy.methods.models import named_weights

        for name in WEIGHTS_OPTIONS:  # an unknown torchvision weights name raises listing the valid ones
            if getattr(self, name):
                named_weights(name, getattr(self, name))
        if self.eval_protocol == "full" and self.dataset != "synthetic" and (self.eval_batch_size or 1) > 1:
            raise ValueError(f"eval_batch_size must be 1 under the full protocol on {self.dataset}, got "
                             f"{self.eval_batch_size}: whole images differ in size and cannot be batched")
        if self.use_case == "mutual" and self.resolved_batch_size == 1 and self.mutual_partner == "deeplabv3":
            raise ValueError("batch_size 1 is not possible for the mutual use-case: DeepLabV3's ASPP pooling "
                             "branch applies BatchNorm to a 1x1 map, which needs more than one sample in training")

    def check_paths(self) -> None:
        """The files a run reads exist, fetched first where ``download`` asks (validate() checks values only, so a
        saved run's configuration loads on a machine without its data): FileNotFoundError naming the first
        missing one."""
        from mistudy.methods.models import fetch_weights

        if self.dataset != "synthetic":
            if self.download:
                data.download(self.dataset, self.data_root)
            if not Path(self.data_root).is_dir():
                raise FileNotFoundError(f"dataset root {self.data_root} is not a directory")
        for name, value in self.weights_options().items():
            path = fetch_weights(name, value, self.download)
            if not path.is_file():
                raise FileNotFoundError(f"{name} {path} does not exist" + (" (it is a directory)"
                                                                             if path.is_dir() else ""))

    def weights_options(self) -> dict[str, str]:
        """{option: value} of the weights options this run's networks start from (a DeepLabV3 option counts only
        where a DeepLabV3 is trained)."""
        builds = {"unet_weights": "unet" in self.networks, "deeplab_weights": "deeplabv3" in self.networks,
                  "deeplab_backbone_weights": "deeplabv3" in self.networks}
        return {name: getattr(self, name) for name in WEIGHTS_OPTIONS if builds[name] and getattr(self, name)}

    def weights_files(self) -> dict[str, Path]:
        """{option: local file} of `weights_options` (a torchvision weights name: its file in torch's hub cache)."""
        from mistudy.methods.models import weights_file

        return {name: weights_file(name, value) for name, value in self.weights_options().items()}

    @property
    def networks(self) -> tuple[str, ...]:
        """Names of the trained networks; "unet" is the one the paper reports (mutual: the student, updated second)."""
        if self.use_case == "mutual" and self.mutual_partner == "unet":
            return ("unet_peer", "unet")
        if self.use_case != "mutual":
            return (self.network,)
        return USE_CASES[self.use_case]["networks"]

    @property
    def probabilities(self) -> str:
        """How the trained networks' logits become probabilities, as their loss trains them (`metrics.PROBABILITIES`):
        sigmoid for the rmi use-case's BCE base, softmax otherwise."""
        return "sigmoid" if self.use_case == "rmi" and self.rmi_base == "bce" else "softmax"

    @property
    def resolved_batch_size(self) -> int:
        return int(self.batch_size or USE_CASES[self.use_case]["batch_size"])

    @property
    def resolved_lr(self) -> float:
        return float(self.lr or USE_CASES[self.use_case]["lr"])

    @property
    def resolved_eval_passes(self) -> int:
        return self.eval_passes or (5 if self.eval_protocol == "random-crop" else 1)

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return run_path(self.results_dir, self.dataset, self.use_case, self.run_name or f"seed{self.seed}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a dict such as config.json (old names such as "root" read as their new ones); unknown keys raise
        naming them."""
        d = {OLD_NAMES.get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return type(self).from_dict({**asdict(self), **changes})


# Options renamed since: old name -> new name (old config.json files, `--set root=...`, the CLI's --root).
OLD_NAMES = {"root": "data_root"}


def type_name(f) -> str:
    """A field's annotation as text ("int | None"), whether or not annotations are postponed."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def names_of_kind(*kinds: str, cls=TrainConfig) -> set[str]:
    """Field names whose metadata kind is one of ``kinds`` (see the module docstring)."""
    return {f.name for f in fields(cls) if f.metadata.get("kind") in kinds}


RUNTIME_OPTIONS = names_of_kind("runtime")
# Options that may change when a run is resumed; everything else must match the saved run.
RESUMABLE_CHANGES = names_of_kind("runtime", "where", "length")


def default_of(f):
    return None if f.default is MISSING else f.default


def parse_value(name: str, text: str, cls=TrainConfig):
    """A field's value from text (``--set name=value``): ints, floats, booleans (true/false), none, strings."""
    by_name = {f.name: f for f in fields(cls)}
    name = OLD_NAMES.get(name, name)
    if name not in by_name:
        raise ValueError(f"unknown option {name!r}; valid: {', '.join(sorted(by_name))}")
    kind = type_name(by_name[name])
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected {kind.replace(' | None', '')}"
                         f"{' or none' if 'None' in kind else ''}") from None
    return text


def parse_assignments(items: list[str], cls=TrainConfig) -> dict:
    """["key=value", ...] -> {key: parsed value}; a malformed item or unknown key raises naming it."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        key = name.strip().replace("-", "_")
        out[OLD_NAMES.get(key, key)] = parse_value(key, text.strip(), cls)
    return out


# Settings of the study's profiles (`python -m mistudy study --profile NAME`, the notebooks' `profile` parameter).
# paper: the paper's per-use-case batch sizes and learning rates (USE_CASES).
# The CPU profiles share one recipe for every use-case (batch 8, Adam 1e-3, constant), so that only the loss differs
# between the methods; batch 8 rather than 16: twice the updates for the same images, which made the quick baseline
# take off on 10 of 10 seeds instead of 9 (benchmarks/takeoff.py; README "Speed").  long = standard trained longer
# (the same runs extended, so a standard run resumed to the long length is the long run).
_CPU = dict(resize_size=72, crop_size=64, select_fraction=0.125, batch_size=8, lr=1e-3, amp="bf16", channels_last=True)
PROFILES = {
    "quick": dict(_CPU, train_samples=256, val_samples=64, epochs=6),
    "standard": dict(_CPU, train_samples=512, val_samples=256, epochs=12),
    "long": dict(_CPU, train_samples=512, val_samples=256, epochs=24),
    # the partner of mutual learning as the authors': torchvision's COCO checkpoint (their
    # deeplabv3_resnet50(pretrained=True)) with a new DeepLabHead(2048, classes), alike on every dataset (models.py)
    "paper": dict(resize_size=234, crop_size=224, train_samples=None, val_samples=None, select_fraction=0.1,
                  epochs=200, batch_size=None, lr=None, deeplab_weights="COCO_WITH_VOC_LABELS_V1",
                  deeplab_head="replace"),
    # a smoke test of the notebooks' code paths (the nbval run sets MISTUDY_PROFILE=tiny): seconds, learns nothing
    "tiny": dict(resize_size=36, crop_size=32, train_samples=16, val_samples=8, select_fraction=0.25, epochs=2,
                 batch_size=4, lr=1e-3, unet_features=8),
}
PROFILE_HELP = {
    "quick": "the first answer (make run): 64x64 crops, 256 training and 64 validation images, 6 epochs, batch 8, "
             "Adam 1e-3 for every use-case",
    "standard": "512 training and 256 validation images, 12 epochs, the quick recipe",
    "long": "the standard runs trained to 24 epochs (whether the baseline has plateaued there: the budget table's "
            "plateau test)",
    "paper": "the paper's protocol: resize 234, crop 224, the whole training list, 200 epochs, the paper's batch sizes "
             "and learning rates, mutual learning's DeepLabV3 from torchvision's COCO checkpoint with a new head (the "
             "authors')",
    "tiny": "a smoke test of the code paths in seconds (the notebook tests); learns nothing",
}
# With no profile named (nor env MISTUDY_PROFILE): the quick study on synthetic data, the paper's protocol on real data.
DEFAULT_PROFILE = "quick"
REAL_DATA_PROFILE = "paper"
DEFAULT_PROFILE_TEXT = (f"{DEFAULT_PROFILE} on synthetic data, {REAL_DATA_PROFILE} on "
                        f"{', '.join(d for d in DATASETS if d != 'synthetic')}, or env MISTUDY_PROFILE")
# The number of seeds of each profile's study, declared before its runs (`mistudy study` trains seeds 0..n-1): five
# wherever a headline verdict is drawn; three for quick, the first look that `make run` gives; two for the smoke test.
STUDY_SEEDS = {"quick": 3, "standard": 5, "long": 5, "paper": 5, "tiny": 2}


def study_seeds(profile: str | None) -> list[int]:
    """The seeds a profile's study trains (STUDY_SEEDS): 0, 1, ..."""
    return list(range(STUDY_SEEDS[resolve_profile(profile)]))


def resolve_profile(name: str | None, dataset: str = "synthetic") -> str:
    """A profile's name; None means env MISTUDY_PROFILE, else "quick" for synthetic data and "paper" for real data."""
    name = name or os.environ.get("MISTUDY_PROFILE") or (DEFAULT_PROFILE if dataset == "synthetic"
                                                         else REAL_DATA_PROFILE)
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return name


def profile_settings(name: str | None, device: str = "auto", dataset: str = "synthetic") -> dict:
    """The TrainConfig fields of a profile (None: `resolve_profile`'s default for ``dataset``).  bf16 autocast is
    kept on CPU only where the CPU computes bf16 in hardware (elsewhere it is emulated and slower): the profile then
    falls back to float32."""
    from mistudy.training.distributed import cpu_has_native_bf16, resolve_device

    settings = dict(PROFILES[resolve_profile(name, dataset)])
    if settings.get("amp") == "bf16" and resolve_device(device).type == "cpu" and not cpu_has_native_bf16():
        settings.update(amp="off")  # channels-last stays: it pays in float32 too (1.4x for the U-Net, measured)
    return settings


def profile_of(cfg: TrainConfig) -> str:
    """The profile ``cfg`` was made from, as far as its settings tell: "paper", or the nearest profile and the
    settings that depart from it ("quick, with epochs=1").  Left out: amp (a profile's bf16 is dropped on CPUs
    without it) and the weights of networks the run does not build."""
    ignored = {"amp", *(set(WEIGHTS_OPTIONS) - set(cfg.weights_options()))}

    def departures(name: str) -> dict:
        return {k: getattr(cfg, k) for k, v in PROFILES[name].items() if k not in ignored and getattr(cfg, k) != v}

    name = min(PROFILES, key=lambda n: len(departures(n)))
    changed = ", ".join(f"{k}={v}" for k, v in departures(name).items())
    return f"{name}, with {changed}" if changed else name


def study_config(use_case: str, profile: str | None = None, overrides: dict | None = None, **fields_) -> TrainConfig:
    """The TrainConfig of a use-case notebook: the profile's settings, then ``fields_`` (the notebook's own
    parameters), then ``overrides`` (any TrainConfig field, e.g. the study's --set values).  No profile: the
    dataset's default (`resolve_profile`)."""
    given = {**fields_, **(overrides or {})}
    chosen = profile_settings(profile, given.get("device", "auto"), given.get("dataset", "synthetic"))
    cfg = TrainConfig.from_dict({"use_case": use_case, **chosen, **given})
    # a profile's weights go to the runs that build their network (a baseline run of the paper profile records none)
    unused = [k for k in WEIGHTS_OPTIONS if k in chosen and k not in given and k not in cfg.weights_options()]
    return cfg.replace(**dict.fromkeys(unused)) if unused else cfg
