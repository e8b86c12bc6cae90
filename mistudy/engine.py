"""The training engine: data loaders, networks and optimisers, one step per use-case, one epoch, evaluation.

`mistudy.train.train` strings these together; `benchmarks/bench_train.py` times the same `setup` and
`train_step`.  The three use-cases (paper section 3.2):

    baseline  U-Net, cross-entropy
    rmi       U-Net, bce_weight * BCE + (1 - bce_weight) * RMI              (Zhao et al. 2019)
    mutual    DeepLabV3-ResNet50 and U-Net, each CE + kl_weight * KL(p_other || p_self)   (Zhang et al. 2018)
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mistudy import data, distributed, runs, safeload
from mistudy.config import CHECKPOINTS, TrainConfig
from mistudy.distributed import Context, resolve_device, unwrap
from mistudy.losses import RMILoss, cross_entropy_loss, mutual_kl
from mistudy.metrics import SegmentationMetrics
from mistudy.models import build_model, load_unet_weights


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------------------- data

class EpochSampler(Sampler):
    """Shuffled order fixed by (seed, epoch), sharded over ranks, indices tagged with the epoch.

    The yielded index is `epoch * n + i`, so `SeededItems` can seed each item's augmentation from (seed, epoch, i):
    the same crops whatever the use-case, batch size, worker count or resume point.  A last per-rank batch that
    would hold a single sample is dropped in training (BatchNorm needs >= 2 samples).  Evaluation passes use the
    epoch number as the pass number (new random crops per pass, the same ones every time).
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
    """Item i of epoch (or evaluation pass) e, with its random transform seeded by (seed, e, i): (image, mask, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged_index: int):
        epoch, i = divmod(int(tagged_index), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF)
            image, mask = self.dataset[i]
        return image, mask, i


def build_datasets(cfg: TrainConfig, check: bool = False) -> dict[str, Dataset]:
    """{"train", "select" (only if select_fraction > 0), "val"} with the configured transforms.

    check: VOC/Cityscapes files are checked now (`data.check_files`: every file complete and of matching size; the
    masks of the scored splits decoded unless a cache holds them), so that a bad file stops the run before it
    trains, not an epoch later.
    """
    common = dict(root=cfg.root, resize_size=cfg.resize_size, crop_size=cfg.crop_size, square_resize=cfg.square_resize,
                  normalize=cfg.normalize, cache_dir=cfg.cache_dir, seed=cfg.data_seed,
                  synthetic_level=cfg.synthetic_level, select_fraction=cfg.select_fraction)
    evaluation = dict(train=False, protocol=cfg.eval_protocol)
    sizes = {"train": cfg.train_samples, "val": cfg.val_samples, "select": None}
    if cfg.dataset == "synthetic":  # generated at resize_size x resize_size; the selection split is its own
        n_train = cfg.train_samples or data.SYNTHETIC_DEFAULT_SIZES["train"]
        sizes = {"train": n_train, "val": cfg.val_samples, "select": max(2, round(cfg.select_fraction * n_train))}
    splits = ["train", "val"] + (["select"] if cfg.select_fraction > 0 else [])
    sets = {split: data.build_dataset(cfg.dataset, split, num_samples=sizes[split],
                                      **(dict(train=True) if split == "train" else evaluation), **common)
            for split in splits}
    if check and cfg.dataset != "synthetic":
        for split, dataset in sets.items():  # a built cache has decoded (and checked) its masks already
            cached = isinstance(dataset, data.ResizedCache)
            data.check_files(dataset.source if cached else dataset, decode_masks=split != "train" and not cached)
    return sets


def evaluation_batch_size(cfg: TrainConfig) -> int:
    if cfg.eval_batch_size:
        return cfg.eval_batch_size
    if cfg.eval_protocol == "full" and cfg.dataset != "synthetic":
        return 1  # whole images of different sizes cannot be stacked
    return cfg.resolved_batch_size


def make_loader(dataset: Dataset, cfg: TrainConfig, *, train: bool, device: torch.device, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    batch_size = cfg.resolved_batch_size if train else evaluation_batch_size(cfg)
    sampler = EpochSampler(len(dataset), cfg.seed, shuffle=train, batch_size=batch_size, rank=rank,
                           world_size=world_size, drop_single=train)
    workers = cfg.num_workers
    if workers is None:  # on CPU workers compete with training for the same cores (measured: slower)
        workers = min(8, (os.cpu_count() or 1) // world_size) if device.type == "cuda" else 0
    return DataLoader(SeededItems(dataset, cfg.seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


# --------------------------------------------------------------------------------- networks and precision

def build_networks(cfg: TrainConfig, num_classes: int | None = None,
                   names: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The use-case's networks (or those of ``names``), untrained (DeepLabV3 from a local weights file if cfg
    names one)."""
    num_classes = num_classes or data.dataset_info(cfg.dataset).num_classes
    nets = {}
    for name in names or cfg.networks:
        if name in ("unet", "unet_peer"):  # the peer is built first: another initialisation from the same seed
            nets[name] = build_model("unet", num_classes, init_features=cfg.unet_features)
            if name == "unet" and cfg.unet_weights:
                load_unet_weights(nets[name], cfg.unet_weights, cfg.unet_head)
        else:
            nets[name] = build_model("deeplabv3_resnet50", num_classes, weights_path=cfg.deeplab_weights,
                                     backbone_weights_path=cfg.deeplab_backbone_weights, head=cfg.deeplab_head)
    return nets


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"


