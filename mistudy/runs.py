"""The run-directory contract: what a training run writes, and how it is found and read back.

A run directory (`<results>/<dataset>/<use-case>/seed<k>/` by default) holds

    config.json            the full TrainConfig
    history.json / .csv    one row per epoch: losses, selection and validation metrics, lr, seconds, images/s
    last.pt                everything needed to resume (models, optimisers, scaler, RNG, best scores, history)
    best_loss-<net>.pt     weights at the lowest training loss of <net> (the paper's selection rule)
    best_miou-<net>.pt     weights at the highest selection-split mIoU of <net> (held out of train)
    metrics.json           validation metrics of every network at last / best_loss / best_miou
    per_image.npz          per validation image and class: true positives, false positives, false negatives
                           (keys "<net>/<checkpoint>/{tp,fp,fn}", int64 [images, classes]), the image's mIoU
                           ("<net>/<checkpoint>/miou", float64 [images]) and "ids"

Every file is written through `mistudy.atomic`.  Also here: the project's default folders and the provenance
written beside every figure and table.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

import mistudy
from mistudy import atomic
from mistudy.config import RESUMABLE_CHANGES, TrainConfig, default_of

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the source checkout (the set-up installs it editable)


def project_path(name: str) -> Path:
    """<project root>/<name>: the default results/ and figures/ folders, wherever the kernel runs.

    Env MISTUDY_<NAME> (MISTUDY_RESULTS, MISTUDY_FIGURES) overrides it (the nbval run does); without a source
    checkout (no pyproject.toml beside the package) the current directory is the root.
    """
    override = os.environ.get(f"MISTUDY_{name.upper()}")
    if override:
        return Path(override)
    root = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return root / name


# ------------------------------------------------------------------------------------------------ writing

def checkpoint_path(run_dir: Path, rule: str, network: str) -> Path:
    return run_dir / ("last.pt" if rule == "last" else f"{rule}-{network}.pt")


def prepare(cfg: TrainConfig, write: bool) -> Path:
    """Check that cfg may write its run directory and (if ``write``) save config.json; returns the directory.

    An existing run is never overwritten without resume=True; resuming with options that change what is
    computed raises, naming them.
    """
    run_dir = cfg.resolved_run_dir()
    if not write:
        return run_dir
    last = run_dir / "last.pt"
    if (last.exists() or (run_dir / "metrics.json").exists()) and not cfg.resume:
        raise FileExistsError(f"run directory {run_dir} already holds a run; pass resume=True (--resume) to continue "
                              "it or choose another run_dir/run_name")
    if cfg.resume and last.exists():
        diff = config_differences(cfg, run_dir, ignore=RESUMABLE_CHANGES)
        if diff:
            raise ValueError(f"cannot resume {run_dir} with a different configuration ({format_differences(diff)})")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(run_dir / "config.json", asdict(cfg))
    return run_dir


def config_differences(cfg: TrainConfig, run_dir: Path, ignore: set[str]) -> dict[str, tuple]:
    """{option: (saved value, cfg's value)} where cfg differs from the run saved in run_dir (options in ``ignore``
    left out)."""
    saved = json.loads((run_dir / "config.json").read_text())
    defaults = {f.name: default_of(f) for f in fields(cfg)}
    # a field added after the run was written counts as its default (the behaviour before it existed)
    return {k: (saved.get(k, defaults[k]), v) for k, v in asdict(cfg).items()
            if k not in ignore and saved.get(k, defaults[k]) != v}


def format_differences(diff: dict[str, tuple]) -> str:
    return ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())


def save_checkpoint(obj: dict, path: Path) -> None:
    with atomic.atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def write_history(run_dir: Path, history: list[dict]) -> None:
    atomic.write_json(run_dir / "history.json", history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(run_dir / "history.csv", buf.getvalue())


def write_per_image(run_dir: Path, counts: dict[str, dict[str, np.ndarray]], ids: list) -> None:
    """counts: {"<net>/<checkpoint>": {"tp", "fp", "fn": int [images, classes], "miou": float [images] (optional)}};
    ids: one per image."""
    arrays = {f"{key}/{part}": np.asarray(v, dtype=np.float64 if part == "miou" else np.int64)
              for key, parts in counts.items() for part, v in parts.items()}
    with atomic.atomic_path(run_dir / "per_image.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, ids=np.asarray([str(i) for i in ids]), **arrays)


# ------------------------------------------------------------------------------------------------ reading

def is_run_dir(path) -> bool:
    return (Path(path) / "config.json").is_file()


def load_config(run_dir) -> TrainConfig:
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are written by "
                                "`python -m mistudy train`")
    return TrainConfig.from_dict({**_read_json(run_dir / "config.json"), "resume": False})


def load_history(run_dir) -> list[dict]:
    path = Path(run_dir) / "history.json"
    return _read_json(path) if path.exists() else []


def load_metrics(run_dir) -> dict | None:
    path = Path(run_dir) / "metrics.json"
    return _read_json(path) if path.exists() else None


def load_per_image(run_dir, network: str, checkpoint: str) -> dict[str, np.ndarray]:
    """{"tp", "fp", "fn": int64 [images, classes], "miou": [images] (if saved), "ids": [images]} of one network and
    checkpoint."""
    path = Path(run_dir) / "per_image.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished (per-image scores are written "
                                "by its final evaluation)")
    with np.load(path, allow_pickle=False) as f:
        key = f"{network}/{checkpoint}"
        if f"{key}/tp" not in f:
            raise KeyError(f"{path} has no per-image counts for {key}")
        return {"ids": f["ids"], **{k: f[f"{key}/{k}"] for k in ("tp", "fp", "fn", "miou") if f"{key}/{k}" in f}}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def find_runs(results_dir, dataset: str, use_case: str) -> list[Path]:
    """Finished runs (directories holding metrics.json) under <results_dir>/<dataset>/<use_case>/, sorted."""
    return sorted(p.parent for p in (Path(results_dir) / dataset / use_case).glob("*/metrics.json"))


def load_run(run_dir) -> dict:
    """{"run_dir", "config", "metrics"} of a finished run (plain dicts); a missing or broken file raises."""
    run_dir = Path(run_dir)
    out = {"run_dir": run_dir}
    for name in ("config", "metrics"):
        path = run_dir / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a finished run")
        out[name] = _read_json(path)
    return out


# --------------------------------------------------------------------------------------------- provenance

def provenance(**fields) -> dict:
    """Where a figure or table came from: the caller's fields plus versions and the date."""
    info = {"package": f"mistudy {mistudy.__version__}", "torch": torch.__version__,
            "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    info.update(fields)
    return info


def write_provenance(path, prov: dict) -> Path:
    """Write `<path>.provenance.json` beside a figure or table."""
    side = Path(str(path) + ".provenance.json")
    atomic.write_text(side, json.dumps(prov, indent=2, default=str) + "\n")
    return side
