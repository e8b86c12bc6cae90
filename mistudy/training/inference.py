"""Networks at work on saved runs and validation splits: one forward pass at the mask's resolution, shared by the
scoring of a split (`evaluate`) and the prediction figures (`predict_samples`), so the drawn masks are the scored
ones; and the networks of a saved run (`load_network`)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mistudy import data
from mistudy.io import safeload
from mistudy.methods.metrics import SegmentationMetrics
from mistudy.training import runs
from mistudy.training.config import CHECKPOINTS, WEIGHTS_OPTIONS
from mistudy.training.distributed import Context, resolve_device
from mistudy.training.loaders import SeededItems, build_datasets, make_loader, to_device
from mistudy.training.networks import amp_dtype, autocast_for, build_networks, use_channels_last


class NonFiniteOutputError(RuntimeError):
    """A network predicted NaN or infinite logits: its weights have diverged, nothing can be scored."""


def forward_at_mask(net: nn.Module, images: torch.Tensor, mask_size, autocast: Callable = contextlib.nullcontext
                    ) -> torch.Tensor:
    """float32 logits [N, C, h, w] of ``images`` [N, 3, H, W] at the mask's size (h, w): resized bilinearly when
    the network saw another size (the "full" protocol's images are resized for the network, masks never)."""
    with autocast():
        logits = net(images)
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(mask_size):
        logits = F.interpolate(logits, size=tuple(mask_size), mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(nets: dict[str, nn.Module], loader: DataLoader, num_classes: int, ctx: Context,
             autocast: Callable = contextlib.nullcontext, channels_last: bool = False, passes: int = 1,
             boundary_tolerance: float | None = None, probabilities: str = "softmax") -> dict[str, dict]:
    """Scores of every network on ``loader``'s split: {net: `SegmentationMetrics.compute()` + "per_image": every
    image's statistics (`SegmentationMetrics.per_image`)}.

    ``passes`` passes are pooled into one confusion matrix (new random crops per pass under the random-crop
    protocol, seeded); an image's counts add up over its passes.  Predictions whose size differs from the mask's
    ("full" protocol: the network saw the image at the training scale) are resized bilinearly to the mask, so scores
    are at the mask's resolution.  Every count is summed over DDP ranks.  ``probabilities``: how the networks' logits
    become the probabilities their loss trains (`metrics.PROBABILITIES`; `TrainConfig.probabilities`), for calibration
    and entropy; the softmax reading is kept beside it.  NaN or infinite
    logits raise NonFiniteOutputError.
    """
    n = len(loader.dataset)
    metrics = {name: SegmentationMetrics(num_classes, data.IGNORE_INDEX, boundary_tolerance, num_images=n,
                                         probabilities=probabilities) for name in nets}
    for net in nets.values():
        net.eval()
    for p in range(passes):
        loader.sampler.set_epoch(p)
        for images, target, index in loader:
            images, target = to_device(images, target, ctx.device, channels_last)
            index = index.to(ctx.device)
            for name, net in nets.items():
                logits = forward_at_mask(net, images, target.shape[-2:], autocast)
                if not bool(torch.isfinite(logits).all()):  # before any count: NaN would not bin
                    raise NonFiniteOutputError(f"{name} predicts non-finite logits (NaN or inf): its weights have "
                                               "diverged (too high a learning rate?)")
                metrics[name].update(logits, target, index=index)  # class ids, boundaries, calibration, entropy
    result = {}
    for name, m in metrics.items():
        m.all_reduce()
        result[name] = {**m.compute(), "per_image": m.per_image()}
    return result


def evaluate_on_val(nets: dict[str, nn.Module], cfg, device: str = "auto") -> dict[str, dict]:
    """Scores of ``nets`` on the validation split of ``cfg`` (a `TrainConfig`), as a run's evaluation scores them:
    its passes, boundary tolerance, probabilities, precision and memory format, on one process (`evaluate`)."""
    ctx = Context(0, 1, resolve_device(device))
    loader = make_loader(build_datasets(cfg)["val"], cfg, train=False, device=ctx.device)
    channels_last = use_channels_last(cfg, ctx.device)
    nets = {n: net.to(ctx.device) for n, net in nets.items()}
    if channels_last:
        nets = {n: net.to(memory_format=torch.channels_last) for n, net in nets.items()}
    return evaluate(nets, loader, data.dataset_info(cfg.dataset).num_classes, ctx,
                    autocast_for(amp_dtype(cfg, ctx.device), ctx.device), channels_last,
                    passes=cfg.resolved_eval_passes, boundary_tolerance=cfg.boundary_tolerance,
                    probabilities=cfg.probabilities)


def load_network(run_dir, network: str, checkpoint: str = "best_miou", device="cpu") -> nn.Module:
    """A trained network of a run, in eval mode. checkpoint: best_miou | best_loss | last."""
    runs.settle(run_dir)
    cfg = runs.load_config(run_dir)
    if network not in cfg.networks:
        raise ValueError(f"run {run_dir} trained {list(cfg.networks)}, not {network!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    path = runs.checkpoint_path(Path(run_dir), checkpoint, network)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has the run finished an epoch? best_miou needs a selection "
                                "split)")
    if checkpoint == "last":
        state = runs.load_last(path)["models"].get(network, {})
    else:
        state = safeload.require(safeload.load(path, "checkpoint"), ("model",), path, "checkpoint",
                                 "a best checkpoint holds one network's weights (a last.pt copied over it?)")["model"]
    # the checkpoint holds every weight: nothing is read from the files the run started from
    net = build_networks(cfg.replace(**dict.fromkeys(WEIGHTS_OPTIONS)), names=(network,))[network]
    safeload.load_weights(net, state, path, "checkpoint")
    return net.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


def predict_samples(run_dir, indices, checkpoint: str = "best_miou", networks: list[str] | None = None,
                    device: str = "cpu") -> dict:
    """Validation samples of a run and its networks' predictions, for prediction figures.

    Returns {"images": [H, W, 3] display arrays in [0, 1], "targets": masks [H, W], "predictions": {network:
    masks}} for the validation items ``indices`` of the run's own data configuration (protocol, sizes, seed).
    The networks run exactly as when the run was scored (`forward_at_mask`, with the run's precision and memory
    format), so the drawn masks are the scored ones.
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
    autocast = autocast_for(amp_dtype(cfg, dev), dev)
    channels_last = use_channels_last(cfg, dev)
    for network in networks or list(cfg.networks):
        net = load_network(run_dir, network, checkpoint, dev)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        masks = []
        with torch.no_grad():
            for img, mask, _ in items:  # one at a time: "full" images may differ in size
                images, _ = to_device(img[None], mask[None], dev, channels_last)
                masks.append(forward_at_mask(net, images, mask.shape, autocast).argmax(1)[0].cpu().numpy())
        out["predictions"][network] = masks
    return out
