"""Command line: `python -m mistudy COMMAND ...` (also the `mistudy` script); `mistudy COMMAND --help` for each.

The options of `train` are generated from `mistudy.training.config.TrainConfig`'s fields (help text, choices and bounds in
their metadata), so every field is an option and no list is kept here; their defaults are the chosen profile's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import fields

import mistudy
from mistudy.data import PROTOCOLS
from mistudy.io.cli import OneLineParser, error_line, non_negative_float, non_negative_int, positive_float, positive_int
from mistudy.training.config import (
    CHECKPOINTS,
    DEFAULT_PROFILE_TEXT,
    OLD_NAMES,
    PROFILE_HELP,
    PROFILES,
    TrainConfig,
    default_of,
    parse_assignments,
    parse_value,
    profile_settings,
    resolve_profile,
    study_config,
    type_name,
)

DESCRIPTION = ("Does mutual information help semantic segmentation?  Train and compare the paper's three use-cases "
               "(U-Net with cross-entropy, with BCE + RMI, and deep mutual learning with DeepLabV3) on the embedded "
               "synthetic benchmark, PASCAL VOC 2012 or Cityscapes, and regenerate the study's figures and tables.")
# Commands implemented in a module of their own: name -> (module, one line of help).
COMMANDS = {
    "study": ("mistudy.study", "run the numbered notebooks headless (papermill): every figure and table"),
    "train": (None, "train one use-case (one run directory)"),
    "evaluate": (None, "score a finished or interrupted run again, e.g. under another evaluation protocol"),
    "pretrain": ("mistudy.training.pretrain", "local stand-ins for ImageNet/COCO weights: a U-Net and a DeepLabV3 pretrained "
                                     "on a disjoint synthetic corpus"),
    "levels": ("mistudy.report.levels", "learning curves of the baseline on each synthetic difficulty level"),
    "demo": ("mistudy.demo", "every model, loss and metric on one synthetic batch; saves a sample figure"),
}


def add_config_options(p: argparse.ArgumentParser, defaults: dict, cls=TrainConfig) -> None:
    """One option per field of ``cls``: --field-name, typed and bounded from the field's annotation and metadata,
    its help naming the default in ``defaults`` (the profile's value, else the field's)."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        aliases = [f"--{old.replace('_', '-')}" for old, new in OLD_NAMES.items() if new == f.name]
        meta = f.metadata
        default = defaults.get(f.name, default_of(f))
        help_text = meta.get("help", "")
        if default is not None or "(none:" not in help_text:  # what None means is in the help itself
            help_text += f" (default: {default})"
        if aliases:
            help_text = f"{', '.join(aliases)}: the old name, kept as an alias. " + help_text
        help_text = help_text.replace("%", "%%")  # argparse formats help
        kind_name = type_name(f)
        if kind_name.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        kind = str
        if kind_name == "str | None":  # "none" means None, as in --set
            kind = lambda text, name=f.name: parse_value(name, text, cls)  # noqa: E731
        elif kind_name.startswith("int"):
            kind = positive_int if meta.get("low") == 1 else non_negative_int
        elif kind_name.startswith("float"):
            kind = positive_float if meta.get("positive") else non_negative_float
        p.add_argument(flag, *aliases, type=kind, default=argparse.SUPPRESS, choices=meta.get("choices"),
                       help=help_text)


def _profile_of(argv: list[str]) -> str | None:
    """The --profile given on a command line (before the parser is built: the help shows that profile's defaults)."""
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return None


