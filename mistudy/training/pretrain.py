"""`python -m mistudy pretrain`: local stand-ins for the ImageNet/COCO weights that cannot be downloaded here.

The RMI authors fine-tuned an ImageNet-pretrained ResNet and the paper's DeepLabV3 partner started COCO-pretrained;
neither is possible without a download.  This command trains a U-Net and a DeepLabV3-ResNet50 with cross-entropy on
a pretraining corpus disjoint from the study's data -- the synthetic generator at the ``medium`` level (all six
shapes, the study's three among them, like COCO's classes around VOC's) with its own data seed, and many more
images than a study trains on -- and writes their weights as plain state dicts:

    <out>/unet.pt, <out>/deeplabv3.pt           (+ .provenance.json); runs in <out>/runs/<network>/
    <figures>/pretrain.{csv,md}                 each network's pretraining scores and times (`pretraining_rows`),
                                                and its start on the study's validation images (`study_start_miou`)

The weights kept are each network's best_miou checkpoint on the pretraining corpus' own selection split: nothing of
the study's train, selection or validation images is seen in training them (the table scores the exported weights on
the study's validation images afterwards, to show the head start the study's pretrained settings begin from).  Pretraining runs once per profile (the authors
used one checkpoint for every run): the study's pretrained settings read ``results/<profile>/pretrain/*.pt``.
Finished runs are reused, an interrupted one continues where it stopped and a finished one asked for more --epochs
is extended, so running the command again only writes what is missing; a weights file that already holds the
weights is left untouched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mistudy.io import atomic, provenance, safeload
from mistudy.io.cli import OneLineParser, error_line, positive_int
from mistudy.training import runs
from mistudy.training.config import (
    DEFAULT_PROFILE,
    PROFILES,
    WEIGHTS_OPTIONS,
    TrainConfig,
    profile_settings,
    resolve_profile,
)

NETWORKS = ("unet", "deeplabv3")
PRETRAIN_DATA_SEED = 1_000  # the study's synthetic data use data_seed 0: another seed, other images
PRETRAIN_LEVEL = "medium"
DEFAULTS = {"samples": 2048, "epochs": 12}
# the stand-ins were pretrained on the study's classes, so the settings that start from them keep the whole head
# (`deeplab_head`/`unet_head` keep: none of their layers new), unlike the authors, who gave COCO's DeepLabV3 a new one;
# notebook 06's pretrained settings and the pretraining table's start column both load them so
HEAD = "keep"
START_COLUMN = "study's val mIoU before training on it"


def weights_dir(profile: str) -> Path:
    """Where a profile's pretrained weights live (results/<profile>/pretrain/)."""
    return runs.default_results_dir(profile) / "pretrain"


def weights_path(profile: str, network: str, directory=None) -> Path:
    """The weights file of ``network`` for ``profile``; FileNotFoundError naming the command that writes it."""
    path = Path(directory or weights_dir(profile)) / f"{network}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained {network} weights {path} do not exist: run `python -m mistudy pretrain "
                                f"--profile {profile}` first")
    return path


def pretrain_config(network: str, profile: str, out: Path, samples: int, epochs: int, device: str) -> TrainConfig:
    """The pretraining run of one network: the profile's image size and optimiser, CE, the pretraining corpus."""
    settings = profile_settings(profile, device)
    run_dir = out / "runs" / network
    # an interrupted pretraining (a run directory without metrics.json) continues where it stopped, a finished one
    # asked for more epochs is extended (the constant learning rate makes that the longer run), and a finished one
    # of this length is reused as it is
    started = runs.is_run_dir(run_dir)
    metrics = runs.load_metrics(run_dir) if started else None
    resume = started and (metrics is None or metrics["epochs"] < epochs)
    settings.update(use_case="baseline", network=network, synthetic_level=PRETRAIN_LEVEL,
                    data_seed=PRETRAIN_DATA_SEED, train_samples=samples, val_samples=256, select_fraction=0.0625,
                    epochs=epochs, device=device, run_dir=str(run_dir), seed=0, resume=resume,
                    **dict.fromkeys(WEIGHTS_OPTIONS))  # from random init: the stand-ins of pretrained weights
    return TrainConfig.from_dict(settings)


def export(run_dir: Path, network: str, path: Path, profile: str) -> Path:
    """The run's best_miou weights as a plain state dict, written atomically with its provenance; a file that already
    holds these weights is left as it is (runs started from it compare its content, and older runs its mtime)."""
    ckpt = safeload.load(runs.checkpoint_path(run_dir, "best_miou", network), "checkpoint")
    unchanged = _holds(path, ckpt["model"])
    if not unchanged:
        with atomic.atomic_path(path, suffix=".pt") as tmp:
            torch.save(ckpt["model"], tmp)
    metrics = runs.load_metrics(run_dir)
    prov = provenance.provenance(network=network, profile=profile, run_dir=str(run_dir), epoch=ckpt["epoch"],
                           corpus=f"synthetic {PRETRAIN_LEVEL} level, data_seed {PRETRAIN_DATA_SEED}",
                           pretraining_val_miou=metrics["networks"][network]["best_miou"]["miou"])
    provenance.write_provenance(path, prov, content_changed=not unchanged)
    return path


def _holds(path: Path, state: dict) -> bool:
    """Whether the weights file ``path`` already holds ``state`` (a missing or unreadable file does not)."""
    try:
        old = safeload.load(path, "weights")
    except (FileNotFoundError, safeload.CheckpointError):
        return False
    return isinstance(old, dict) and old.keys() == state.keys() and all(torch.equal(old[k], state[k]) for k in old)


