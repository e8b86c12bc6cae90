"""Command line: `python -m mistudy {train,evaluate,demo,study} ...` (also the `mistudy` script)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields

from mistudy.cli import OneLineParser, non_negative_int, positive_float, positive_int

HELP = {
    "use_case": "baseline (U-Net + CE), rmi (U-Net + BCE/RMI) or mutual (DeepLabV3 + U-Net, deep mutual learning)",
    "dataset": "synthetic (generated, no download), voc (PASCAL VOC 2012) or cityscapes",
    "root": "dataset root: VOC: the folder holding VOCdevkit/; Cityscapes: the folder holding leftImg8bit/ and gtFine/",
    "run_dir": "run directory (default: <results-dir>/<dataset>/<use-case>/<run-name>)",
    "results_dir": "parent of the default run directories",
    "run_name": "name of the run directory (default: seed<seed>)",
    "epochs": "training epochs (paper: 200)",
    "batch_size": "training batch size (default: the paper's, baseline 8, rmi 2, mutual 10)",
    "lr": "Adam learning rate (default: the paper's, baseline 1e-3, rmi and mutual 1e-4)",
    "weight_decay": "Adam weight decay",
    "resize_size": "resize before cropping (paper: 234)",
    "crop_size": "training crop and 'paper' evaluation centre crop (paper: 224)",
    "square_resize": "resize to resize_size x resize_size as the paper did (default: shorter side, keeping aspect)",
    "normalize": "normalise images with ImageNet mean/std",
    "train_samples": "use the first N training samples (synthetic: generate N)",
    "val_samples": "use the first N validation samples (synthetic: generate N)",
    "cache_dir": "cache of resized images and masks (VOC/Cityscapes): no JPEG/PNG decoding after the first epoch",
    "num_workers": "DataLoader worker processes (default None: 0 on CPU, where they compete with training for "
                   "the cores; min(8, cores / GPUs) on CUDA, so that decoding keeps up with the GPU)",
    "eval_protocol": "paper: resize + deterministic centre crop; full: whole images at their own resolution; "
                     "random-crop: resize + random crop as the authors evaluated (seeded: the same crops every time)",
    "eval_every": "validate every N epochs (and always after the last)",
    "eval_batch_size": "validation batch size (default: the training batch size; 1 for full-resolution real data)",
    "rmi_radius": "RMI neighbourhood side (paper: 3)",
    "rmi_pool": "RMI down-sampling before the neighbourhoods: none (paper), max or avg (RMI authors: avg)",
    "rmi_pool_size": "RMI pooling kernel = stride (RMI authors: 2)",
    "rmi_bce_weight": "lambda in lambda*BCE + (1-lambda)*RMI (paper: 0.5)",
    "kl_weight": "weight of KL(p_other || p_self) in each mutual-learning loss",
    "kl_temperature": "softmax temperature of the mutual-learning KL (1 = Zhang et al.)",
    "mutual_schedule": "sequential (Zhang et al. Algorithm 1, 3 forward passes) or simultaneous (one pair)",
    "unet_features": "U-Net width of the first level (Buda et al.: 32)",
    "deeplab_weights": "local DeepLabV3-ResNet50 state dict to start from (never downloaded)",
    "deeplab_backbone_weights": "local ImageNet ResNet-50 state dict for DeepLabV3's backbone (never downloaded)",
    "seed": "seed of initialisation, data order and augmentation",
    "data_seed": "seed of the generated synthetic images (kept fixed across --seed so that seeds vary training only)",
    "device": "auto (CUDA when present), cpu, cuda or cuda:N",
    "amp": "mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16 or off",
    "channels_last": "channels-last memory format (default: on for CUDA)",
    "compile": "torch.compile the networks (worth it on a GPU for runs longer than a few minutes)",
    "compile_mode": "torch.compile mode: default, reduce-overhead (CUDA graphs: fewer launches, for small "
                    "batches such as rmi's 2) or max-autotune; needs --compile",
    "finite_check_every": "steps between NaN/inf checks of the training loss, each a GPU-to-host read-back "
                          "(default: 1 on CPU, 50 on CUDA; the epoch's last step is always checked)",
    "sync_bn": "SyncBatchNorm under torchrun",
    "resume": "continue the run in run_dir from its last checkpoint",
    "progress": "auto (bars; env MISTUDY_PROGRESS overrides), bar, log (one line per epoch) or none",
}
CHOICES = {
    "use_case": ["baseline", "rmi", "mutual"], "dataset": ["synthetic", "voc", "cityscapes"],
    "eval_protocol": ["paper", "full", "random-crop"], "rmi_pool": ["none", "max", "avg"],
    "mutual_schedule": ["sequential", "simultaneous"], "amp": ["auto", "bf16", "fp16", "off"],
    "progress": ["auto", "bar", "log", "none"], "compile_mode": ["default", "reduce-overhead", "max-autotune"],
}


def add_train_options(p: argparse.ArgumentParser) -> None:
    from mistudy.train import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f"{HELP[f.name]} (default: {default})"
        if f.type in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = str
        if "int" in f.type:
            kind = non_negative_int if f.name in ("seed", "data_seed", "num_workers") else positive_int
        elif "float" in f.type:
            kind = float if f.name in ("weight_decay", "rmi_bce_weight", "kl_weight") else positive_float
        p.add_argument(flag, type=kind, default=default, choices=CHOICES.get(f.name), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mistudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train one use-case", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_options(p)
    p = sub.add_parser("evaluate", help="evaluate a finished or interrupted run")
    p.add_argument("--run", required=True, help="run directory written by `mistudy train`")
    p.add_argument("--checkpoint", default="best_miou", choices=["best_miou", "best_loss", "last"],
                   help="which weights (default: best_miou)")
    p.add_argument("--protocol", default=None, choices=["paper", "full", "random-crop"],
                   help="evaluation protocol (default: the run's)")
    p.add_argument("--root", default=None, help="dataset root (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size")
    sub.add_parser("demo", help="every model, loss and metric on one synthetic batch; saves a sample figure",
                   add_help=False)
    p = sub.add_parser("study", help="run the numbered notebooks headless with papermill", add_help=False)
    p.add_argument("study_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from mistudy.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["study"]:
        from mistudy.study import main as study_main

        return study_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from mistudy.train import NonFiniteLossError, TrainConfig, train

        opts = {k: v for k, v in vars(args).items() if k != "command"}
        try:
            cfg = TrainConfig(**opts)
        except (ValueError, FileNotFoundError) as e:
            print(f"mistudy train: error: {e}", file=sys.stderr)
            return 2
        try:
            summary = train(cfg)
        except (NonFiniteLossError, FileExistsError, FileNotFoundError, ValueError) as e:
            print(f"mistudy train: error: {e}", file=sys.stderr)
            return 1
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        print(json.dumps({n: {k: v for k, v in m["best_miou"].items() if k in ("epoch", "pixel_accuracy", "iou_micro", "miou")}
                          for n, m in summary["networks"].items() if "best_miou" in m}, indent=2))
        print(f"run written to {summary['run_dir']}")
        return 0
    if args.command == "evaluate":
        from mistudy.train import evaluate_run, is_run_dir

        if not is_run_dir(args.run):
            print(f"mistudy evaluate: error: {args.run} is not a run directory (no config.json)", file=sys.stderr)
            return 2
        try:
            result = evaluate_run(args.run, args.checkpoint, args.protocol, args.root, args.device, args.batch_size)
        except (ValueError, FileNotFoundError) as e:
            print(f"mistudy evaluate: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
