"""The networks of a run on their device: building them (from local weights if configured), memory format,
precision (autocast), torch.compile, optimisers and learning-rate schedules, BatchNorm bookkeeping and RNG state."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Callable

import numpy as np
import torch
from torch import nn

from mistudy import data
from mistudy.methods.models import build_model, load_unet_weights, weights_file
from mistudy.training.config import TrainConfig
from mistudy.training.distributed import Context

# --------------------------------------------------------------------------------- networks and precision

def build_networks(cfg: TrainConfig, num_classes: int | None = None,
                   names: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The use-case's networks (or those of ``names``), untrained (from the weights files cfg names, a torchvision
    weights name read from torch's hub cache)."""
    num_classes = num_classes or data.dataset_info(cfg.dataset).num_classes
    deeplab = {option: weights_file(option, value) if (value := getattr(cfg, option)) else None
               for option in ("deeplab_weights", "deeplab_backbone_weights")}
    nets = {}
    for name in names or cfg.networks:
        if name in ("unet", "unet_peer"):  # the peer is built first: another initialisation from the same seed
            nets[name] = build_model("unet", num_classes, init_features=cfg.unet_features)
            if name == "unet" and cfg.unet_weights:
                load_unet_weights(nets[name], cfg.unet_weights, cfg.unet_head)
        else:
            nets[name] = build_model("deeplabv3_resnet50", num_classes, weights_path=deeplab["deeplab_weights"],
                                     backbone_weights_path=deeplab["deeplab_backbone_weights"], head=cfg.deeplab_head)
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


