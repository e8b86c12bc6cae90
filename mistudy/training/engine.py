"""The training engine: the set-up of a run, one optimisation step per use-case, one epoch.

`mistudy.training.train.train` strings these together with the loaders (`mistudy.training.loaders`), the networks
(`mistudy.training.networks`) and the scoring (`mistudy.training.inference`); `benchmarks/bench_train.py` times the same `setup` and
`train_step`.  The three use-cases (paper section 3.2):

    baseline  U-Net, cross-entropy
    rmi       U-Net, bce_weight * BCE + (1 - bce_weight) * RMI              (Zhao et al. 2019)
    mutual    DeepLabV3-ResNet50 and U-Net, each CE + kl_weight * KL(p_other || p_self)   (Zhang et al. 2018)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mistudy import data
from mistudy.methods.losses import RMILoss, cross_entropy_loss, mutual_kl
from mistudy.training import distributed, inference
from mistudy.training.config import TrainConfig
from mistudy.training.distributed import Context, unwrap
from mistudy.training.loaders import build_datasets, make_loader, to_device
from mistudy.training.networks import (
    amp_dtype,
    autocast_for,
    build_networks,
    build_optimizers,
    build_schedulers,
    compile_networks,
    finite_check_interval,
    frozen_bn_stats,
    place_networks,
    seed_everything,
    use_channels_last,
)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


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
        return to_device(images, target, self.ctx.device, self.channels_last)

    def evaluate(self, split: str, nets: dict[str, nn.Module] | None = None) -> dict[str, dict]:
        return inference.evaluate(nets or {n: unwrap(net) for n, net in self.train_nets.items()}, self.loaders[split],
                                  self.num_classes, self.ctx, self.autocast, self.channels_last,
                                  self.cfg.resolved_eval_passes, self.cfg.boundary_tolerance, self.cfg.probabilities)


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
    per_rank = len(loaders["train"].sampler)  # samples
    if per_rank == 0 or (per_rank == 1 and "deeplabv3" in cfg.networks):
        raise ValueError(f"the training split of {cfg.dataset} has {len(datasets['train'])} samples: too few for one "
                         "batch" + (" of 2, which DeepLabV3's BatchNorm needs (see train_samples)" if per_rank else ""))
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
            return self.rmi.combine(parts), parts
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
            progress.step_done(meter, time.perf_counter() - t0, s.ctx.world_size, step)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
            "images_per_second": round(meter.seen * s.ctx.world_size / seconds, 3), **meter.means(s.ctx)}


