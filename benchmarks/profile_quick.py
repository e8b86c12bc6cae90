"""Where the quick profile's time goes, per use-case: data, forward, loss, backward, optimiser, evaluation (issue 22).

    python benchmarks/profile_quick.py                         # the quick profile as this CPU runs it
    python benchmarks/profile_quick.py --set amp=off --set channels_last=false
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/profile_quick.py --set amp=off   # an AVX2 CPU
    python benchmarks/profile_quick.py --flops                 # also DeepLabV3's FLOPs by part at the quick size
    PYTHONPATH=<an older checkout> python benchmarks/profile_quick.py   # the same measurement of older code

For each use-case it builds the run exactly as `mistudy.training.train.train` does (`engine.setup` with the quick profile's
settings plus any --set), then times, on one epoch after a warm-up epoch: drawing the training batches (the
loader alone), each phase of the step (forward passes, losses, backward passes, optimiser steps; the sequential
mutual step's three passes), and the epoch's evaluation of the selection and validation splits.  Prints one
table row per use-case with seconds per epoch and each part's share, and the projected time of the use-case's
training (epochs x epoch).  Phases are timed with wall clocks around synchronous CPU work (no CUDA).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from mistudy.training import engine

try:
    from mistudy.training.networks import frozen_bn_stats
except ImportError:  # the package before its engine was split (to profile the code as it was)
    from mistudy.training.engine import frozen_bn_stats
from mistudy.training.config import parse_assignments, study_config
from mistudy.training.distributed import Context

PHASES = ("data", "forward", "loss", "backward", "optimizer", "evaluation")


class Timer:
    def __init__(self):
        self.seconds = defaultdict(float)

    def __call__(self, phase):
        timer = self

        class _Block:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[phase] += time.perf_counter() - self.t0

        return _Block()


def timed_update(timer, optim, loss):
    optim.zero_grad(set_to_none=True)
    with timer("backward"):
        loss.backward()
    with timer("optimizer"):
        optim.step()


def timed_step(s, images, target, timer):
    """The engine's step for the use-case, phase by phase (same operations as engine.step_single/sequential)."""
    nets, objective = s.train_nets, s.objective
    names = list(nets)
    if len(names) == 1:
        with timer("forward"), s.autocast():
            logits = nets[names[0]](images)
        with timer("loss"):
            loss, _ = objective(logits, target)
        timed_update(timer, s.optims[names[0]], loss)
        return
    first, second = names
    with timer("forward"), s.autocast():
        logits1, logits2 = nets[first](images), nets[second](images)
    with timer("loss"):
        loss1, _ = objective(logits1, target, logits2)
    timed_update(timer, s.optims[first], loss1)
    with timer("forward"), torch.no_grad(), frozen_bn_stats(nets[first]), s.autocast():
        logits1 = nets[first](images)
    with timer("loss"):
        loss2, _ = objective(logits2, target, logits1)
    timed_update(timer, s.optims[second], loss2)


def profile(use_case: str, overrides: dict) -> dict:
    cfg = study_config(use_case, "quick", {"device": "cpu", "progress": "none", **overrides})
    s = engine.setup(cfg, Context(0, 1, torch.device("cpu")))
    loader = s.loaders["train"]
    for epoch in (1, 2):  # epoch 1 warms up allocators and oneDNN primitives; epoch 2 is timed
        timer = Timer()
        loader.sampler.set_epoch(epoch)
        for net in s.train_nets.values():
            net.train()
        it = iter(loader)
        while True:
            with timer("data"):
                batch = next(it, None)
            if batch is None:
                break
            images, target = s.to_device(*batch[:2])
            timed_step(s, images, target, timer)
        with timer("evaluation"):
            for split in ("select", "val"):
                if split in s.loaders:
                    s.evaluate(split)
    total = sum(timer.seconds.values())
    return {"use_case": use_case, "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile,
            "epoch_s": total, "run_s": total * cfg.epochs, **{p: timer.seconds[p] for p in PHASES}}


def deeplab_flops(size: int = 64, num_classes: int = 7) -> list[tuple[str, float]]:
    """Forward GFLOPs of DeepLabV3-ResNet50 per image at size x size, by part (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mistudy.methods.models import build_model

    net = build_model("deeplabv3_resnet50", num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 3, size, size))
    by_module = counter.get_flop_counts()
    parts = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    rows = [(p, sum(by_module.get(f"DeepLabV3.net.backbone.{p}", {}).values()) / 1e9) for p in parts]
    for i, name in enumerate(["1x1 branch", "3x3 rate 12", "3x3 rate 24", "3x3 rate 36", "pooling branch"]):
        rows.append((f"ASPP {name}", sum(by_module.get(f"DeepLabV3.net.classifier.0.convs.{i}", {}).values()) / 1e9))
    head = sum(by_module.get("DeepLabV3.net.classifier", {}).values()) / 1e9
    rows.append(("ASPP projection + head convs", head - sum(v for n, v in rows if n.startswith("ASPP"))))
    rows.append(("total", sum(by_module.get("DeepLabV3", {}).values()) / 1e9))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--use-case", nargs="+", default=["baseline", "rmi", "mutual"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--flops", action="store_true", help="also print DeepLabV3's forward FLOPs by part")
    args = p.parse_args()
    torch.manual_seed(0)
    overrides = parse_assignments(args.overrides)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, overrides {overrides or 'none'}")
    print("| use-case | amp | channels-last | epoch s | run s | " + " | ".join(f"{p} s (%)" for p in PHASES) + " |")
    print("|---" * (5 + len(PHASES)) + "|")
    for use_case in args.use_case:
        r = profile(use_case, overrides)
        cells = [f"{r[p]:.2f} ({100 * r[p] / r['epoch_s']:.0f}%)" for p in PHASES]
        print(f"| {use_case} | {r['amp']} | {r['channels_last']} | {r['epoch_s']:.1f} | {r['run_s']:.0f} | "
              + " | ".join(cells) + " |", flush=True)
    if args.flops:
        print("\n| DeepLabV3-ResNet50 part (64x64 input, output stride 8) | forward GFLOPs |\n|---|---|")
        for name, gflops in deeplab_flops():
            print(f"| {name} | {gflops:.3f} |")


if __name__ == "__main__":
    main()
