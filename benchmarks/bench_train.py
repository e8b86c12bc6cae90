"""Training throughput of the three use-cases at the paper's batch sizes (issue 3, issue 5 target 3).

    python benchmarks/bench_train.py                       # CPU, 224x224, paper batch sizes
    python benchmarks/bench_train.py --device cuda --compile
    python benchmarks/bench_train.py --size 128 --steps 3  # quicker
    python benchmarks/bench_train.py --size 64 --num-classes 7 --batch-size 16 --amp bf16 --channels-last --compare
    python benchmarks/bench_train.py --device cuda --compile --steps 20 --project   # issue 5, target 4
    python benchmarks/bench_train.py --device cuda --compile --compile-mode reduce-overhead --use-case rmi

For each use-case it times the engine's step as `mistudy.training.train.train` runs it (`engine.setup` and
`engine.train_step` with AMP,
channels_last and fused Adam on CUDA, losses summed on the device by `LossMeter` and checked for NaN every
`finite_check_interval` steps; with --compile-mode reduce-overhead, CUDA graphs) and,
with --compare, a plain fp32 loop with the same models and losses, and for `mutual` the authors' scheme of
six forward passes per step against the engine's three. Prints images/s, seconds/step, peak memory and, on
CUDA, model FLOP utilisation (forward+backward: U-Net ~55.6 GFLOP, DeepLabV3-ResNet50 ~188 GFLOP per
224x224 image, scaled by area; the peak is --peak-tflops).
Peak memory: CUDA: torch.cuda.max_memory_allocated; CPU: growth of the max RSS of a fresh process per row
(each row runs in its own subprocess) over its RSS once models and batch exist: activations, gradients and
optimiser state.
On CPU the engine's step and the plain fp32 loop are the same code unless --amp bf16 --channels-last (the quick and
standard profiles' CPU settings on CPUs with native bf16).
--project prints the projected wall time of the paper-scale study (VOC 1,464 + Cityscapes 2,975 training
images, 200 epochs, the three use-cases, validation of VOC 1,449 + Cityscapes 500 images every epoch) from
the measured training and validation throughput on synthetic batches of the same size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from mistudy.training import engine
from mistudy.training.config import TrainConfig
from mistudy.training.distributed import Context

GFLOP_224 = {"unet": 55.6, "deeplabv3": 188.0}


def current_rss_kib() -> int:
    """Resident set size now (not the high-water mark), from /proc/self/statm."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def synthetic_batch(batch, size, num_classes, device, gen):
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    target = torch.randint(0, num_classes, (batch, size, size), generator=gen).to(device)
    return images, target


def six_pass_step(nets, optims, objective, images, target):
    """The paper authors' mutual step: both networks forwarded again for every loss (6 passes)."""
    (n1, net1), (n2, net2) = nets.items()
    for name, other in ((n1, n2), (n2, n1)):
        p_self, p_other = nets[name](images), nets[other](images)  # passes 1-2 / 4-5
        loss, _ = objective(p_self, target, p_other)
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        optims[name].step()
        with torch.no_grad():
            nets[name](images)  # pass 3 / 6: the prediction recomputed for logging
    return {}


class FixedBatch(torch.utils.data.Dataset):
    """One synthetic batch as a dataset (the engine's loaders need one; the benchmark feeds the batch directly)."""

    def __init__(self, images, target):
        self.images, self.target = images.cpu(), target.cpu()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.target[i]


