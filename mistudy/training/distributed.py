"""torch.distributed for `torchrun`: process group, this process's rank and device, and the few collectives
the training loop needs.  Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op on one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' on a machine without CUDA raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast is 1.5-2x faster
    than float32 for these networks (measured: README "Speed"); elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_name(device: torch.device) -> str:
    """'cpu' or e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)', for metrics.json and figure provenance."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def init(device_option: str) -> Context:
    """Join the torchrun process group if there is one (NCCL on GPUs, gloo on CPU) and pick this rank's device."""
    device = resolve_device(device_option)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Context(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return Context(dist.get_rank(), dist.get_world_size(), device)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (itself on one process), on the tensor's device."""
    if not ctx.distributed:
        return tensor
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = tensor.to(on).clone()
    dist.all_reduce(out)
    return out.to(tensor.device)


def broadcast_buffers(nets: dict[str, nn.Module], ctx: Context) -> None:
    """Give every rank rank 0's BatchNorm running statistics (DDP keeps them per rank between forwards), so that
    distributed evaluation and the saved checkpoint use the same weights."""
    if not ctx.distributed:
        return
    for net in nets.values():
        for buf in unwrap(net).buffers():
            dist.broadcast(buf, src=0)


def wrap(nets: dict[str, nn.Module], ctx: Context) -> dict[str, nn.Module]:
    """DistributedDataParallel around each network under torchrun."""
    if not ctx.distributed:
        return nets
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return {n: nn.parallel.DistributedDataParallel(net, device_ids=ids) for n, net in nets.items()}


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers."""
    net = getattr(net, "_orig_mod", net)
    net = getattr(net, "module", net)
    return getattr(net, "_orig_mod", net)