def place_networks(nets: dict[str, nn.Module], cfg: TrainConfig, ctx: Context) -> dict[str, nn.Module]:
    """SyncBatchNorm (under torchrun, if asked), the device and the memory format."""
    out = {}
    for name, net in nets.items():
        if cfg.sync_bn and ctx.distributed:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = net.to(ctx.device)
        out[name] = net.to(memory_format=torch.channels_last) if use_channels_last(cfg, ctx.device) else net
    return out


def build_optimizers(cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device) -> dict[str, torch.optim.Adam]:
    # fused Adam: a few kernels for all parameters instead of several per tensor (on CPU 4x faster than foreach
    # for DeepLabV3's 40M parameters: 27 ms against 111 ms per step, measured)
    return {name: torch.optim.Adam(net.parameters(), lr=cfg.resolved_lr, weight_decay=cfg.weight_decay, fused=True)
            for name, net in nets.items()}


class LRFactor:
    """The learning-rate factor of optimisation step t (0-based) of a run of ``total`` steps: a warm-up of
    ``warmup_steps`` (linear from ``warmup_factor`` to 1, or constant at ``warmup_factor``), then the schedule
    (constant 1; cosine from 1 to 0 at the last step; poly (1 - u)^0.9 with u the share of the post-warm-up steps
    done).  A picklable object, so the scheduler's state resumes from a checkpoint."""

    def __init__(self, schedule: str, total: int, warmup_steps: int = 0, warmup_mode: str = "linear",
                 warmup_factor: float = 0.1):
        self.schedule, self.total, self.warmup_steps = schedule, int(total), int(warmup_steps)
        self.warmup_mode, self.warmup_factor = warmup_mode, float(warmup_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            if self.warmup_mode == "constant":
                return self.warmup_factor
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        u = min(1.0, (step - self.warmup_steps) / max(1, self.total - self.warmup_steps))
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * u))
        return (1.0 - u) ** 0.9


def build_schedulers(cfg: TrainConfig, optims: dict, steps_per_epoch: int) -> dict:
    """One LambdaLR per optimiser, stepped after every optimisation step (`LRFactor`)."""
    factor = LRFactor(cfg.lr_schedule, cfg.epochs * steps_per_epoch, cfg.warmup_steps, cfg.warmup_mode,
                      cfg.warmup_factor)
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optims.items()}


def compile_networks(cfg: TrainConfig, nets: dict[str, nn.Module], device: torch.device):
    """(nets, whether CUDA graphs replay them): torch.compile'd when cfg.compile, else unchanged."""
    if not cfg.compile:
        return nets, False
    mode = None if cfg.compile_mode == "default" else cfg.compile_mode
    # reduce-overhead and max-autotune record CUDA graphs on CUDA (nothing to record on CPU)
    return {n: torch.compile(net, mode=mode) for n, net in nets.items()}, mode is not None and device.type == "cuda"


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


def autocast_for(dtype: torch.dtype | None, device: torch.device) -> Callable:
    """A function returning the autocast context of every forward pass (a null context without AMP)."""
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext


