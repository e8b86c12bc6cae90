"""`python -m mistudy demo`: every part of the package on one synthetic batch, in seconds.

Builds the synthetic dataset, both models, every loss and metric on one batch, prints what they give and
saves a figure of a few samples with their masks. A smoke test a new user can read top to bottom.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mistudy import data
from mistudy.methods.losses import RMILoss, cross_entropy_loss, mutual_kl
from mistudy.methods.metrics import SegmentationMetrics
from mistudy.methods.models import build_model, count_parameters
from mistudy.report import viz
from mistudy.training.runs import project_path


def run(num_samples: int = 4, size: int = 96, seed: int = 0, figures_dir=None) -> dict:
    torch.manual_seed(seed)
    info = data.dataset_info("synthetic")
    dataset = data.build_dataset("synthetic", "val", train=False, resize_size=size, crop_size=size,
                                 num_samples=num_samples, seed=seed)
    images, target = map(torch.stack, zip(*[dataset[i] for i in range(num_samples)]))  # [N,3,H,W], [N,H,W]
    print(f"synthetic batch: images {tuple(images.shape)}, masks {tuple(target.shape)}, classes {info.class_names}")

    results = {}
    unet = build_model("unet", info.num_classes).eval()
    deeplab = build_model("deeplabv3_resnet50", info.num_classes).eval()
    with torch.no_grad():
        logits = {"unet": unet(images), "deeplabv3": deeplab(images)}
    for name, model in (("unet", unet), ("deeplabv3", deeplab)):
        print(f"{name:10s} {count_parameters(model):>11,} parameters, logits {tuple(logits[name].shape)}")

    losses = {
        "cross_entropy": cross_entropy_loss()(logits["unet"], target),
        "rmi (0.5 BCE + 0.5 RMI, r=3)": RMILoss(info.num_classes)(logits["unet"], target),
        "KL(p_deeplab || p_unet)": mutual_kl(logits["unet"], logits["deeplabv3"], target),
        "KL(p_unet || p_unet)": mutual_kl(logits["unet"], logits["unet"], target),
    }
    for k, v in losses.items():
        print(f"loss  {k:30s} {v.item():.6f}")
        results[k] = v.item()
    for name, lg in logits.items():
        m = SegmentationMetrics(info.num_classes)
        m.update(lg, target)
        scores = m.compute()
        print(f"metrics {name:10s} (untrained) pixel_accuracy {scores['pixel_accuracy']:.4f}  "
              f"iou_micro {scores['iou_micro']:.4f}  miou {scores['miou']:.4f}")
        results[f"{name}_miou"] = scores["miou"]

    shown = [data.display_image(im, normalized=False) for im in images]
    fig = viz.plot_predictions(shown, list(target), {"U-Net (untrained)": list(logits["unet"].argmax(1))},
                               "synthetic", title="Synthetic samples and their masks")
    path = viz.save_figure(fig, Path(figures_dir or project_path("figures")) / "synthetic_samples.png",
                           {"dataset": "synthetic", "split": "val", "seed": seed, "samples": num_samples,
                            "size": size, "source": "python -m mistudy demo"})
    print(f"figure written to {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mistudy demo", description=__doc__)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures-dir", default=None, help="default: <checkout>/figures")
    args = p.parse_args(argv)
    run(args.samples, args.size, args.seed, args.figures_dir)
    return 0
