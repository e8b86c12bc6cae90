"""Does a network's CPU arithmetic depend on torch's thread count?  For each network: one training step (forward,
cross-entropy, backward) at 1 thread and at ``--threads`` threads, from the same weights and batch, and the first
layer (in execution order) whose output differs bit for bit, with the largest difference.

    python benchmarks/thread_reproducibility.py                       # the default profile's networks and size
    python benchmarks/thread_reproducibility.py --no-mkldnn           # the same with oneDNN off (MKL's gemm path)
    python benchmarks/thread_reproducibility.py --contiguous          # the contiguous layout, not channels-last

What it found is in benchmarks/README.md ("Thread count and reproducibility"): every network's step differs
between 1 and 2 threads, because long sums (batch-norm statistics in channels-last, convolution weight gradients,
DeepLabV3's wide 1x1 convolutions) are split over threads and float32 addition is not associative.  The answer
depends on the CPU and the libraries' kernel choices, so this is a measurement to rerun, not a test.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mistudy.training.config import resolve_profile, study_config
from mistudy.training.networks import build_networks, use_channels_last


def one_step(model: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor, threads: int):
    """(every leaf module's output in execution order, every parameter's gradient) of one step at ``threads``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)  # the same dropout masks (DeepLabV3's head) in both steps
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outputs.append((name, o.detach().clone())))
             for name, m in model.named_modules() if not list(m.children())]
    out = model(x)
    F.cross_entropy(out["out"] if isinstance(out, dict) else out, y).backward()
    for h in hooks:
        h.remove()
    return outputs, {n: p.grad.clone() for n, p in model.named_parameters()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default=None, help="batch, crop size, U-Net width, memory format (default: the "
                   "default profile, env MISTUDY_PROFILE)")
    p.add_argument("--threads", type=int, default=2, help="compared with 1 thread (default: 2)")
    p.add_argument("--no-mkldnn", action="store_true", help="turn oneDNN off (convolutions through MKL's gemm)")
    p.add_argument("--contiguous", action="store_true", help="the contiguous memory layout, not the profile's")
    args = p.parse_args()
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    args.profile = resolve_profile(args.profile)
    cfg = study_config("mutual", args.profile)  # the study's networks: the U-Net and its DeepLabV3 partner
    size, batch, classes = cfg.crop_size, cfg.batch_size, 4
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, classes, (batch, size, size), generator=gen)
    channels_last = use_channels_last(cfg, torch.device("cpu")) and not args.contiguous
    print(f"{args.profile}: batch {batch}, {size}x{size}, channels_last {channels_last}, float32, oneDNN "
          f"{'on' if torch.backends.mkldnn.enabled else 'off'}; 1 thread against {args.threads}")
    torch.manual_seed(0)
    for name, model in build_networks(cfg, classes).items():
        model = (model.to(memory_format=torch.channels_last) if channels_last else model).train()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        out1, grad1 = one_step(model, state, x, y, 1)
        out2, grad2 = one_step(model, state, x, y, args.threads)
        first = next(((n, (a - b).abs().max().item()) for (n, a), (_, b) in zip(out1, out2) if not torch.equal(a, b)),
                     None)
        grads = sum(not torch.equal(grad1[n], grad2[n]) for n in grad1)
        where = "identical forward" if first is None else f"forward first differs at {first[0]} (max {first[1]:.2e})"
        print(f"{name}: {where}; {grads} of {len(grad1)} gradients differ")


if __name__ == "__main__":
    main()