def finite_check_interval(cfg: TrainConfig, device: torch.device) -> int:
    return cfg.finite_check_every or (50 if device.type == "cuda" else 1)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """BatchNorm uses batch statistics (train mode) but does not update its running estimates.

    Used for the recomputed prediction of Zhang et al.'s Algorithm 1, so that a network's running statistics see
    each mini-batch once, as in plain training.
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array stored as a tensor: checkpoints load with weights_only=True
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       gauss], "python": random.getstate()}
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


# --------------------------------------------------------------------------------------- the set-up

@dataclass
class Setup:
    """Everything a training run works with, built once by `setup`."""

    cfg: TrainConfig
    ctx: Context
    num_classes: int
    datasets: dict[str, Dataset]
    loaders: dict[str, DataLoader]
    nets: dict[str, nn.Module]  # plain modules on the device (checkpoints are written from these)
    train_nets: dict[str, nn.Module]  # the same, wrapped by DDP and/or torch.compile
    optims: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]  # stepped after every optimisation step
    scaler: torch.amp.GradScaler
    objective: "Objective"
    autocast: Callable
    channels_last: bool
    cuda_graphs: bool
    check_every: int

    def to_device(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.ctx.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, target.to(self.ctx.device, non_blocking=True)

    def evaluate(self, split: str, nets: dict[str, nn.Module] | None = None) -> dict[str, dict]:
        return evaluate(nets or {n: unwrap(net) for n, net in self.train_nets.items()}, self.loaders[split],
                        self.num_classes, self.ctx, self.autocast, self.channels_last, self.cfg.resolved_eval_passes,
                        self.cfg.boundary_tolerance)


def setup(cfg: TrainConfig, ctx: Context, datasets: dict[str, Dataset] | None = None,
          num_classes: int | None = None) -> Setup:
    """Datasets, loaders, networks, optimisers, grad scaler, objective and compile for ``cfg`` on ``ctx``.

    ``datasets`` and ``num_classes`` replace the configured dataset's (the training benchmark feeds fixed batches).
    """
    seed_everything(cfg.seed)
    num_classes = num_classes or data.dataset_info(cfg.dataset).num_classes
    datasets = datasets if datasets is not None else build_datasets(cfg, check=True)
    loaders = {split: make_loader(ds, cfg, train=split == "train", device=ctx.device, rank=ctx.rank,
                                  world_size=ctx.world_size) for split, ds in datasets.items()}
    if len(loaders["train"]) == 0:
        raise ValueError(f"the training split of {cfg.dataset} has {len(datasets['train'])} samples: too few for one "
                         "batch")
    nets = place_networks(build_networks(cfg, num_classes), cfg, ctx)
    dtype = amp_dtype(cfg, ctx.device)
    train_nets, cuda_graphs = compile_networks(cfg, distributed.wrap(nets, ctx), ctx.device)
    optims = build_optimizers(cfg, nets, ctx.device)
    return Setup(cfg=cfg, ctx=ctx, num_classes=num_classes, datasets=datasets, loaders=loaders, nets=nets,
                 train_nets=train_nets, optims=optims,
                 schedulers=build_schedulers(cfg, optims, len(loaders["train"])),
                 scaler=torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16),
                 objective=Objective(cfg, num_classes), autocast=autocast_for(dtype, ctx.device),
                 channels_last=use_channels_last(cfg, ctx.device), cuda_graphs=cuda_graphs,
                 check_every=finite_check_interval(cfg, ctx.device))


# ---------------------------------------------------------------------------------------------- one step

class Objective:
    """The loss of one network in a use-case; `__call__` returns (total loss, {part: value})."""

    def __init__(self, cfg: TrainConfig, num_classes: int):
        self.cfg = cfg
        self.ce = cross_entropy_loss(ignore_index=data.IGNORE_INDEX)
        self.rmi = None
        if cfg.use_case == "rmi":
            self.rmi = RMILoss(num_classes, radius=cfg.rmi_radius, pool=cfg.rmi_pool, pool_size=cfg.rmi_pool_size,
                               bce_weight=cfg.rmi_bce_weight, ignore_index=data.IGNORE_INDEX, check_target=False,
                               base=cfg.rmi_base)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, other_logits: torch.Tensor | None = None):
        if self.rmi is not None:
            parts = self.rmi.parts(logits, target)  # (target values were checked when the masks were read)
            base = parts[self.cfg.rmi_base]
            loss = base if "rmi" not in parts else \
                self.cfg.rmi_bce_weight * base + (1.0 - self.cfg.rmi_bce_weight) * parts["rmi"]
            return loss, parts
        ce = self.ce(logits.float(), target)
        if other_logits is None:
            return ce, {"ce": ce}
        kl = mutual_kl(logits.float(), other_logits.float(), target, ignore_index=data.IGNORE_INDEX,
                       temperature=self.cfg.kl_temperature)
        return ce + self.cfg.kl_weight * kl, {"ce": ce, "kl": kl}


def _detached(loss: torch.Tensor, parts: dict) -> dict:
    return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}


def _update(optim, scaler, loss: torch.Tensor) -> None:
    optim.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optim)
    scaler.update()


def step_single(nets, optims, scaler, objective, images, target, autocast) -> dict:
    """baseline and rmi: one network, one loss."""
    (name, net), = nets.items()
    with autocast():
        logits = net(images)
    loss, parts = objective(logits, target)
    _update(optims[name], scaler, loss)
    return {name: _detached(loss, parts)}


def step_sequential(nets, optims, scaler, objective, images, target, autocast) -> dict:
    """Zhang et al., Algorithm 1: update the first network against the second's prediction, recompute the first's
    prediction with its new weights (running BatchNorm statistics untouched), update the second: three passes."""
    (first, net1), (second, net2) = nets.items()
    with autocast():
        logits1, logits2 = net1(images), net2(images)
    loss1, parts1 = objective(logits1, target, logits2)
    _update(optims[first], scaler, loss1)
    with torch.no_grad(), frozen_bn_stats(net1), autocast():
        logits1 = net1(images)  # the first network's prediction after its update
    loss2, parts2 = objective(logits2, target, logits1)
    _update(optims[second], scaler, loss2)
    return {first: _detached(loss1, parts1), second: _detached(loss2, parts2)}


def step_simultaneous(nets, optims, scaler, objective, images, target, autocast) -> dict:
    """Both networks updated from one pair of forward passes."""
    (first, net1), (second, net2) = nets.items()
    with autocast():
        logits1, logits2 = net1(images), net2(images)
    loss1, parts1 = objective(logits1, target, logits2)
    loss2, parts2 = objective(logits2, target, logits1)
    # One backward through the sum: the KL targets are detached inside mutual_kl, so each network only receives
    # the gradient of its own loss.
    for opt in optims.values():
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss1 + loss2).backward()
    for opt in optims.values():
        scaler.step(opt)
    scaler.update()
    return {first: _detached(loss1, parts1), second: _detached(loss2, parts2)}


def train_step(nets, optims, scaler, objective, images, target, cfg: TrainConfig, autocast) -> dict:
    """One optimisation step of every network; returns {net: {"loss": ..., parts...}} (detached, on the device)."""
    if len(nets) == 1:
        step = step_single
    else:
        step = step_sequential if cfg.mutual_schedule == "sequential" else step_simultaneous
    return step(nets, optims, scaler, objective, images, target, autocast)


class LossMeter:
    """An epoch's training losses, summed on the device, with a deferred NaN/inf check.

    Reading a value back from a GPU (`.item()`, `if loss:`) makes the host wait until the GPU has caught up, which
    empties the queue of launched kernels; done every step it costs most where steps are short (the RMI use-case's
    batch of 2).  So the losses stay on the device and `first_nonfinite()` inspects every step since its previous
    call with one read-back.
    """

    def __init__(self):
        self.sums: dict[str, dict[str, torch.Tensor]] = {}  # {net: {part: sum of value * batch size}}
        self.seen = 0  # samples
        self._pending: list[tuple[int, dict[str, torch.Tensor]]] = []  # [(step, {net: loss})] not yet checked

    def add(self, step: int, losses: dict[str, dict[str, torch.Tensor]], batch_size: int) -> None:
        """losses: train_step's {net: {"loss": scalar, part: scalar}} (detached)."""
        for name, parts in losses.items():
            sums = self.sums.setdefault(name, {})
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.float() * batch_size
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

    def means(self, ctx: Context) -> dict[str, float]:
        """{"<net>/train_<part>": mean over the epoch's samples (all ranks)}."""
        row = {}
        for name, sums in self.sums.items():
            totals = torch.stack([*sums.values(), torch.tensor(float(self.seen), device=next(iter(sums.values())).device)])
            totals = distributed.all_reduce_sum(totals.double(), ctx)
            for k, v in zip(sums, (totals[:-1] / totals[-1]).tolist()):
                row[f"{name}/train_{k}"] = v
        return row


