"""The run-directory contract: what a training run writes, and how it is found and read back.

A run directory (`<results>/<dataset>/<use-case>/seed<k>/` by default) holds

    config.json            the full TrainConfig
    weights.json           the SHA-256 of each weights file the networks started from (--unet-weights, ...), if any
    history.json / .csv    one row per epoch: losses, selection and validation metrics, lr, seconds, images/s
    last.pt                everything needed to resume (models, optimisers, scaler, RNG, best scores, history)
    best_loss-<net>.pt     weights at the lowest training loss of <net> (the paper's selection rule)
    best_miou-<net>.pt     weights at the highest selection-split mIoU of <net> (held out of train)
    metrics.json           validation metrics of every network at last / best_loss / best_miou
    val_per_epoch.npz      per evaluated epoch and network, every validation image's confusion matrix ("<net>/<epoch>",
                           int32 [images, C, C]): paired intervals along the training budget
    per_image.npz          every validation image's statistics, keys "<net>/<checkpoint>/<name>": "confmat" int64
                           [images, C, C], "tp", "fp", "fn" int64 [images, C], "boundary" int64 [images, 4, C],
                           "calibration" float64 [images, 3, bins], "entropy" float64 [images, 2] (the network's own
                           probabilities; "calibration_softmax", "entropy_softmax": its logits' softmax), the image's own
                           "miou" and "boundary_f" float64 [images] (`mistudy.methods.metrics`); and "ids"

Every file is written through `mistudy.io.atomic`.  Also here: the project's default folders and the provenance
written beside every figure and table.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import platform
import secrets
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from mistudy.io import atomic, safeload
from mistudy.training.config import (  # noqa: F401  run_path, use_case_dir: the default layout, re-exported
    OLD_NAMES,
    RESUMABLE_CHANGES,
    TrainConfig,
    default_of,
    run_path,
    use_case_dir,
)

# The run directory's file names (the module docstring says what each holds): spelled here only.
CONFIG_FILE = "config.json"
WEIGHTS_RECORD = "weights.json"
HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.npz"
EPOCH_CONFMATS = "val_per_epoch.npz"
LOCK_FILE = ".lock"
BEST_CHECKPOINTS_GLOB = "best_*-*.pt"  # every best_<rule>-<network>.pt (`checkpoint_path`)
HISTORY_GLOB = "history.*"
SCORES = ("pixel_accuracy", "iou_micro", "miou")  # the per-epoch scores kept in history.csv
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (the set-up installs it editable)


def project_path(name: str) -> Path:
    """<project root>/<name>: the default results/ and figures/ folders, wherever the kernel runs.

    Env MISTUDY_<NAME> (MISTUDY_RESULTS, MISTUDY_FIGURES) overrides it (the nbval run does); without a source
    checkout (no pyproject.toml beside the package) the current directory is the root.
    """
    override = os.environ.get(f"MISTUDY_{name.upper()}")
    return Path(override) if override else project_root() / name


def project_root() -> Path:
    """The source checkout (`PROJECT_ROOT`), or the current directory where there is none (no pyproject.toml)."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() else Path.cwd()


def default_results_dir(profile: str) -> Path:
    """Where a profile's runs go by default, for every entry point (train, study, the notebooks): results/<profile>/."""
    return project_path("results") / profile


def default_figures_dir(profile: str | None) -> Path:
    """Where a profile's figures and tables go: figures/<profile>/; None: figures/ (notebook 01's theory figures,
    which no profile changes)."""
    return project_path("figures") / profile if profile else project_path("figures")


# ------------------------------------------------------------------------------------------------ writing

def checkpoint_name(rule: str, network: str) -> str:
    """The file of a checkpoint rule (`config.CHECKPOINTS`): last.pt (every network), else <rule>-<network>.pt
    (best_loss-unet.pt, ...)."""
    return LAST_CHECKPOINT if rule == "last" else f"{rule}-{network}.pt"


def checkpoint_path(run_dir: Path, rule: str, network: str) -> Path:
    return Path(run_dir) / checkpoint_name(rule, network)




