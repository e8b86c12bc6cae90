"""RMI loss: mistudy.methods.losses.RMILoss against the straightforward formula (issue 5, target 1).

    .venv/bin/python benchmarks/bench_rmi.py                  # CPU, batch 2 and 8 (a few minutes)
    .venv/bin/python benchmarks/bench_rmi.py --device cuda    # on a GPU

The straightforward formula is tests/rmi_reference.py: stack the radius**2 shifted copies of both
maps, cast to float64, three batched matmuls, an explicit inverse, plain autograd. Both variants
get the same inputs (21 classes, 224x224, radius 3, no pooling by default, blocky random labels
with an ignored frame) and run forward + backward of the whole loss (BCE part included).

Printed per batch size and variant:
- ms: wall time of forward + backward over --repeats runs (after --warmup runs), the two
  variants interleaved so that load from other processes hits both alike; the median and the
  best run are printed, and the speed-up is the ratio of the best runs (as timeit does: other
  processes only ever add time). The 1-minute load average is printed too: on a machine
  busier than its core count, CPU timings of many small ops (the fast path) suffer most;
- peak MiB: extra memory at the peak of one forward + backward (including the logits' copy and
  its gradient, alike for both), above what is in use once the inputs exist. On CPU each
  variant runs in a fresh subprocess: it allocates the inputs, runs a tiny warm-up (so lazily
  loaded kernels and thread pools are not counted), resets the kernel's peak-RSS counter
  (writing 5 to /proc/self/clear_refs), reads VmRSS, runs once and reports VmHWM - VmRSS.
  Where clear_refs is unavailable it falls back to ru_maxrss after minus ru_maxrss before the
  run (a lower bound). On CUDA: torch.cuda.max_memory_allocated() minus memory_allocated()
  before the run, in-process after reset_peak_memory_stats();
- rel value / rel grad: |fast - ref| / |ref| of the loss, and max |grad_fast - grad_ref| /
  max |grad_ref| of d loss / d logits, for the timed random logits and for "trained" logits
  (pushed towards the labels, where the covariance algebra cancels most).
The script exits non-zero if a target (>= 3x faster, >= 3x less peak memory, rel diffs <= 1e-5)
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Idle OpenMP threads spin-wait by default. When other processes compete for the cores, every
# parallel region can then wait a scheduler slice for a descheduled spinner, and a loss made of
# hundreds of small ops (the fast path) would measure the machine's load, not the code (seen:
# 10x swings at load 4 on 2 cores). PASSIVE applies to both variants; it must be set before the
# OpenMP runtime loads. Export OMP_WAIT_POLICY=ACTIVE to measure with spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rmi_reference import rmi_loss_reference  # noqa: E402

from mistudy.methods.losses import RMILoss  # noqa: E402

IGNORE = 255
TARGET_SPEEDUP = 3.0
TARGET_MEMORY = 3.0
TARGET_REL_DIFF = 1e-5


def make_inputs(batch: int, classes: int, size: int, device: str, trained: bool = False, seed: int = 0):
    """logits [N, C, S, S] float32 and blocky labels [N, S, S] with a 4-pixel ignored frame."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, classes, (batch, 1, size // 16 + 1, size // 16 + 1), generator=g)
    target = F.interpolate(blocks.float(), scale_factor=16, mode="nearest")[:, 0, :size, :size].long()
    logits = torch.randn(batch, classes, size, size, generator=g)
    if trained:
        onehot = F.one_hot(target, classes).permute(0, 3, 1, 2).float()
        logits = logits + 8.0 * (2 * onehot - 1)
    target[:, :4], target[:, -4:], target[:, :, :4], target[:, :, -4:] = IGNORE, IGNORE, IGNORE, IGNORE
    return logits.to(device), target.to(device)


def loss_fn(variant: str, args):
    kwargs = dict(radius=args.radius, pool=args.pool, pool_size=args.pool_size, ignore_index=IGNORE)
    if variant == "fast":
        return RMILoss(args.classes, **kwargs)
    return lambda logits, target: rmi_loss_reference(logits, target, args.classes, **kwargs)