def build_parser(profile: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mistudy", description=DESCRIPTION,
                           epilog="Start with `make run` (the quick study) or `mistudy train --help`.")
    parser.add_argument("--version", action="version", version=f"mistudy {mistudy.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    try:
        profile = resolve_profile(profile)
        defaults = {**profile_settings(profile), "results_dir": "<project>/results/" + profile}
    except ValueError:  # an unknown --profile: the parser below names the choices
        defaults = {}
    p = sub.add_parser("train", help=COMMANDS["train"][1], description="Train one use-case: a run directory "
                       "<results-dir>/<dataset>/<use-case>/seed<k>/ with checkpoints, history and scores; the run "
                       "notebooks 02-04 and `mistudy study` make with the same settings, so either reuses the other's.")
    p.add_argument("--profile", default=None, choices=list(PROFILES),
                   help="the settings to start from: " + "; ".join(f"{k}: {v}" for k, v in PROFILE_HELP.items())
                   + f" (default: {DEFAULT_PROFILE_TEXT}); the options below override it; the defaults shown below "
                   "are the quick profile's unless --profile is given")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
                   help="any option below by its field name, as in `mistudy study --set` (e.g. --set rmi_pool=avg)")
    add_config_options(p, defaults)
    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"][1], description=COMMANDS["evaluate"][1])
    p.add_argument("--run", required=True, help="run directory written by `mistudy train`")
    p.add_argument("--checkpoint", default="best_miou", choices=list(CHECKPOINTS), help="which weights (default: "
                   "best_miou)")
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="evaluation protocol (default: the run's)")
    p.add_argument("--data-root", "--root", default=None, help="dataset root (default: the run's; --root: its old "
                   "name, kept as an alias)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="evaluation batch size")
    for name, (module, text) in COMMANDS.items():
        if module is not None:
            sub.add_parser(name, help=text, add_help=False)  # parsed by the command's own module
    return parser


_FIELDS = {f.name for f in fields(TrainConfig)}


def cli_words(message: str) -> str:
    """A message naming config fields ("pass resume=True", "lr must be ...") in the flags a CLI user types."""
    def flag(m: re.Match) -> str:
        name = m.group(1)
        return f"--{name.replace('_', '-')}" if name in _FIELDS else m.group(0)

    message = re.sub(r"\b([a-z_]+)=True\b", flag, message)
    message = re.sub(r"\b([a-z_]+)=(?=[\s),;]|$)", flag, message)  # "needs data_root=" -> "needs --data-root"
    message = re.sub(r"(?<![-\w])([a-z_]+)(?= must | needs | holds | is | has )", flag, message)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", message)  # "pass resume (resume=True)": the flag once


def _train(args) -> int:
    from mistudy.training.runs import default_results_dir
    from mistudy.training.train import RUN_ERRORS, train_or_load

    opts = {k: v for k, v in vars(args).items() if k not in ("command", "profile", "assignments")}
    try:
        assigned = parse_assignments(args.assignments)
        twice = [f"--set {k}={assigned[k]!r} and --{k.replace('_', '-')} {opts[k]!r}" for k in assigned
                 if k in opts and assigned[k] != opts[k]]
        if twice:
            raise ValueError(f"an option given two values: {'; '.join(twice)}")
        opts = {**assigned, **opts}
        profile = resolve_profile(args.profile, opts.get("dataset", "synthetic"))
        opts.setdefault("results_dir", str(default_results_dir(profile)))
        cfg = study_config(opts.pop("use_case", "baseline"), profile, opts)
    except (ValueError, FileNotFoundError) as e:
        print(f"mistudy train: error: {cli_words(str(e))}", file=sys.stderr)
        return 2
    try:
        summary = train_or_load(cfg)  # a finished run of the same configuration: its scores again
    except RUN_ERRORS as e:
        print(f"mistudy train: error: {cli_words(error_line(e))}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rule = "best_miou" if cfg.select_fraction > 0 else "last"
    print(json.dumps({n: {k: v for k, v in m[rule].items() if k in ("epoch", "pixel_accuracy", "iou_micro", "miou")}
                      for n, m in summary["networks"].items() if rule in m}, indent=2))
    done = "reused from" if summary.get("reused") else "written to"
    print(f"run {done} {summary['run_dir']} (validation scores of the {rule} weights above)")
    return 0


def _evaluate(args) -> int:
    from mistudy.training.runs import is_run_dir
    from mistudy.training.train import RUN_ERRORS, evaluate_run

    if not is_run_dir(args.run):
        print(f"mistudy evaluate: error: {args.run} is not a run directory (no config.json)", file=sys.stderr)
        return 2
    try:
        result = evaluate_run(args.run, args.checkpoint, args.protocol, args.data_root, args.device, args.batch_size)
    except RUN_ERRORS as e:
        print(f"mistudy evaluate: error: {cli_words(error_line(e))}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]][0] is not None:
        import importlib

        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    parser = build_parser(_profile_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `mistudy`: what it can do
        parser.print_help()
        return 0
    return _train(args) if args.command == "train" else _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