def bench(use_case, args, device, variant):
    engine_row = variant == "engine"
    cfg = TrainConfig(use_case=use_case, dataset="synthetic", device=str(device), progress="none",
                      amp=args.amp if engine_row else "off", channels_last=args.channels_last if engine_row else False,
                      compile=args.compile and engine_row,
                      compile_mode=args.compile_mode if args.compile and engine_row else "default",
                      batch_size=args.batch_size or None, crop_size=args.size, resize_size=args.size)
    num_classes, batch = args.num_classes, cfg.resolved_batch_size
    images, target = synthetic_batch(batch, args.size, num_classes, device, torch.Generator().manual_seed(0))
    # The engine's own set-up (networks, fused Adam, AMP, channels-last, compile) for the engine row; the plain rows
    # use the same networks with plain Adam in float32.
    batch_set = {"train": FixedBatch(images, target), "val": FixedBatch(images, target)}
    s = engine.setup(cfg, Context(0, 1, device), datasets=batch_set, num_classes=num_classes)
    nets, optims, meter = s.train_nets, s.optims, engine.LossMeter()
    if not engine_row:
        optims = {n: torch.optim.Adam(net.parameters(), lr=cfg.resolved_lr) for n, net in nets.items()}
    images, target = s.to_device(images, target)
    for net in nets.values():
        net.train()

    steps = iter(range(1, 10**9))

    def step():
        if variant == "six-pass":
            return six_pass_step(nets, optims, s.objective, images, target)
        if variant == "plain-fp32":
            return engine.train_step(nets, optims, s.scaler, s.objective, images, target, cfg, s.autocast)
        i = next(steps)
        if s.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        meter.add(i, engine.train_step(nets, optims, s.scaler, s.objective, images, target, cfg, s.autocast), batch)
        if i % s.check_every == 0 and meter.first_nonfinite() is not None:
            raise engine.NonFiniteLossError(f"{use_case}: non-finite loss at step {i}")

    rss0 = current_rss_kib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    ips = batch / seconds
    flop = sum(GFLOP_224[n] for n in nets) * (args.size / 224) ** 2 * 1e9 * batch
    if use_case == "mutual" and variant != "simultaneous":
        flop += GFLOP_224["deeplabv3"] / 3 * (args.size / 224) ** 2 * 1e9 * batch  # the recomputed forward
    mfu = flop / seconds / (args.peak_tflops * 1e12) if device.type == "cuda" else float("nan")
    eval_ips = float("nan")
    if args.project and variant == "engine":
        for net in nets.values():
            net.eval()
        with torch.no_grad(), s.autocast():
            for _ in range(args.warmup):
                [net(images) for net in nets.values()]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            for _ in range(args.steps):
                [net(images) for net in nets.values()]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        eval_ips = batch * args.steps / (time.perf_counter() - t1)
    return dict(use_case=use_case, variant=variant, batch=batch, s_per_step=seconds, img_s=ips, peak_mib=peak_mib,
                mfu=mfu, eval_img_s=eval_ips)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--batch-size", type=int, default=0, help="0 = the paper's batch size of each use-case")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--use-case", nargs="*", default=["baseline", "rmi", "mutual"])
    p.add_argument("--compare", action="store_true", help="also time a plain fp32 loop and the six-pass mutual step")
    p.add_argument("--amp", default="auto", help="the engine row's autocast: auto (bf16 on CUDA), bf16, fp16, off")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="the engine row's memory format (default: on for CUDA; the quick profile turns it on with bf16)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)")
    p.add_argument("--project", action="store_true", help="project the paper-scale study's wall time")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "use_case:variant", prints JSON
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON (benchmarks/gpu_check.py)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.one:
        uc, variant = args.one.split(":")
        print(json.dumps(bench(uc, args, device, variant)))
        return
    rows = []
    argv = sys.argv[1:]
    if "--json" in argv:  # the rows are written here, not by each row's subprocess
        i = argv.index("--json")
        argv = argv[:i] + argv[i + 2:]
    passthrough = [a for a in argv if a != "--compare"]
    for uc in args.use_case:
        variants = ["engine"]
        if args.compare:
            variants.append("plain-fp32")
            if uc == "mutual":
                variants.append("six-pass")
        for v in variants:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--one", f"{uc}:{v}"], capture_output=True,
                                 text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{r['use_case']:9s} {r['variant']:11s} batch {r['batch']:3d}  {r['s_per_step']:8.3f} s/step  "
                  f"{r['img_s']:8.2f} img/s  peak {r['peak_mib']:9.1f} MiB  MFU {format_mfu(r['mfu'])}", flush=True)
    print(f"\n| use-case | variant | batch | s/step | images/s | peak MiB | MFU |  ({device}, {args.size}x{args.size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['use_case']} | {r['variant']} | {r['batch']} | {r['s_per_step']:.3f} | {r['img_s']:.2f} | "
              f"{r['peak_mib']:.0f} | {format_mfu(r['mfu'])} |")
    if args.project:
        project(rows, args.size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_label(device), "torch": torch.__version__, "size": args.size,
                       "compile": args.compile, "compile_mode": args.compile_mode, "rows": rows,
                       "projected_hours": projected_hours(rows) if args.project else None}, f, indent=1)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def format_mfu(mfu: float) -> str:
    return "-" if mfu != mfu else f"{mfu:.1%}"  # NaN on CPU


PAPER_TRAIN_IMAGES = 1464 + 2975  # VOC 2012 train + Cityscapes train
PAPER_VAL_IMAGES = 1449 + 500
PAPER_EPOCHS = 200


def projected_hours(rows) -> dict[str, float]:
    """{use-case: hours} of the paper-scale study from the engine rows' training and validation throughput."""
    return {r["use_case"]: PAPER_EPOCHS * (PAPER_TRAIN_IMAGES / r["img_s"] + PAPER_VAL_IMAGES / r["eval_img_s"]) / 3600
            for r in rows if r["variant"] == "engine"}


def project(rows, size: int) -> None:
    total = 0.0
    print(f"\nProjected paper-scale study ({PAPER_TRAIN_IMAGES} train + {PAPER_VAL_IMAGES} val images x "
          f"{PAPER_EPOCHS} epochs, validation every epoch; data loading not included):")
    if size != 224:
        print(f"  measured at {size}x{size}, not the paper's 224x224 crops: run with --size 224 for the real figure")
    for r in rows:
        if r["variant"] != "engine":
            continue
        hours = PAPER_EPOCHS * (PAPER_TRAIN_IMAGES / r["img_s"] + PAPER_VAL_IMAGES / r["eval_img_s"]) / 3600
        total += hours
        print(f"  {r['use_case']:9s} {hours:8.2f} h  (train {r['img_s']:.1f} img/s, validation {r['eval_img_s']:.1f} img/s)")
    print(f"  total     {total:8.2f} h")


if __name__ == "__main__":
    main()