def forward_backward(fn, logits, target):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(args, batch: int) -> dict[str, list[float]]:
    logits, target = make_inputs(batch, args.classes, args.size, args.device)
    fns = {v: loss_fn(v, args) for v in ("fast", "reference")}
    times = {v: [] for v in fns}
    for i in range(args.warmup + args.repeats):
        for variant, fn in fns.items():
            sync(args.device)
            start = time.perf_counter()
            forward_backward(fn, logits, target)
            sync(args.device)
            if i >= args.warmup:
                times[variant].append(1000 * (time.perf_counter() - start))
    return times


def accuracy(args, batch: int, trained: bool) -> tuple[float, float]:
    logits, target = make_inputs(batch, args.classes, args.size, args.device, trained=trained, seed=1)
    fast, fast_grad = forward_backward(loss_fn("fast", args), logits, target)
    ref, ref_grad = forward_backward(loss_fn("reference", args), logits, target)
    rel_value = (abs(fast.double() - ref.double()) / abs(ref.double())).item()
    rel_grad = ((fast_grad.double() - ref_grad.double()).abs().max() / ref_grad.double().abs().max()).item()
    return rel_value, rel_grad


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_mib_here(args, variant: str, batch: int) -> float:
    """Peak extra MiB of one forward + backward in this process (see the module docstring)."""
    fn = loss_fn(variant, args)
    forward_backward(fn, *make_inputs(1, args.classes, 16, args.device))  # warm-up, not counted
    logits, target = make_inputs(batch, args.classes, args.size, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward(fn, logits, target)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        before = _proc_status_kib("VmRSS")
        forward_backward(fn, logits, target)
        return (_proc_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        forward_backward(fn, logits, target)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def peak_mib(args, variant: str, batch: int) -> float:
    if args.device == "cuda":
        return peak_mib_here(args, variant, batch)
    cmd = [sys.executable, __file__, "--peak-child", variant, "--batch", str(batch)]
    for name in ("device", "classes", "size", "radius", "pool", "pool_size", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--radius", type=int, default=3)
    parser.add_argument("--pool", default="none", choices=["none", "max", "avg"])
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 5 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--peak-child", choices=["fast", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")

    if args.peak_child:
        print(json.dumps({"peak_mib": peak_mib_here(args, args.peak_child, args.batch[0])}))
        return 0

    args.repeats = args.repeats or (5 if args.device == "cpu" else 20)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"RMI loss forward+backward: {args.classes} classes, {args.size}x{args.size}, "
          f"radius {args.radius}, pool {args.pool}; {device_name}; torch {torch.__version__}; "
          f"{args.repeats} timed runs; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    header = (f"{'batch':>5} {'variant':>9} {'median ms':>10} {'best ms':>8} {'peak MiB':>9} "
              f"{'speed-up':>9} {'mem ratio':>9} {'rel value':>10} {'rel grad':>9} "
              f"{'trained: rel value':>19} {'rel grad':>9}")
    print(header)
    print("-" * len(header))
    ok = True
    for batch in args.batch:
        times = time_variants(args, batch)
        median = {v: statistics.median(t) for v, t in times.items()}
        best = {v: min(t) for v, t in times.items()}
        mib = {v: peak_mib(args, v, batch) for v in ("fast", "reference")}
        rel_value, rel_grad = accuracy(args, batch, trained=False)
        trained_value, trained_grad = accuracy(args, batch, trained=True)
        speedup = best["reference"] / best["fast"]
        mem_ratio = mib["reference"] / max(mib["fast"], 1e-9)
        for v in ("reference", "fast"):
            row = f"{batch:>5} {v:>9} {median[v]:>10.1f} {best[v]:>8.1f} {mib[v]:>9.1f}"
            if v == "fast":
                row += (f" {speedup:>8.1f}x {mem_ratio:>8.1f}x {rel_value:>10.2e} {rel_grad:>9.2e} "
                        f"{trained_value:>19.2e} {trained_grad:>9.2e}")
            print(row)
        ok &= speedup >= TARGET_SPEEDUP and mem_ratio >= TARGET_MEMORY
        ok &= max(rel_value, rel_grad, trained_value, trained_grad) <= TARGET_REL_DIFF
    if args.device == "cpu":
        load = os.getloadavg()[0]
        note = " (busier than the cores: timings are noisy)" if load > os.cpu_count() else ""
        print(f"load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores{note}")
    print(f"targets (>= {TARGET_SPEEDUP:g}x faster, >= {TARGET_MEMORY:g}x less peak memory, "
          f"rel diffs <= {TARGET_REL_DIFF:g}): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