def train_one_epoch(s: Setup, epoch: int, progress) -> dict:
    """Train every network for one epoch: the history row's training part (lr, time, images/s, mean losses).

    Raises NonFiniteLossError at the first NaN/inf loss, at most ``check_every`` steps late and always before the
    epoch ends, so nothing computed from it is ever saved.
    """
    for net in s.train_nets.values():
        net.train()
    loader = s.loaders["train"]
    loader.sampler.set_epoch(epoch)
    meter, t0 = LossMeter(), time.perf_counter()
    for step, (images, target, _) in enumerate(progress.steps(loader, epoch), start=1):
        images, target = s.to_device(images, target)
        if s.cuda_graphs:  # a new training iteration: the graphs' previous outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        lr = s.optims[s.cfg.networks[0]].param_groups[0]["lr"]  # the step's learning rate
        losses = train_step(s.train_nets, s.optims, s.scaler, s.objective, images, target, s.cfg, s.autocast)
        for scheduler in s.schedulers.values():
            scheduler.step()
        meter.add(step, losses, images.shape[0])
        if step % s.check_every == 0 or step == len(loader):
            bad = meter.first_nonfinite()
            if bad is not None:
                raise NonFiniteLossError(f"non-finite {bad[1]} loss ({bad[2]}) at epoch {epoch}, step {bad[0]}; stopped")
            progress.step_done(meter, time.perf_counter() - t0, s.ctx.world_size)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
            "images_per_second": round(meter.seen * s.ctx.world_size / seconds, 3), **meter.means(s.ctx)}