class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


class RunLock:
    """The one writer of a run directory: an exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, which names its holder.

    The operating system releases the lock when its process ends, however it ends (kill -9 included), so a lock
    can never be stale; the file is removed when the holder finishes.  A second writer is refused at once with the
    holder's pid, host, command and start time.
    """

    def __init__(self, run_dir: Path, what: str = "run directory",
                 advice: str = "give this run another --run-name / --run-dir"):
        self.path = Path(run_dir) / LOCK_FILE
        self.what, self.advice = what, advice
        self._file = None

    def __enter__(self) -> "RunLock":
        try:
            return self._take()
        except OSError as e:
            if e.errno in atomic.FULL_ERRNOS:
                raise atomic.DiskFullError(e.errno, f"the disk holding {self.path.parent} is full: its lock "
                                           f"{self.path.name} could not be written; nothing was changed") from None
            raise OSError(e.errno, f"cannot write the {self.what} {self.path.parent} ({e.strerror})") from None

    def _take(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "a process that has not yet written its name"
                f.close()
                raise RunLockedError(f"{self.what} {self.path.parent} is being written by another process "
                                     f"({holder}); a {self.what} has one writer at a time: wait for it to "
                                     f"finish, or {self.advice}") from None
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # not a file its previous holder unlinked after we opened it
            f.close()
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}, started "
                    f"{dt.datetime.now().isoformat(timespec='seconds')}: {' '.join(sys.argv)[:300]}\n")
            f.flush()
        except OSError:
            self.path.unlink(missing_ok=True)
            f.close()
            raise
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # still holding the lock: nobody else can have taken it
            self._file.close()
            self._file = None


def resume_if_started(cfg: TrainConfig) -> TrainConfig:
    """A study's --resume for one of its runs: continue (or extend) the run its directory holds, start it where there
    is none yet.  (`train --resume` on its own refuses a directory without a run: there it is a mistyped path.)"""
    return cfg.replace(resume=is_run_dir(cfg.resolved_run_dir()))


def check_writable(cfg: TrainConfig, run_dir: Path) -> str:
    """Refuse, before anything is written, a training run that would overwrite or mix up an existing run; returns
    "new", "continue" (resume from last.pt) or "restart" (resume asked, but no epoch had been saved yet).

    * Without resume: a directory holding last.pt or metrics.json is never overwritten.
    * With resume: the directory must hold a run (config.json), of the same configuration apart from what may
      change on resume (runtime options, where, the length); a finished run whose last.pt was deleted cannot be
      continued (its results are kept); a learning-rate schedule that depends on the number of epochs cannot be
      stretched; a run cannot be resumed to fewer epochs than it has trained, nor continued when a weights file
      it started from has been replaced (`check_weights`).
    """
    last, metrics = run_dir / LAST_CHECKPOINT, run_dir / METRICS_FILE
    if not cfg.resume:
        if last.exists() or metrics.exists():
            raise FileExistsError(f"run directory {run_dir} already holds a run; pass resume=True to continue it, "
                                  "or choose another run directory or run name")
        return "new"
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"--resume: {run_dir} holds no run to continue (no config.json); check the path "
                                "(without --resume a new run starts there)")
    diff = config_differences(cfg, run_dir, ignore=RESUMABLE_CHANGES)
    if diff:
        raise ValueError(f"cannot resume {run_dir} with a different configuration ({format_differences(diff)})")
    saved = _read_json(run_dir / CONFIG_FILE)
    if saved.get("epochs") != cfg.epochs and cfg.lr_schedule != "constant":
        raise ValueError(f"cannot resume {run_dir} for {cfg.epochs} epochs instead of {saved.get('epochs')}: its "
                         f"{cfg.lr_schedule} learning-rate schedule depends on the number of epochs")
    if not last.exists():
        if metrics.exists():
            raise FileExistsError(f"--resume: {run_dir} holds a finished run whose last.pt was deleted, so it cannot "
                                  "be continued; its results are kept. To train it again, delete the directory or "
                                  "choose another run name")
        return "restart"  # no epoch saved: it starts from the weights files anew and records them again
    check_weights(cfg, run_dir)
    return "continue"


