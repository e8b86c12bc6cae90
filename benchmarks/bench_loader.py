"""Loader throughput (images/s) with and without the resized cache (issue 5, target 2).

Writes a VOC-layout tree of realistic size into a temporary directory -- by default 200 JPEG photos of 500x375
(VOC's typical size) with palette-PNG masks -- and times full epochs of the paper's training pipeline
(resize shorter side to 234, random crop 224, batches of 16) at num_workers 0 and 2:

    .venv/bin/python benchmarks/bench_loader.py [--images 200] [--workers 0 2] [--epochs 2] [--threads 1]

Each rate is the best of --repeats measurements (the machine may be shared).  --threads sets torch's intra-op
threads in the main process (DataLoader workers always use 1); the per-image ops are too small to gain from more.
Also prints the time to build the cache and the synthetic generator's cost per sample.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mistudy.data import build_dataset, synthetic_sample, voc_palette  # noqa: E402


def write_voc_tree(root: Path, count: int, width: int, height: int) -> None:
    """``count`` train images (JPEG, quality 90) and palette-PNG masks in the VOCdevkit/VOC2012 layout."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2012_{i:06d}" for i in range(count)]
    palette = voc_palette(256).ravel().tolist()
    for image_id in ids:
        # Photo-like content: smooth colour fields plus fine grain, so JPEGs have realistic sizes (~50-100 kB).
        coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(
            base / "JPEGImages" / f"{image_id}.jpg", quality=90)
        labels = np.zeros((height, width), dtype=np.uint8)
        for _ in range(3):  # a few rectangular "objects" with 255 outlines
            y0, x0 = rng.integers(0, height - 60), rng.integers(0, width - 60)
            y1, x1 = y0 + rng.integers(40, height - y0), x0 + rng.integers(40, width - x0)
            labels[y0:y1, x0:x1] = 255
            labels[y0 + 3:y1 - 3, x0 + 3:x1 - 3] = rng.integers(1, 21)
        mask = Image.fromarray(labels)
        mask.putpalette(palette)
        mask.save(base / "SegmentationClass" / f"{image_id}.png")
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))


def epoch_rate(dataset, workers: int, batch_size: int, epochs: int) -> float:
    """Images per second over ``epochs`` full passes (after one untimed batch to start the workers)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=False)
    next(iter(loader))
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _masks in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="mistudy-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_voc_tree(root, args.images, args.width, args.height)
        jpeg_kb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / args.images / 1024
        print(f"wrote {args.images} JPEGs {args.width}x{args.height} (mean {jpeg_kb:.0f} kB) "
              f"in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        cached = build_dataset("voc", "train", root, train=True, cache_dir=root / "cache")
        build_s = time.perf_counter() - start
        cache_mb = sum(p.stat().st_size for p in (root / "cache").iterdir()) / 2**20
        print(f"cache build: {build_s:.1f} s ({args.images / build_s:.0f} images/s), {cache_mb:.0f} MiB on disk")
        plain = build_dataset("voc", "train", root, train=True)

        print(f"\n{'pipeline':<10} {'workers':>7} {'images/s':>10}")
        rates = {}
        for workers in args.workers:
            for label, dataset in (("no cache", plain), ("cache", cached)):
                rates[label, workers] = max(epoch_rate(dataset, workers, args.batch_size, args.epochs)
                                            for _ in range(args.repeats))
                print(f"{label:<10} {workers:>7} {rates[label, workers]:>10.0f}")
        for workers in args.workers:
            print(f"speed-up from the cache at {workers} workers: "
                  f"{rates['cache', workers] / rates['no cache', workers]:.1f}x")

    for size in (128, 234):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(50):
                synthetic_sample(0, "train", i, size)
            best = min(best, (time.perf_counter() - start) / 50)
        print(f"synthetic sample {size}x{size}: {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
