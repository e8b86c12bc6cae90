"""One training loop for the paper's three use-cases, with evaluation, checkpoints and resume.

    baseline  U-Net, cross-entropy                                   (paper 3.2.2)
    rmi       U-Net, bce_weight * BCE + (1 - bce_weight) * RMI         (paper 3.2.3, Zhao et al. 2019)
    mutual    DeepLabV3-ResNet50 ("teacher") and U-Net ("student"),   (paper 3.2.4, Zhang et al. 2018)
              each trained with CE + kl_weight * KL(p_other || p_self)

`train(TrainConfig(...))` writes a run directory:
    config.json            the full configuration
    history.csv / .json    one row per epoch: losses, validation metrics, lr, seconds, images/s
    last.pt                everything needed to resume (models, optimisers, scaler, RNG, best scores)
    best_loss-<net>.pt     weights at the lowest training loss of <net> (the paper's selection rule)
    best_miou-<net>.pt     weights at the highest validation mIoU of <net> (the standard rule)
    metrics.json           validation metrics of every network at last / best_loss / best_miou
All files are written atomically (temporary file + rename). Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mistudy import data
from mistudy.losses import RMILoss, cross_entropy_loss, mutual_kl
from mistudy.metrics import SegmentationMetrics, nan_to_none
from mistudy.models import build_model
from mistudy.viz import atomic_write_text

# The paper's settings (section 3.2); every value can be overridden in TrainConfig.
USE_CASES = {
    "baseline": dict(networks=("unet",), batch_size=8, lr=1e-3),
    "rmi": dict(networks=("unet",), batch_size=2, lr=1e-4),
    "mutual": dict(networks=("deeplabv3", "unet"), batch_size=10, lr=1e-4),
}
PRIMARY_NETWORK = "unet"  # the network the paper's tables report (the student, for mutual)
DATASETS = ("synthetic", "voc", "cityscapes")
EVAL_PROTOCOLS = data.PROTOCOLS
CHECKPOINTS = ("best_miou", "best_loss", "last")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass
class TrainConfig:
    use_case: str = "baseline"
    dataset: str = "synthetic"
    root: str | None = None  # dataset root (VOC: the folder holding VOCdevkit/; Cityscapes: leftImg8bit/ and gtFine/)
    run_dir: str | None = None  # default: <results_dir>/<dataset>/<use_case>/<run_name>
    results_dir: str = "results"
    run_name: str | None = None  # default: seed<seed>
    # schedule and optimisation; None = the use-case's paper default
    epochs: int = 200
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    # data
    resize_size: int = 234
    crop_size: int = 224
    square_resize: bool = False  # True: the paper's literal 234x234 resize; False: shorter side to 234
    normalize: bool = True  # ImageNet mean/std
    train_samples: int | None = None  # first n training samples (synthetic: how many to generate)
    val_samples: int | None = None
    cache_dir: str | None = None  # cache of resized images (VOC/Cityscapes), see mistudy.data
    num_workers: int | None = None  # DataLoader workers; default: 0 on CPU, up to 8 per GPU on CUDA
    # evaluation
    eval_protocol: str = "paper"  # "paper": resize + centre crop; "full": whole image; "random-crop": the authors'
    eval_every: int = 1  # epochs between validations (always at the end)
    eval_batch_size: int | None = None  # default: the training batch size ("full" on real data: 1)
    # losses
    rmi_radius: int = 3
    rmi_pool: str = "none"
    rmi_pool_size: int = 2
    rmi_bce_weight: float = 0.5
    kl_weight: float = 1.0
    kl_temperature: float = 1.0
    mutual_schedule: str = "sequential"  # Zhang et al.'s Algorithm 1; or "simultaneous"
    # models
    unet_features: int = 32
    deeplab_weights: str | None = None  # local DeepLabV3-ResNet50 state dict
    deeplab_backbone_weights: str | None = None  # local ResNet-50 (ImageNet) state dict
    # machinery
    seed: int = 0  # initialisation, data order, augmentation
    data_seed: int = 0  # which synthetic images are generated: fixed across seeds, so seeds vary training only
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool | None = None  # default: on for CUDA
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    finite_check_every: int | None = None  # steps between NaN/inf loss checks; default: 1 on CPU, 50 on CUDA
    sync_bn: bool = False
    resume: bool = False
    progress: str = "auto"  # auto | bar | log | none  (env MISTUDY_PROGRESS overrides auto)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad option; cheap, so it runs before any training."""
        def choice(name, valid):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}")

        choice("use_case", USE_CASES)
        choice("dataset", DATASETS)
        choice("eval_protocol", EVAL_PROTOCOLS)
        choice("rmi_pool", ("none", "max", "avg"))
        choice("mutual_schedule", ("sequential", "simultaneous"))
        choice("amp", ("auto", "bf16", "fp16", "off"))
        choice("progress", ("auto", "bar", "log", "none"))
        choice("compile_mode", COMPILE_MODES)
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode={self.compile_mode!r} needs compile=True (--compile)")
        for name in ("epochs", "resize_size", "crop_size", "eval_every", "rmi_radius", "rmi_pool_size", "unet_features"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "train_samples", "val_samples", "finite_check_every"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        try:
            device = torch.device(self.device) if self.device != "auto" else None
        except RuntimeError:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        if device is not None and device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.rmi_bce_weight <= 1.0:
            raise ValueError(f"rmi_bce_weight must be in [0, 1], got {self.rmi_bce_weight}")
        if self.kl_weight < 0 or not self.kl_temperature > 0:
            raise ValueError(f"kl_weight must be >= 0 and kl_temperature > 0, got {self.kl_weight}, {self.kl_temperature}")
        if self.crop_size > self.resize_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than resize_size {self.resize_size}")
        if self.dataset != "synthetic":
            if self.root is None:
                raise ValueError(f"dataset {self.dataset!r} needs root= (the directory holding the data)")
            if not Path(self.root).is_dir():
                raise FileNotFoundError(f"dataset root {self.root} is not a directory")
        if self.use_case == "mutual" and self.resolved_batch_size == 1:
            raise ValueError("batch_size 1 is not possible for the mutual use-case: DeepLabV3's ASPP pooling "
                             "branch applies BatchNorm to a 1x1 map, which needs more than one sample in training")

    @property
    def networks(self) -> tuple[str, ...]:
        return USE_CASES[self.use_case]["networks"]

    @property
    def resolved_batch_size(self) -> int:
        return int(self.batch_size or USE_CASES[self.use_case]["batch_size"])

    @property
    def resolved_lr(self) -> float:
        return float(self.lr or USE_CASES[self.use_case]["lr"])

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        return Path(self.results_dir) / self.dataset / self.use_case / (self.run_name or f"seed{self.seed}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**d)


# Options that change how fast a run goes or where its files are, not what it computes (up to
# floating-point reordering on another device or with compiled kernels).
RUNTIME_OPTIONS = {"device", "progress", "num_workers", "compile", "compile_mode", "finite_check_every", "cache_dir",
                   "root"}
# Options that may change when a run is resumed; everything else must match the saved run.
RESUMABLE_CHANGES = RUNTIME_OPTIONS | {"resume", "run_dir", "results_dir", "run_name", "epochs", "eval_every"}


def check_resumable(cfg: TrainConfig, run_dir: Path) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    diff = {k: (saved.get(k), v) for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume {run_dir} with a different configuration ({detail})")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class LossMeter:
    """An epoch's training losses, summed on the device, with a deferred NaN/inf check.

    Reading a value back from a GPU (`.item()`, `if loss:`) makes the host wait until the GPU has
    caught up, which empties the queue of launched kernels; done every step it costs most where
    steps are short (the RMI use-case's batch of 2). So the losses stay on the device and
    `first_nonfinite()` inspects every step since its previous call with one read-back.
    """

    def __init__(self):
        self.sums: dict[str, dict[str, torch.Tensor]] = {}  # {net: {part: sum of value * batch size}}
        self.seen = 0  # samples
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []  # [(step, {net: loss})] not yet checked

    def add(self, step: int, losses: dict[str, dict[str, torch.Tensor]], batch_size: int) -> None:
        """losses: train_step's {net: {"loss": scalar, part: scalar}} (detached)."""
        for name, parts in losses.items():
            acc = self.sums.setdefault(name, {})
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + v.float() * batch_size
        self.seen += batch_size
        self._pending.append((step, {name: parts["loss"] for name, parts in losses.items()}))

    def first_nonfinite(self) -> tuple[int, str, float] | None:
        """(step, network, value) of the first NaN/inf loss added since the last call, else None."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        flat = [(step, name, loss) for step, losses in pending for name, loss in losses.items()]
        finite = torch.isfinite(torch.stack([loss.float() for _, _, loss in flat]))
        if bool(finite.all()):  # the one read-back
            return None
        step, name, loss = flat[int((~finite).nonzero()[0, 0])]
        return step, name, loss.item()


# --------------------------------------------------------------------------------------------- data

class EpochSampler(Sampler):
    """Shuffled order fixed by (seed, epoch), sharded over ranks, indices tagged with the epoch.

    The yielded index is `epoch * n + i`, so `SeededItems` can seed each item's augmentation from
    (seed, epoch, i): the same crops whatever the use-case, batch size, worker count or resume point.
    A last per-rank batch that would hold a single sample is dropped (BatchNorm needs >= 2 samples).
    """

    def __init__(self, n: int, seed: int, shuffle: bool, batch_size: int, rank: int = 0, world_size: int = 1,
                 drop_single: bool = True):
        self.n, self.seed, self.shuffle, self.batch_size = n, seed, shuffle, batch_size
        self.rank, self.world_size, self.drop_single = rank, world_size, drop_single
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            order += order[: (-self.n) % self.world_size]  # equal shards so DDP ranks step together
        else:
            order = list(range(self.n))  # evaluation: no padding, every sample exactly once
        mine = order[self.rank :: self.world_size]
        if self.drop_single and len(mine) % self.batch_size == 1 and len(mine) > 1:
            mine = mine[:-1]
        return mine

    def __iter__(self):
        return iter([self.epoch * self.n + i for i in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


class SeededItems(Dataset):
    """Wrap a dataset so that the random transform of item i in epoch e is seeded by (seed, e, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged_index: int):
        epoch, i = divmod(int(tagged_index), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF)
            return self.dataset[i]


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    common = dict(root=cfg.root, resize_size=cfg.resize_size, crop_size=cfg.crop_size, square_resize=cfg.square_resize,
                  normalize=cfg.normalize, cache_dir=cfg.cache_dir, seed=cfg.data_seed)
    if cfg.dataset == "synthetic":  # generated at resize_size x resize_size
        train_set = data.build_dataset("synthetic", "train", train=True, synthetic_size=cfg.train_samples, **common)
        val_set = data.build_dataset("synthetic", "val", train=False, protocol=cfg.eval_protocol,
                                     synthetic_size=cfg.val_samples, **common)
    else:
        train_set = data.build_dataset(cfg.dataset, "train", train=True, num_samples=cfg.train_samples, **common)
        val_set = data.build_dataset(cfg.dataset, "val", train=False, protocol=cfg.eval_protocol,
                                     num_samples=cfg.val_samples, **common)
    return train_set, val_set


def eval_batch_size(cfg: TrainConfig) -> int:
    if cfg.eval_batch_size:
        return cfg.eval_batch_size
    if cfg.eval_protocol == "full" and cfg.dataset != "synthetic":
        return 1  # whole images of different sizes cannot be stacked
    return cfg.resolved_batch_size


def make_loader(dataset: Dataset, cfg: TrainConfig, *, train: bool, device: torch.device, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    batch_size = cfg.resolved_batch_size if train else eval_batch_size(cfg)
    sampler = EpochSampler(len(dataset), cfg.seed, shuffle=train, batch_size=batch_size, rank=rank,
                           world_size=world_size, drop_single=train)
    workers = cfg.num_workers
    if workers is None:  # on CPU workers compete with training for the same cores (measured: slower)
        workers = min(8, (os.cpu_count() or 1) // world_size) if device.type == "cuda" else 0
    return DataLoader(SeededItems(dataset, cfg.seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------- models

def build_networks(cfg: TrainConfig, num_classes: int) -> dict[str, nn.Module]:
    nets = {}
    for name in cfg.networks:
        if name == "unet":
            nets[name] = build_model("unet", num_classes, init_features=cfg.unet_features)
        else:
            nets[name] = build_model("deeplabv3_resnet50", num_classes, weights_path=cfg.deeplab_weights,
                                     backbone_weights_path=cfg.deeplab_backbone_weights)
    return nets


def build_optimizers(cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device) -> dict[str, torch.optim.Adam]:
    # fused Adam on CUDA: a few kernels for all parameters instead of several per tensor
    return {name: torch.optim.Adam(net.parameters(), lr=cfg.resolved_lr, weight_decay=cfg.weight_decay,
                                   fused=device.type == "cuda")
            for name, net in nets.items()}


def compile_networks(cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device):
    """(nets, whether CUDA graphs replay them): torch.compile'd when cfg.compile, else unchanged."""
    if not cfg.compile:
        return nets, False
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    # reduce-overhead and max-autotune record CUDA graphs on CUDA (nothing to record on CPU)
    return {n: torch.compile(net, mode=mode) for n, net in nets.items()}, mode is not None and device.type == "cuda"


def finite_check_interval(cfg: TrainConfig, device: torch.device) -> int:
    return cfg.finite_check_every or (50 if device.type == "cuda" else 1)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """BatchNorm uses batch statistics (train mode) but does not update its running estimates.

    Used for the recomputed prediction of Zhang et al.'s Algorithm 1, so that a network's running
    statistics see each mini-batch once, as in plain training.
    """
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# ---------------------------------------------------------------------------------------- the loop

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def device_name(device: torch.device) -> str:
    """'cpu' or e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)', for metrics.json and figure provenance."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array stored as a tensor: checkpoints load with weights_only=True
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Objective:
    """The loss of one network in a use-case; `__call__` returns (total loss, {part: value})."""

    def __init__(self, cfg: TrainConfig, num_classes: int):
        self.cfg = cfg
        self.ce = cross_entropy_loss(ignore_index=data.IGNORE_INDEX)
        self.rmi = None
        if cfg.use_case == "rmi":
            self.rmi = RMILoss(num_classes, radius=cfg.rmi_radius, pool=cfg.rmi_pool, pool_size=cfg.rmi_pool_size,
                               bce_weight=cfg.rmi_bce_weight, ignore_index=data.IGNORE_INDEX, check_target=False)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, other_logits: torch.Tensor | None = None):
        if self.rmi is not None:
            loss = self.rmi(logits, target)  # (target values were checked when the masks were read)
            return loss, {"rmi_total": loss}
        ce = self.ce(logits.float(), target)
        if other_logits is None:
            return ce, {"ce": ce}
        kl = mutual_kl(logits.float(), other_logits.float(), target, ignore_index=data.IGNORE_INDEX,
                       temperature=self.cfg.kl_temperature)
        return ce + self.cfg.kl_weight * kl, {"ce": ce, "kl": kl}


def train_step(nets, optims, scaler, objective, images, target, cfg, autocast) -> dict[str, dict[str, torch.Tensor]]:
    """One optimisation step of every network; returns {net: {"loss": ..., parts...}} (detached)."""
    out = {}

    def update(name, loss, parts):
        opt = optims[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        out[name] = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    if len(nets) == 1:
        (name, net), = nets.items()
        with autocast():
            logits = net(images)
        loss, parts = objective(logits, target)
        update(name, loss, parts)
        return out

    (first, net1), (second, net2) = nets.items()
    if cfg.mutual_schedule == "simultaneous":
        with autocast():
            logits1, logits2 = net1(images), net2(images)
        loss1, parts1 = objective(logits1, target, logits2)
        loss2, parts2 = objective(logits2, target, logits1)
        # One backward through the sum: the KL targets are detached inside mutual_kl, so each
        # network only receives the gradient of its own loss.
        for opt in optims.values():
            opt.zero_grad(set_to_none=True)
        scaler.scale(loss1 + loss2).backward()
        for opt in optims.values():
            scaler.step(opt)
        scaler.update()
        out[first] = {"loss": loss1.detach(), **{k: v.detach() for k, v in parts1.items()}}
        out[second] = {"loss": loss2.detach(), **{k: v.detach() for k, v in parts2.items()}}
        return out

    # Zhang et al., Algorithm 1: three forward passes per step.
    with autocast():
        logits1 = net1(images)
        logits2 = net2(images)
    loss1, parts1 = objective(logits1, target, logits2)
    update(first, loss1, parts1)
    with torch.no_grad(), frozen_bn_stats(net1), autocast():
        logits1 = net1(images)  # the first network's prediction after its update
    loss2, parts2 = objective(logits2, target, logits1)
    update(second, loss2, parts2)
    return out


@torch.no_grad()
def evaluate(nets: dict[str, nn.Module], loader: DataLoader, num_classes: int, device: torch.device,
             autocast=contextlib.nullcontext, channels_last: bool = False) -> dict[str, dict]:
    """Validation metrics of every network (confusion matrices summed over DDP ranks)."""
    metrics = {name: SegmentationMetrics(num_classes, data.IGNORE_INDEX) for name in nets}
    for net in nets.values():
        net.eval()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        for name, net in nets.items():
            with autocast():
                logits = net(images)
            metrics[name].update(logits.argmax(dim=1), target)
    result = {}
    for name, m in metrics.items():
        m.all_reduce()
        result[name] = m.compute()
    return result


def broadcast_buffers(nets: dict[str, nn.Module]) -> None:
    """Give every rank rank 0's BatchNorm running statistics (DDP keeps them per rank between forwards),
    so that distributed evaluation and the saved checkpoint use the same weights."""
    for net in nets.values():
        for buf in _unwrap(net).buffers():
            dist.broadcast(buf, src=0)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "history.json", history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "history.csv", buf.getvalue())


def _unwrap(net: nn.Module) -> nn.Module:
    net = getattr(net, "_orig_mod", net)  # torch.compile
    return getattr(net, "module", net)  # DistributedDataParallel


def _progress_mode(cfg: TrainConfig) -> str:
    if cfg.progress != "auto":
        return cfg.progress
    return os.environ.get("MISTUDY_PROGRESS", "bar")


def _flat_metrics(prefix: str, m: dict) -> dict:
    return {f"{prefix}/val_{k}": m[k] for k in ("pixel_accuracy", "iou_micro", "miou")}


def train(cfg: TrainConfig) -> dict:
    """Train the use-case of `cfg`, write its run directory, return the content of metrics.json."""
    cfg.validate()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    is_main = rank == 0

    device = resolve_device(cfg.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    run_dir = cfg.resolved_run_dir()
    last_path = run_dir / "last.pt"
    if is_main:
        if (last_path.exists() or (run_dir / "metrics.json").exists()) and not cfg.resume:
            raise FileExistsError(f"run directory {run_dir} already holds a run; pass resume=True (--resume) "
                                  f"to continue it or choose another run_dir/run_name")
        if cfg.resume and last_path.exists():
            check_resumable(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", asdict(cfg))

    seed_everything(cfg.seed)
    info = data.dataset_info(cfg.dataset)
    num_classes = info.num_classes
    train_set, val_set = build_datasets(cfg)
    train_loader = make_loader(train_set, cfg, train=True, device=device, rank=rank, world_size=world_size)
    val_loader = make_loader(val_set, cfg, train=False, device=device, rank=rank, world_size=world_size)
    if len(train_loader) == 0:
        raise ValueError(f"the training split of {cfg.dataset} has {len(train_set)} samples: too few for one batch")

    nets = build_networks(cfg, num_classes)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    for name, net in nets.items():
        if cfg.sync_bn and distributed:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        nets[name] = net
    optims = build_optimizers(cfg, nets, device)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    state = {"epoch": 0, "best": {n: {"loss": math.inf, "loss_epoch": None, "miou": -math.inf, "miou_epoch": None}
                                  for n in nets}, "history": []}
    if cfg.resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        for name, net in nets.items():
            net.load_state_dict(ckpt["models"][name])
            optims[name].load_state_dict(ckpt["optimizers"][name])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = {"epoch": ckpt["epoch"], "best": ckpt["best"], "history": ckpt["history"]}

    train_nets = dict(nets)
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        train_nets = {n: nn.parallel.DistributedDataParallel(net, device_ids=ids) for n, net in nets.items()}
    train_nets, cuda_graphs = compile_networks(cfg, train_nets, device)
    check_every = finite_check_interval(cfg, device)
    objective = Objective(cfg, num_classes)

    mode = _progress_mode(cfg) if is_main else "none"
    epoch_bar = tqdm(range(state["epoch"] + 1, cfg.epochs + 1), desc=f"{cfg.use_case} epochs", initial=state["epoch"],
                     total=cfg.epochs, disable=mode != "bar", dynamic_ncols=True)
    for epoch in epoch_bar:
        for net in train_nets.values():
            net.train()
        train_loader.sampler.set_epoch(epoch)
        meter, t0 = LossMeter(), time.perf_counter()
        step_bar = tqdm(train_loader, desc=f"epoch {epoch}", leave=False, disable=mode != "bar", dynamic_ncols=True)
        for step, (images, target) in enumerate(step_bar, start=1):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = target.to(device, non_blocking=True)
            if cuda_graphs:  # a new training iteration: the graphs' previous outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            losses = train_step(train_nets, optims, scaler, objective, images, target, cfg, autocast)
            meter.add(step, losses, images.shape[0])
            # Checked before anything is saved (the epoch's last step), at most check_every steps late.
            if step % check_every == 0 or step == len(train_loader):
                bad = meter.first_nonfinite()
                if bad is not None:
                    raise NonFiniteLossError(
                        f"non-finite {bad[1]} loss ({bad[2]}) at epoch {epoch}, step {bad[0]}; stopped. "
                        f"The last good checkpoint ({last_path}, epoch {state['epoch']}) is kept.")
                if mode == "bar":
                    step_bar.set_postfix({f"{n}_loss": f"{(s['loss'] / meter.seen).item():.4f}"
                                          for n, s in meter.sums.items()}
                                         | {"img/s": f"{meter.seen * world_size / (time.perf_counter() - t0):.1f}"})
        seen, sums = meter.seen, meter.sums
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "lr": optims[cfg.networks[0]].param_groups[0]["lr"], "seconds": round(seconds, 3),
               "images_per_second": round(seen * world_size / seconds, 3)}
        for name, acc in sums.items():
            totals = torch.stack([v for v in acc.values()]).double()
            if distributed:
                counts = torch.tensor([float(seen)], dtype=torch.float64)
                totals = torch.cat([totals.cpu(), counts])
                totals = totals.to(device) if dist.get_backend() == "nccl" else totals
                dist.all_reduce(totals)
                n_seen = totals[-1].item()
                totals = totals[:-1]
            else:
                n_seen = seen
            for k, v in zip(acc, (totals / n_seen).tolist()):
                row[f"{name}/train_{k}"] = v

        if distributed:
            broadcast_buffers(nets)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            val = evaluate({n: _unwrap(net) for n, net in train_nets.items()}, val_loader, num_classes, device,
                           autocast, channels_last)
            for name, m in val.items():
                row.update(_flat_metrics(name, m))

        state["epoch"] = epoch  # on every rank: the final evaluation's collectives depend on it
        if is_main:
            best_files = []
            for name in nets:
                b = state["best"][name]
                loss = row[f"{name}/train_loss"]
                if loss < b["loss"]:
                    b.update(loss=loss, loss_epoch=epoch)
                    best_files.append(("best_loss", name))
                miou = row.get(f"{name}/val_miou")
                if miou is not None and not math.isnan(miou) and miou > b["miou"]:
                    b.update(miou=miou, miou_epoch=epoch)
                    best_files.append(("best_miou", name))
            state["history"].append(row)
            for rule, name in best_files:
                atomic_torch_save({"model": _unwrap(nets[name]).state_dict(), "network": name, "epoch": epoch,
                                   "rule": rule, "config": asdict(cfg)}, run_dir / f"{rule}-{name}.pt")
            atomic_torch_save({
                "models": {n: _unwrap(net).state_dict() for n, net in nets.items()},
                "optimizers": {n: o.state_dict() for n, o in optims.items()},
                "scaler": scaler.state_dict(), "epoch": epoch, "best": state["best"], "history": state["history"],
                "rng": rng_state(), "config": asdict(cfg),
            }, last_path)
            write_history(run_dir, state["history"])
            if mode == "log":
                parts = [f"{k.split('/')[0]} {k.split('/')[1].removeprefix('val_')} {v:.4f}"
                         for k, v in row.items() if k.endswith(("train_loss", "val_miou", "val_pixel_accuracy"))]
                print(f"[{cfg.use_case}] epoch {epoch}/{cfg.epochs}  " + "  ".join(parts)
                      + f"  {row['images_per_second']:.1f} img/s", flush=True)
            if mode == "bar":
                epoch_bar.set_postfix({k.replace("/train_", " ").replace("/val_", " "): f"{v:.3f}"
                                       for k, v in row.items() if k.endswith(("train_loss", "val_miou"))})
        if distributed:
            dist.barrier()
    epoch_bar.close()

    # Final evaluation of every kept checkpoint, so metrics.json holds comparable numbers for each rule.
    eval_nets = {n: _unwrap(net) for n, net in train_nets.items()}
    summary = {"use_case": cfg.use_case, "dataset": cfg.dataset, "seed": cfg.seed, "epochs": cfg.epochs,
               "device": device_name(device), "world_size": world_size,
               "eval_protocol": cfg.eval_protocol, "primary_network": PRIMARY_NETWORK,
               "train_samples": len(train_set), "val_samples": len(val_set), "networks": {}}
    if distributed:
        dist.barrier()  # rank 0 has written the best checkpoints
    final = evaluate(eval_nets, val_loader, num_classes, device, autocast, channels_last)
    for name in nets:
        summary["networks"][name] = {"last": {"epoch": state["epoch"], **_json_metrics(final[name])}}
    for rule in ("best_loss", "best_miou"):
        for name in nets:
            path = run_dir / f"{rule}-{name}.pt"
            if not path.exists():
                continue
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt["epoch"] == state["epoch"]:  # the last weights: already evaluated
                summary["networks"][name][rule] = {"epoch": ckpt["epoch"], **_json_metrics(final[name])}
                continue
            model = build_networks(cfg, num_classes)[name].to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.load_state_dict(ckpt["model"])
            m = evaluate({name: model}, val_loader, num_classes, device, autocast, channels_last)[name]
            summary["networks"][name][rule] = {"epoch": ckpt["epoch"], **_json_metrics(m)}
    if is_main:
        write_json(run_dir / "metrics.json", summary)
    if distributed:
        dist.barrier()
    summary["run_dir"] = str(run_dir)
    return summary


def _json_metrics(m: dict) -> dict:
    out = dict(m)
    out["iou_per_class"] = nan_to_none(m["iou_per_class"])
    out["class_accuracy"] = nan_to_none(m["class_accuracy"])
    return out


# ------------------------------------------------------------------------------------- run helpers

def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are written by "
                                f"`python -m mistudy train`")
    d = json.loads((run_dir / "config.json").read_text())
    d["resume"] = False
    return TrainConfig.from_dict(d)


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def load_metrics(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_network(run_dir: str | os.PathLike, network: str = PRIMARY_NETWORK, checkpoint: str = "best_miou",
                 device: str | torch.device = "cpu") -> nn.Module:
    """A trained network of a run, in eval mode. checkpoint: best_miou | best_loss | last."""
    cfg = load_config(run_dir)
    if network not in cfg.networks:
        raise ValueError(f"run {run_dir} trained {list(cfg.networks)}, not {network!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    run_dir = Path(run_dir)
    path = run_dir / ("last.pt" if checkpoint == "last" else f"{checkpoint}-{network}.pt")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has the run finished an epoch?)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["models"][network] if checkpoint == "last" else ckpt["model"]
    cfg_nc = data.dataset_info(cfg.dataset).num_classes
    net = build_networks(cfg, cfg_nc)[network]
    net.load_state_dict(state)
    return net.to(device).eval()


def evaluate_run(run_dir: str | os.PathLike, checkpoint: str = "best_miou", protocol: str | None = None,
                 root: str | None = None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Evaluate the saved networks of a run on its validation split; returns {network: metrics}."""
    cfg = load_config(run_dir)
    overrides = {k: v for k, v in dict(eval_protocol=protocol, root=root, eval_batch_size=batch_size).items()
                 if v is not None}
    cfg = TrainConfig.from_dict({**asdict(cfg), **overrides})
    dev = resolve_device(device)
    _, val_set = build_datasets(cfg)
    loader = make_loader(val_set, cfg, train=False, device=dev)
    nets = {n: load_network(run_dir, n, checkpoint, dev) for n in cfg.networks}
    dtype = amp_dtype(cfg, dev)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()

    result = evaluate(nets, loader, data.dataset_info(cfg.dataset).num_classes, dev, autocast)
    return {n: _json_metrics(m) for n, m in result.items()}