def pretraining_rows(out: Path, networks=NETWORKS) -> list[dict]:
    """One row per pretrained network of ``out``: its pretraining-validation mIoU at the exported (best_miou) epoch
    and after the first and last epochs, and its times -- what the README says of the stand-ins' strength."""
    rows = []
    for network in networks:
        run_dir = Path(out) / "runs" / network
        metrics = runs.load_metrics(run_dir)
        if metrics is None:
            continue
        history = runs.load_history(run_dir)
        best = metrics["networks"][network]["best_miou"]
        seconds = [h["seconds"] for h in history]
        rows.append({"network": network, "epochs": metrics["epochs"], "train images": metrics["train_samples"],
                     "exported epoch (best_miou)": best["epoch"], "pretraining val mIoU": round(best["miou"], 4),
                     "val mIoU after epoch 1": round(history[0][f"{network}/val_miou"], 4),
                     "val mIoU after the last epoch": round(history[-1][f"{network}/val_miou"], 4),
                     "training s": round(sum(seconds)), "evaluation s": round(sum(h.get("eval_seconds", 0)
                                                                                  for h in history)),
                     "s per epoch": f"{min(seconds):.0f}-{max(seconds):.0f}", "device": metrics["device"],
                     "amp": metrics["config"]["amp"]})
    return rows


def study_start_miou(path: Path, network: str, profile: str, device: str = "auto") -> float:
    """The mIoU of the weights file ``path`` (a ``network`` stand-in) on the validation images of ``profile``'s
    synthetic study, before any training on the study's images: the head start of notebook 06's pretrained settings,
    loaded as they load it (head kept)."""
    from mistudy.training import inference, networks

    settings = profile_settings(profile, device)
    weights = dict.fromkeys(WEIGHTS_OPTIONS) | ({"unet_weights": str(path), "unet_head": HEAD} if network == "unet"
                                               else {"deeplab_weights": str(path), "deeplab_head": HEAD})
    settings.update(use_case="baseline", network=network, device=device, **weights)
    cfg = TrainConfig.from_dict(settings)
    scores = inference.evaluate_on_val(networks.build_networks(cfg, names=(network,)), cfg, device)
    return scores[network]["miou"]


def write_pretraining_table(out: Path, figures_dir: Path, profile: str, device: str = "auto") -> Path | None:
    """<figures_dir>/pretrain.{csv,md} from the pretraining runs in ``out`` and, for each exported stand-in, its
    mIoU on the study's validation images before training on them (`study_start_miou`); None when none finished."""
    from mistudy.io.tables import write_table

    rows = pretraining_rows(out)
    if not rows:
        return None
    for row in rows:
        weights = Path(out) / f"{row['network']}.pt"
        row[START_COLUMN] = round(study_start_miou(weights, row["network"], profile, device), 4) \
            if weights.is_file() else None
    command = f"python -m mistudy pretrain --profile {profile}"
    title = (f"Pretraining of the stand-ins for ImageNet/COCO weights (profile {profile}): synthetic {PRETRAIN_LEVEL} "
             f"level, data_seed {PRETRAIN_DATA_SEED} (disjoint from the study's images), cross-entropy; mIoU on the "
             f"pretraining corpus' own validation split; the last column: each exported stand-in, its head kept, on "
             f"the {profile} study's validation images (synthetic, data_seed 0) before any training on the study's "
             f"images. Command: {command}")
    from mistudy.methods.metrics import SCORING_VERSION

    # the precision of the runs and of the start's scoring (another machine may score reused runs otherwise)
    start_amp = profile_settings(profile, device).get("amp", "off")
    prov = dict(profile=profile, weights_dir=str(out), command=command, device=sorted({r["device"] for r in rows}),
                amp=sorted({r["amp"] for r in rows} | {start_amp}), scoring_version=SCORING_VERSION)
    return write_table(rows, Path(figures_dir) / "pretrain", prov, title=title)[1]


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="mistudy pretrain", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="image size and optimiser of the "
                   "profile whose pretrained settings will use the weights (None: env MISTUDY_PROFILE, else "
                   f"{DEFAULT_PROFILE})")
    p.add_argument("--samples", type=positive_int, default=DEFAULTS["samples"], help="pretraining images")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"], help="pretraining epochs")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    p.add_argument("--out", default=None, help="output folder (default: the project's results/<profile>/pretrain)")
    p.add_argument("--figures-dir", default=None, help="where pretrain.{csv,md} go (default: the project's "
                   "figures/<profile>/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    args.profile = resolve_profile(args.profile)
    from mistudy.training.train import RUN_ERRORS, train_or_load

    out = Path(args.out or weights_dir(args.profile))
    for network in args.networks:
        try:
            cfg = pretrain_config(network, args.profile, out, args.samples, args.epochs, args.device)
            t0 = time.perf_counter()
            summary = train_or_load(cfg)
            path = export(Path(summary["run_dir"]), network, out / f"{network}.pt", args.profile)
        except RUN_ERRORS as e:
            print(f"mistudy pretrain: error: {error_line(e)}", file=sys.stderr)
            return 1
        best = summary["networks"][network]["best_miou"]
        print(f"{network}: {path} (epoch {best['epoch']}, pretraining validation mIoU {best['miou']:.3f}, "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
    table = write_pretraining_table(out, Path(args.figures_dir or runs.default_figures_dir(args.profile)), args.profile,
                                    args.device)
    if table is not None:
        print(f"pretraining table: {table}")
    return 0
