"""Command line: `python -m mistudy {train,evaluate,demo,study,levels} ...` (also the `mistudy` script).

The options of `train` are generated from `mistudy.config.TrainConfig`'s fields (help text, choices and bounds
in their metadata), so every field is an option and no list is kept here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from mistudy.cli import OneLineParser, error_line, non_negative_float, non_negative_int, positive_float, positive_int
from mistudy.config import CHECKPOINTS, PROFILES, TrainConfig, default_of, study_config, type_name


def add_config_options(p: argparse.ArgumentParser, cls=TrainConfig) -> None:
    """One option per field of ``cls``: --field-name, typed and bounded from the field's annotation and metadata."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default, meta = default_of(f), f.metadata
        help_text = f"{meta.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        kind_name = type_name(f)
        if kind_name.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        kind = str
        if kind_name.startswith("int"):
            kind = positive_int if meta.get("low") == 1 else non_negative_int
        elif kind_name.startswith("float"):
            kind = positive_float if meta.get("positive") else non_negative_float
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=meta.get("choices"), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mistudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("train", help="train one use-case")
    p.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="start from a profile's settings (quick: the 64x64 CPU scale of `make run`; paper: the paper's); "
                        "options given here override it (default: none, the defaults below)")
    add_config_options(p)
    p = sub.add_parser("evaluate", help="evaluate a finished or interrupted run")
    p.add_argument("--run", required=True, help="run directory written by `mistudy train`")
    p.add_argument("--checkpoint", default="best_miou", choices=list(CHECKPOINTS), help="which weights (default: "
                   "best_miou)")
    p.add_argument("--protocol", default=None, choices=["paper", "full", "random-crop"],
                   help="evaluation protocol (default: the run's)")
    p.add_argument("--root", default=None, help="dataset root (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size")
    for name, text in (("demo", "every model, loss and metric on one synthetic batch; saves a sample figure"),
                       ("study", "run the numbered notebooks headless with papermill"),
                       ("levels", "learning curves of the baseline on each synthetic difficulty level"),
                       ("pretrain", "local stand-ins for ImageNet/COCO weights: a U-Net and a DeepLabV3 pretrained on "
                                    "a disjoint synthetic corpus")):
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from mistudy.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["study"]:
        from mistudy.study import main as study_main

        return study_main(argv[1:])
    if argv[:1] == ["levels"]:
        from mistudy.levels import main as levels_main

        return levels_main(argv[1:])
    if argv[:1] == ["pretrain"]:
        from mistudy.pretrain import main as pretrain_main

        return pretrain_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from mistudy.train import RUN_ERRORS, train

        opts = {k: v for k, v in vars(args).items() if k not in ("command", "profile")}
        try:
            cfg = study_config(opts.pop("use_case", "baseline"), args.profile, opts) if args.profile else \
                TrainConfig(**opts)
        except (ValueError, FileNotFoundError) as e:
            print(f"mistudy train: error: {e}", file=sys.stderr)
            return 2
        try:
            summary = train(cfg)
        except RUN_ERRORS as e:
            print(f"mistudy train: error: {error_line(e)}", file=sys.stderr)
            return 1
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
        rule = "best_miou" if cfg.select_fraction > 0 else "last"
        print(json.dumps({n: {k: v for k, v in m[rule].items() if k in ("epoch", "pixel_accuracy", "iou_micro", "miou")}
                          for n, m in summary["networks"].items() if rule in m}, indent=2))
        print(f"run written to {summary['run_dir']} (validation scores of the {rule} weights above)")
        return 0
    if args.command == "evaluate":
        from mistudy.runs import is_run_dir
        from mistudy.train import RUN_ERRORS, evaluate_run

        if not is_run_dir(args.run):
            print(f"mistudy evaluate: error: {args.run} is not a run directory (no config.json)", file=sys.stderr)
            return 2
        try:
            result = evaluate_run(args.run, args.checkpoint, args.protocol, args.root, args.device, args.batch_size)
        except RUN_ERRORS as e:
            print(f"mistudy evaluate: error: {error_line(e)}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
