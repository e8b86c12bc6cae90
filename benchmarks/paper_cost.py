"""The paper study's cost, projected (issue 30): for each use-case and dataset at the paper's settings (resize 234,
crop 224, the whole training list less the 10 % selection split, 200 epochs, one validation per epoch):

* training FLOPs per image, counted by torch's FlopCounterMode on the meta device (no compute): forward + backward
  of each network, plus the recomputed forward of Zhang et al.'s Algorithm 1 for mutual learning;
* images per epoch (the official list sizes; voc_aug: the 10,582 images of VOC train + SBD);
* the data pipeline's images/s measured on this CPU, one process, at real image sizes -- VOC: 500x375 JPEG,
  Cityscapes: 2048x1024 PNG; decode, resize, random crop -- without and with the resized cache (`--cache-dir`);
* the projected time on one H100: the larger of the compute time (FLOPs / (peak x utilisation)) and the data time
  (images / (measured rate x loader workers)), naming which bounds it.

    .venv/bin/python benchmarks/paper_cost.py [--images 16] [--utilisation 0.1] [--peak-tflops 989] [--workers 8]

A projection until a GPU measures it (benchmarks/gpu_check.sh).  The utilisation is an assumption, not a
measurement: small batches (rmi: 2) keep a GPU far below its peak.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loader import epoch_rate, write_voc_tree  # noqa: E402

from mistudy.data import build_dataset, dataset_info  # noqa: E402
from mistudy.methods.models import build_model  # noqa: E402
from mistudy.training.config import PROFILES, USE_CASES  # noqa: E402

# The official list sizes (train, val); the paper profile holds select_fraction of train out for model selection.
OFFICIAL = {"voc": (1464, 1449), "voc_aug": (10582, 1449), "cityscapes": (2975, 500)}
REAL_SIZES = {"voc": (500, 375), "cityscapes": (2048, 1024)}  # (width, height) of a typical image
SAME_IMAGES = {"voc_aug": "voc"}  # VOC's JPEGs: the pipeline's rate is VOC's


def gflops(network: str, num_classes: int, size: int) -> tuple[float, float]:
    """(forward, backward) GFLOPs per image of ``network`` at size x size, counted on the meta device."""
    net = build_model(network, num_classes).to("meta").train()
    x = torch.empty(2, 3, size, size, device="meta")  # 2: DeepLabV3's ASPP pooling needs a batch in training
    with FlopCounterMode(display=False) as forward:
        out = net(x)
    with FlopCounterMode(display=False) as backward:
        out.sum().backward()
    return forward.get_total_flops() / 2e9, backward.get_total_flops() / 2e9


def write_cityscapes_tree(root: Path, count: int, width: int, height: int) -> None:
    """``count`` train images (RGB PNG) and labelIds PNGs in the Cityscapes layout (one city)."""
    rng = np.random.default_rng(0)
    images, labels = root / "leftImg8bit" / "train" / "bench", root / "gtFine" / "train" / "bench"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        stem = f"bench_{i:06d}_000019"
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(images / f"{stem}_leftImg8bit.png")
        ids = np.kron(rng.choice([7, 8, 11, 21, 23, 24, 26], size=(height // 64, width // 64)),
                      np.ones((64, 64), dtype=np.uint8)).astype(np.uint8)
        Image.fromarray(ids).save(labels / f"{stem}_gtFine_labelIds.png")


def pipeline_rates(dataset: str, count: int, repeats: int) -> dict[str, float]:
    """{"no cache", "cache"}: training images/s of one process at the paper's sizes (best of ``repeats``)."""
    paper = PROFILES["paper"]
    with tempfile.TemporaryDirectory(prefix="mistudy-cost-") as tmp:
        root = Path(tmp)
        (write_voc_tree if dataset == "voc" else write_cityscapes_tree)(root, count, *REAL_SIZES[dataset])
        kw = dict(train=True, resize_size=paper["resize_size"], crop_size=paper["crop_size"])
        cached = build_dataset(dataset, "train", root, cache_dir=root / "cache", **kw)
        plain = build_dataset(dataset, "train", root, **kw)
        return {label: max(epoch_rate(ds, 0, 8, 1) for _ in range(repeats))
                for label, ds in (("no cache", plain), ("cache", cached))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="images written per dataset for the pipeline's rate")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--utilisation", type=float, default=0.1, help="assumed share of the peak reached")
    p.add_argument("--workers", type=int, default=8, help="loader processes on the GPU machine (the CUDA default)")
    args = p.parse_args()
    torch.set_num_threads(1)
    paper, size, epochs = PROFILES["paper"], PROFILES["paper"]["crop_size"], PROFILES["paper"]["epochs"]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.peak_tflops:g} TFLOP/s at {args.utilisation:.0%}, {args.workers} loader workers\n")
    rows, measured = [], {}
    for dataset, (n_train, n_val) in OFFICIAL.items():
        classes = dataset_info(dataset).num_classes
        flops = {n: gflops(n, classes, size) for n in ("unet", "deeplabv3")}
        source = SAME_IMAGES.get(dataset, dataset)
        rates = measured[source] = measured.get(source) or pipeline_rates(source, args.images, args.repeats)
        n_select = round(paper["select_fraction"] * n_train)
        for use_case, recipe in USE_CASES.items():
            nets = recipe["networks"]
            train = sum(sum(flops[n]) for n in nets) + (flops["deeplabv3"][0] if use_case == "mutual" else 0)
            evaluate = sum(flops[n][0] for n in nets)
            epoch_gflop = (n_train - n_select) * train + (n_select + n_val) * evaluate
            compute = epochs * epoch_gflop / (args.peak_tflops * 1e3 * args.utilisation) / 60
            data = {k: epochs * (n_train + n_val) / (r * args.workers) / 60 for k, r in rates.items()}
            bound = max(compute, data["cache"])
            steps = epochs * -(-(n_train - n_select) // recipe["batch_size"])
            rows.append(f"| {use_case} | {dataset} | {train:.0f} / {evaluate:.0f} | "
                        f"{n_train - n_select} + {n_select} + {n_val} | {steps:,} | "
                        f"{rates['no cache']:.0f} / {rates['cache']:.0f} | {compute:.0f} | "
                        f"{data['no cache']:.0f} / {data['cache']:.0f} | "
                        f"{bound:.0f} ({'compute' if compute >= data['cache'] else 'data'}) |")
    print("| use-case | dataset | GFLOP per image, training / evaluation | images per epoch (train + select + val) | "
          "training steps (paper batch) | pipeline images/s, 1 CPU process (decode / cache) | compute min | "
          f"data min (decode / cache) | projected min for {epochs} epochs, with the cache (bound) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