def write_config(cfg: TrainConfig, run_dir: Path, commit: str | None = None) -> None:
    """config.json (staged for ``commit``, if given): the configuration of what the run directory's checkpoints
    hold."""
    atomic.write_json(target(run_dir, CONFIG_FILE, commit), {**asdict(cfg), "resume": False})


def weights_record(cfg: TrainConfig) -> dict:
    """{option: {"path", "sha256"}} of the weights files ``cfg`` starts its networks from (taken before they are
    loaded: a path alone would not notice a file pretrained again)."""
    return {name: {"path": str(path), "sha256": _sha256(path)} for name, path in cfg.weights_files().items()}


def write_weights_record(run_dir: Path, record: dict) -> None:
    """weights.json at a run's start (never rewritten while it trains on); none for a run without weights files."""
    if record:
        atomic.write_json(run_dir / WEIGHTS_RECORD, record)
    else:
        (run_dir / WEIGHTS_RECORD).unlink(missing_ok=True)


_REPLACED_ADVICE = "delete the run to train it from the new weights, or put the old file back"


def check_weights(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to reuse or continue the run in ``run_dir`` when a weights file ``cfg`` names is not the one the run
    started from (replaced since, e.g. by `mistudy pretrain` run again, or deleted): an error naming the file."""
    record_path = run_dir / WEIGHTS_RECORD
    record = _read_json(record_path) if record_path.is_file() else None
    for name, path in cfg.weights_files().items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{name} {path} does not exist, so the run in {run_dir} that started from it "
                                    "cannot be checked: put the file back, or delete the run to train it again")
        if record is None:
            _check_unrecorded(name, path, run_dir)
            continue
        saved, now = record.get(name, {}).get("sha256"), _sha256(path)
        if saved != now:
            raise FileExistsError(f"the run in {run_dir} started from {name} {path} with SHA-256 "
                                  f"{(saved or 'unrecorded')[:12]}, but the file now holds other weights "
                                  f"({now[:12]}; replaced since, e.g. pretrained again): {_REPLACED_ADVICE}")


def _check_unrecorded(name: str, path: str, run_dir: Path) -> None:
    """A run written before weights.json existed: the file must not be newer than the run's last saved epoch
    (config.json is written with each epoch), the only time on record."""
    if Path(path).stat().st_mtime > (run_dir / CONFIG_FILE).stat().st_mtime:
        raise FileExistsError(f"{name} {path} was written after the last saved epoch of the run in {run_dir}, which "
                              f"keeps no record of the weights it started from: {_REPLACED_ADVICE}")


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_differences(cfg: TrainConfig, run_dir: Path, ignore: set[str], saved: dict | None = None
                       ) -> dict[str, tuple]:
    """{option: (saved value, cfg's value)} where cfg differs from the run saved in run_dir (its config.json, or
    ``saved``), options in ``ignore`` left out."""
    saved = saved if saved is not None else _read_json(run_dir / CONFIG_FILE)
    saved = {OLD_NAMES.get(k, k): v for k, v in saved.items()}  # a run written before an option was renamed
    defaults = {f.name: default_of(f) for f in fields(cfg)}
    # a field added after the run was written counts as its default (the behaviour before it existed)
    return {k: (saved.get(k, defaults[k]), v) for k, v in asdict(cfg).items()
            if k not in ignore and saved.get(k, defaults[k]) != v}


def format_differences(diff: dict[str, tuple]) -> str:
    return ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())


def retire_results(run_dir: Path) -> None:
    """A run extended beyond its finished results: metrics.json and per_image.npz no longer describe its weights
    (the final evaluation writes them anew)."""
    for name in (METRICS_FILE, PER_IMAGE_FILE):
        (run_dir / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------- one commit point per epoch
#
# An epoch's files are written under staged names (`staged_path`) first, then last.pt, which records the commit
# token the staged names carry: writing last.pt is the epoch's one commit point.  `publish` then retires the old
# results and renames the staged files into place.  A failure before the commit leaves the previous epoch's files
# as they were (the staged ones are removed); a kill between the commit and the end of `publish` is completed by
# whoever opens the run next (`recover`, `settle`), so a run's files always describe the state last.pt holds.

STAGED_MARK = ".commit-"


def new_commit(epoch: int) -> str:
    return f"e{epoch:05d}-{secrets.token_hex(4)}"


def staged_path(run_dir: Path, commit: str, name: str) -> Path:
    """Where an epoch's file ``name`` (e.g. "best_loss-unet.pt") is written before its commit."""
    return run_dir / f"{STAGED_MARK}{commit}.{name}"


def target(run_dir: Path, name: str, commit: str | None) -> Path:
    """run_dir/name, or its staged name for ``commit``."""
    return staged_path(run_dir, commit, name) if commit else run_dir / name


def _staged(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(f"{STAGED_MARK}*"))


def publish(run_dir: Path, commit: str | None) -> None:
    """Put the committed epoch's staged files in place (the results of a shorter run retired first); staged files of
    any other commit never were committed and are removed."""
    staged = _staged(run_dir)
    mine = [p for p in staged if commit is not None and p.name.startswith(f"{STAGED_MARK}{commit}.")]
    if mine:
        retire_results(run_dir)
    for path in mine:
        os.replace(path, run_dir / path.name[len(f"{STAGED_MARK}{commit}."):])
    for path in staged:
        if path not in mine:
            path.unlink(missing_ok=True)


def discard_staged(run_dir: Path, commit: str) -> None:
    for path in Path(run_dir).glob(f"{STAGED_MARK}{commit}.*"):
        path.unlink(missing_ok=True)


def recover(run_dir: Path) -> None:
    """Complete an epoch whose commit (last.pt) was written but whose files were not all put in place, and remove
    the staged files of an epoch that was never committed.  Only where no writer is alive (the run lock held)."""
    if not _staged(run_dir):
        return
    last = Path(run_dir) / LAST_CHECKPOINT
    try:
        commit = load_last(last).get("commit") if last.is_file() else None
    except safeload.CheckpointError:
        commit = None  # unreadable: nothing staged can be known to belong to it
    publish(Path(run_dir), commit)


def settle(run_dir) -> None:
    """For readers: `recover` a run left between a commit and its renames, unless a writer holds it (it does so
    itself) or it cannot be written."""
    if not _staged(run_dir):
        return
    try:
        with RunLock(run_dir):
            recover(Path(run_dir))
    except (RunLockedError, OSError):
        pass


LAST_KEYS = ("models", "optimizers", "scaler", "epoch", "best", "history", "rng")


def load_last(path: Path) -> dict:
    """A run's last.pt, checked to be one (not, e.g., a best checkpoint copied over it)."""
    return safeload.require(safeload.load(path, "checkpoint"), LAST_KEYS, path, "checkpoint",
                            "a run's last.pt holds its whole training state (a best_*.pt copied over it?)")


def save_checkpoint(obj: dict, path: Path) -> None:
    with atomic.atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def write_history(run_dir: Path, history: list[dict], commit: str | None = None) -> None:
    """history.json and .csv (staged for ``commit``, if given)."""
    atomic.write_json(target(run_dir, HISTORY_JSON, commit), history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(target(run_dir, HISTORY_CSV, commit), buf.getvalue())


def write_per_image(run_dir: Path, counts: dict[str, dict[str, np.ndarray]], ids: list) -> None:
    """counts: {"<net>/<checkpoint>": {name: array [images, ...]}} (`SegmentationMetrics.per_image`); ids: one per
    image."""
    arrays = {f"{key}/{part}": np.asarray(v) for key, parts in counts.items() for part, v in parts.items()}
    with atomic.atomic_path(run_dir / PER_IMAGE_FILE, suffix=".npz") as tmp:
        np.savez_compressed(tmp, ids=np.asarray([str(i) for i in ids]), **arrays)


def add_epoch_confmats(run_dir: Path, epoch: int, confmats: dict[str, np.ndarray], commit: str | None = None) -> None:
    """Add (or replace) one epoch's per-image validation confusion matrices {net: [images, C, C]} (the result
    staged for ``commit``, if given)."""
    path = run_dir / EPOCH_CONFMATS
    arrays = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    arrays |= {f"{net}/{epoch}": np.asarray(cm, dtype=np.int32) for net, cm in confmats.items()}
    with atomic.atomic_path(target(run_dir, EPOCH_CONFMATS, commit), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_epoch_confmats(run_dir, network: str) -> dict[int, np.ndarray]:
    """{epoch: per-image confusion matrices [images, C, C]} of ``network`` (empty for runs written before them)."""
    path = Path(run_dir) / EPOCH_CONFMATS
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as f:
        return {int(k.rsplit("/", 1)[1]): f[k] for k in f.files if k.startswith(network + "/")}


# ------------------------------------------------------------------------------------------------ reading

def is_run_dir(path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_config(run_dir) -> TrainConfig:
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); runs are written by "
                                "`python -m mistudy train`")
    path = run_dir / CONFIG_FILE
    saved = _read_json(path)
    try:
        return config_from_json(saved)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def config_from_json(saved: dict) -> TrainConfig:
    """A TrainConfig from a saved config (config.json, or a finished run's copy in metrics.json)."""
    return TrainConfig.from_dict({**saved, "resume": False})


def load_history(run_dir) -> list[dict]:
    path = Path(run_dir) / HISTORY_JSON
    return _read_json(path, list) if path.exists() else []


def load_metrics(run_dir) -> dict | None:
    settle(run_dir)
    path = Path(run_dir) / METRICS_FILE
    return _read_json(path) if path.exists() else None


def load_per_image(run_dir, network: str, checkpoint: str) -> dict[str, np.ndarray]:
    """Every per-image statistic of one network and checkpoint ({name: [images, ...]}, see the module docstring),
    plus "ids" [images]."""
    path = Path(run_dir) / PER_IMAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished (per-image scores are written "
                                "by its final evaluation)")
    with np.load(path, allow_pickle=False) as f:
        key = f"{network}/{checkpoint}"
        if f"{key}/tp" not in f:
            raise KeyError(f"{path} has no per-image counts for {key}")
        return {"ids": f["ids"], **{k.rsplit("/", 1)[1]: f[k] for k in f.files if k.startswith(key + "/")}}


def _read_json(path: Path, kind: type = dict):
    """A run's JSON file, which holds a ``kind`` (an object; history.json: a list)."""
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text (not UTF-8)") from None
    if not isinstance(content, kind):
        raise ValueError(f"{path} holds a JSON {type(content).__name__}, not the {kind.__name__} a run writes there")
    return content


def find_runs(results_dir, dataset: str, use_case: str) -> list[Path]:
    """Finished runs (directories holding metrics.json) under <results_dir>/<dataset>/<use_case>/, sorted; hidden
    folders (a copy being made) are none."""
    return sorted(p.parent for p in use_case_dir(results_dir, dataset, use_case).glob(f"*/{METRICS_FILE}")
                  if not p.parent.name.startswith("."))


def load_run(run_dir) -> dict:
    """{"run_dir", "config", "metrics"} of a finished run (plain dicts); a missing or broken file raises.  "config" is
    in today's names and complete (a run saved before an option was renamed or added groups with today's runs)."""
    run_dir = Path(run_dir)
    settle(run_dir)
    out = {"run_dir": run_dir}
    for name, file in (("config", CONFIG_FILE), ("metrics", METRICS_FILE)):
        path = run_dir / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a finished run")
        out[name] = _read_json(path)
    out["config"] = {**asdict(config_from_json(out["config"])), "resume": out["config"].get("resume", False)}
    return out