# ------------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(nets: dict[str, nn.Module], loader: DataLoader, num_classes: int, ctx: Context,
             autocast: Callable = contextlib.nullcontext, channels_last: bool = False, passes: int = 1,
             boundary_tolerance: float | None = None) -> dict[str, dict]:
    """Scores of every network on ``loader``'s split: {net: `SegmentationMetrics.compute()` + "per_image": every
    image's statistics (`SegmentationMetrics.per_image`)}.

    ``passes`` passes are pooled into one confusion matrix (new random crops per pass under the random-crop
    protocol, seeded); an image's counts add up over its passes.  Predictions whose size differs from the mask's
    ("full" protocol: the network saw the image at the training scale) are resized bilinearly to the mask, so scores
    are at the mask's resolution.  Every count is summed over DDP ranks.
    """
    n = len(loader.dataset)
    metrics = {name: SegmentationMetrics(num_classes, data.IGNORE_INDEX, boundary_tolerance, num_images=n)
               for name in nets}
    for net in nets.values():
        net.eval()
    for p in range(passes):
        loader.sampler.set_epoch(p)
        for images, target, index in loader:
            images = images.to(ctx.device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target, index = target.to(ctx.device, non_blocking=True), index.to(ctx.device)
            for name, net in nets.items():
                with autocast():
                    logits = net(images)
                logits = logits.float()
                if logits.shape[-2:] != target.shape[-2:]:
                    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                metrics[name].update(logits, target, index=index)  # class ids, boundaries, calibration, entropy
    result = {}
    for name, m in metrics.items():
        m.all_reduce()
        result[name] = {**m.compute(), "per_image": m.per_image()}
    return result


def load_network(run_dir, network: str, checkpoint: str = "best_miou", device="cpu") -> nn.Module:
    """A trained network of a run, in eval mode. checkpoint: best_miou | best_loss | last."""
    cfg = runs.load_config(run_dir)
    if network not in cfg.networks:
        raise ValueError(f"run {run_dir} trained {list(cfg.networks)}, not {network!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    path = runs.checkpoint_path(Path(run_dir), checkpoint, network)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has the run finished an epoch? best_miou needs a selection "
                                "split)")
    ckpt = safeload.load(path, "checkpoint")
    net = build_networks(cfg, names=(network,))[network]
    net.load_state_dict(ckpt["models"][network] if checkpoint == "last" else ckpt["model"])
    return net.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


def predict_samples(run_dir, indices, checkpoint: str = "best_miou", networks: list[str] | None = None,
                    device: str = "cpu") -> dict:
    """Validation samples of a run and its networks' predictions, for prediction figures.

    Returns {"images": [H, W, 3] display arrays in [0, 1], "targets": masks [H, W], "predictions": {network:
    masks}} for the validation items ``indices`` of the run's own data configuration (protocol, sizes, seed).
    Predictions are at the mask's resolution (the "full" protocol's images are resized for the network).
    """
    cfg = runs.load_config(run_dir)
    val_set = build_datasets(cfg)["val"]
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < len(val_set)]
    if bad:
        raise ValueError(f"validation indices {bad} out of range: the run's validation split has {len(val_set)} items")
    items = [SeededItems(val_set, cfg.seed)[i] for i in indices]  # pass 0: the crops the run was scored on
    out = {"images": [data.display_image(img, cfg.normalize) for img, _, _ in items],
           "targets": [mask.numpy() for _, mask, _ in items], "predictions": {}}
    dev = resolve_device(device)
    for network in networks or list(cfg.networks):
        net = load_network(run_dir, network, checkpoint, dev)
        masks = []
        with torch.no_grad():
            for img, mask, _ in items:  # one at a time: "full" images may differ in size
                logits = net(img[None].to(dev))
                if logits.shape[-2:] != mask.shape:
                    logits = F.interpolate(logits, size=tuple(mask.shape), mode="bilinear", align_corners=False)
                masks.append(logits.argmax(1)[0].cpu().numpy())
        out["predictions"][network] = masks
    return out
