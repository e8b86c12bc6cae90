"""Train one use-case: the recipe, top to bottom.  The pieces are in `mistudy.training.engine` (set-up, steps, epochs),
`mistudy.training.loaders`, `mistudy.training.networks` and `mistudy.training.inference` (scoring), the files in `mistudy.training.runs` (the
run-directory contract), the collectives in `mistudy.training.distributed`.

`train(TrainConfig(...))` writes a run directory and returns its metrics; `train_or_load` reuses a finished run
of the same configuration (the notebooks call it); `evaluate_run` re-scores a saved run.
"""

from __future__ import annotations

import contextlib
import errno
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mistudy.io import atomic, safeload
from mistudy.methods.metrics import SCORING_VERSION, nan_to_none
from mistudy.training import distributed, engine, inference, loaders, networks, runs
from mistudy.training.config import CHECKPOINTS, PRIMARY_NETWORK, RESUMABLE_CHANGES, RUNTIME_OPTIONS, TrainConfig, profile_of
from mistudy.training.engine import NonFiniteLossError, Setup
from mistudy.training.progress import TrainingProgress, start_line


def train(cfg: TrainConfig) -> dict:
    """Train the use-case of ``cfg``, write its run directory, return the content of metrics.json (+ "run_dir").

    The run directory has one writer (`runs.RunLock`); what would overwrite or mix up an existing run is refused
    before anything is written (`runs.check_writable`).  A kill at any point loses at most the epoch in progress.
    """
    cfg.check_paths()  # values were checked when cfg was made
    loaders.check_workers(cfg)
    ctx = distributed.init(cfg.device)
    run_dir = cfg.resolved_run_dir()
    if cfg.resume and not runs.is_run_dir(run_dir):
        runs.check_writable(cfg, run_dir)  # raises: a mistyped --resume directory is refused before it is created
    top = run_dir  # the highest folder this run creates (None: none)
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    top = None if run_dir.exists() else top
    try:
        with runs.RunLock(run_dir) if ctx.is_main else contextlib.nullcontext():
            if ctx.is_main:
                _remove_debris(run_dir)  # first: an epoch a kill left half put in place is completed
            mode = runs.check_writable(cfg, run_dir) if ctx.is_main else None
            try:
                return _train_locked(cfg, ctx, run_dir, mode)
            except BaseException:
                if ctx.is_main and mode in ("new", "restart"):
                    _clean_failed_start(run_dir)
                raise
    except BaseException:
        if ctx.is_main and top is not None:  # the folders this run created, left empty
            for folder in [run_dir, *run_dir.parents[:len(run_dir.parts) - len(top.parts)]]:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise


def _train_locked(cfg: TrainConfig, ctx, run_dir: Path, mode: str | None) -> dict:
    resuming = cfg.resume and (run_dir / runs.LAST_CHECKPOINT).exists()
    weights = runs.weights_record(cfg) if ctx.is_main and not resuming else None  # before setup loads them
    s = engine.setup(cfg, ctx)
    state = resume_state(s, run_dir) if resuming else new_state(s)
    if ctx.is_main and not resuming:
        runs.write_config(cfg, run_dir)  # marks the directory as this run's before the first epoch
        runs.write_weights_record(run_dir, weights)
    progress = TrainingProgress(cfg.use_case, cfg.epochs, cfg.progress, enabled=ctx.is_main)
    steps, sizes = len(s.loaders["train"]), {split: len(d) for split, d in s.datasets.items()}
    progress.start(start_line(profile_of(cfg), sizes, cfg, steps, state["epoch"] + 1,
                              distributed.device_name(ctx.device), run_dir), steps, state["epoch"] + 1)
    if state.get("unevaluated"):  # an evaluation failed after this epoch's weights were saved: redo it first
        evaluate_epoch(s, run_dir, state, state["history"][-1], cfg.epochs)
    last_val = None
    for epoch in progress.epochs(state["epoch"] + 1):
        try:
            row = engine.train_one_epoch(s, epoch, progress)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}; {_kept(run_dir, state)}") from None
        distributed.broadcast_buffers(s.nets, ctx)  # every rank evaluates (and rank 0 saves) the same weights
        state["epoch"] = epoch
        scores = evaluate_epoch(s, run_dir, state, row, cfg.epochs)
        last_val = scores.get("val") if epoch == cfg.epochs else None
        progress.epoch_done(row)
        distributed.barrier(ctx)
    progress.close()
    summary = final_evaluation(s, run_dir, state, last_val)
    return {**summary, "run_dir": str(run_dir)}


def _kept(run_dir: Path, state: dict) -> str:
    saved = state.get("saved_epoch")
    return f"the last good checkpoint ({run_dir / runs.LAST_CHECKPOINT}, epoch {saved}) is kept" if saved else \
        "no epoch had been saved, so no checkpoint is kept"


def _remove_debris(run_dir: Path) -> None:
    """Temporary files of a writer that was killed mid-write, and an epoch it committed but did not finish putting
    in place (the lock says no writer is alive)."""
    runs.recover(run_dir)
    count, size = atomic.remove_temporaries(run_dir)
    if count:
        print(f"Removed {count} temporary file(s) ({size / 2**20:.0f} MiB) that an interrupted write left in "
              f"{run_dir}.")


def _clean_failed_start(run_dir: Path) -> None:
    """A run that failed before saving its first epoch (last.pt) has nothing to continue from: what it wrote
    (config.json, weights.json, the staged files of an epoch whose last.pt failed) is removed, and what is left is
    said."""
    if (run_dir / runs.LAST_CHECKPOINT).exists():
        print(f"The run in {run_dir} stopped; what it saved is kept (continue with --resume).")
        return
    for path in [run_dir / runs.CONFIG_FILE, run_dir / runs.WEIGHTS_RECORD, *run_dir.glob(runs.BEST_CHECKPOINTS_GLOB),
                 *run_dir.glob(runs.HISTORY_GLOB), *run_dir.glob(f"{runs.STAGED_MARK}*")]:
        path.unlink(missing_ok=True)
    left = sorted(p.name for p in run_dir.iterdir() if p.name != runs.LOCK_FILE) if run_dir.is_dir() else []
    if not left:
        print(f"The run stopped before its first epoch was saved; nothing was kept in {run_dir}.")
    else:
        print(f"The run stopped before its first epoch was saved; {run_dir} keeps only files it did not write: "
              f"{', '.join(left)}.")


class EvaluationError(RuntimeError):
    """Scoring an epoch failed; the epoch's training state was saved first, so --resume re-scores and continues."""


# What a training run raises for a user to act on (bad data, files, options, a full disk, another writer): the
# command line prints these as one line (`mistudy.io.cli.error_line`); anything else is a bug and keeps its traceback.
RUN_ERRORS = (NonFiniteLossError, inference.NonFiniteOutputError, EvaluationError, runs.RunLockedError,
              safeload.CheckpointError, ValueError, OSError)  # OSError: a full disk, a folder not writable...


def evaluate_epoch(s: Setup, run_dir: Path, state: dict, row: dict, epochs: int) -> dict:
    """Score the epoch's weights on the selection and validation splits (on eval epochs), add them to ``row`` and
    save the epoch (rank 0).  If scoring fails, the epoch is saved unscored before the error propagates."""
    epoch, cfg = state["epoch"], s.cfg
    scores = {}
    if epoch % cfg.eval_every == 0 or epoch == epochs:
        t0 = time.perf_counter()
        try:
            scores = {split: s.evaluate(split) for split in ("select", "val") if split in s.loaders}
        except inference.NonFiniteOutputError as e:  # diverged weights are not saved: a resume would meet them again
            raise inference.NonFiniteOutputError(f"after epoch {epoch}, {e}; {_kept(run_dir, state)}") from None
        except Exception as e:
            state["unevaluated"] = epoch
            if s.ctx.is_main:
                save_epoch(s, run_dir, state, row)
            raise EvaluationError(f"scoring epoch {epoch} failed ({type(e).__name__}: {e}); the epoch's weights and "
                                  f"training state are saved in {run_dir / runs.LAST_CHECKPOINT}: --resume scores it again and "
                                  "continues") from e
        row |= {f"{net}/{split}_{k}": m[k] for split, by_net in scores.items() for net, m in by_net.items()
                for k in runs.SCORES}
        row["eval_seconds"] = round(time.perf_counter() - t0, 3)  # both splits (the "seconds" column: training)
    state["unevaluated"] = None
    if s.ctx.is_main:
        save_epoch(s, run_dir, state, row, {net: m["per_image"]["confmat"] for net, m in scores.get("val", {}).items()})
    return scores


def new_state(s: Setup) -> dict:
    best = {n: {"loss": math.inf, "loss_epoch": None, "miou": -math.inf, "miou_epoch": None} for n in s.nets}
    return {"epoch": 0, "best": best, "history": []}


def resume_state(s: Setup, run_dir: Path) -> dict:
    """Networks, optimisers, scaler and RNG from last.pt; returns the saved epoch, best scores and history."""
    path = run_dir / runs.LAST_CHECKPOINT
    ckpt = runs.load_last(path)
    if s.cfg.epochs < ckpt["epoch"]:
        raise ValueError(f"cannot resume {run_dir} for {s.cfg.epochs} epochs: it has already trained {ckpt['epoch']}")
    for name, net in s.nets.items():
        safeload.load_weights(net, ckpt["models"].get(name, {}), path, "checkpoint")
        safeload.load_weights(s.optims[name], ckpt["optimizers"][name], path, "checkpoint")
        if "schedulers" in ckpt:
            s.schedulers[name].load_state_dict(ckpt["schedulers"][name])
    s.scaler.load_state_dict(ckpt["scaler"])
    networks.set_rng_state(ckpt["rng"])
    return {"epoch": ckpt["epoch"], "best": ckpt["best"], "history": ckpt["history"],
            "unevaluated": ckpt.get("unevaluated"), "saved_epoch": ckpt["epoch"]}


def save_epoch(s: Setup, run_dir: Path, state: dict, row: dict, confmats: dict | None = None) -> None:
    """Update the best scores and save the epoch (rank 0): the best checkpoints that improved, the validation
    confusion matrices ``confmats`` {net: [images, C, C]}, config and history under staged names, then last.pt, the
    epoch's one commit point, then the staged files renamed into place (`runs.publish`).  A failure before the
    commit leaves the files of the previous saved epoch as they were."""
    epoch, improved = state["epoch"], []
    for name in s.nets:
        best, loss, miou = state["best"][name], row[f"{name}/train_loss"], row.get(f"{name}/select_miou")
        if loss < best["loss"]:
            best.update(loss=loss, loss_epoch=epoch)
            improved.append(("best_loss", name))
        if miou is not None and not math.isnan(miou) and miou > best["miou"]:
            best.update(miou=miou, miou_epoch=epoch)
            improved.append(("best_miou", name))
    history = state["history"][:-1] if state["history"] and state["history"][-1]["epoch"] == epoch \
        else state["history"]  # an epoch saved unscored, now scored
    history = [*history, row]
    config, commit = asdict(s.cfg), runs.new_commit(epoch)
    try:
        for rule, name in improved:
            runs.save_checkpoint({"model": s.nets[name].state_dict(), "network": name, "epoch": epoch, "rule": rule,
                                  "config": config}, runs.staged_path(run_dir, commit, runs.checkpoint_name(rule, name)))
        if confmats:
            runs.add_epoch_confmats(run_dir, epoch, confmats, commit)
        runs.write_config(s.cfg, run_dir, commit)  # what last.pt holds (a resume may have extended the run)
        runs.write_history(run_dir, history, commit)
        runs.save_checkpoint({"models": {n: net.state_dict() for n, net in s.nets.items()},
                              "optimizers": {n: o.state_dict() for n, o in s.optims.items()},
                              "schedulers": {n: sch.state_dict() for n, sch in s.schedulers.items()},
                              "scaler": s.scaler.state_dict(), "epoch": epoch, "best": state["best"],
                              "history": history, "unevaluated": state.get("unevaluated"),
                              "rng": networks.rng_state(), "config": config, "commit": commit},
                             run_dir / runs.LAST_CHECKPOINT)  # the commit point
    except Exception as e:  # not committed (a kill here is sorted out by `runs.recover`)
        runs.discard_staged(run_dir, commit)
        if isinstance(e, atomic.DiskFullError):
            saved = state.get("saved_epoch")
            kept = (f"the run's files still hold epoch {saved} as it was saved, nothing was lost (free some space, "
                    "then continue with --resume)") if saved else \
                "no epoch had been saved yet (free some space, then start the run again)"
            raise atomic.DiskFullError(errno.ENOSPC, f"the disk holding {run_dir} is full: epoch {epoch} could not "
                                       f"be saved; {kept}") from e
        raise
    state["history"], state["saved_epoch"] = history, epoch
    runs.publish(run_dir, commit)


def final_evaluation(s: Setup, run_dir: Path, state: dict, last_val: dict | None) -> dict:
    """Score every kept checkpoint on the validation split; write metrics.json and per_image.npz (rank 0)."""
    cfg, ctx = s.cfg, s.ctx
    distributed.barrier(ctx)  # rank 0 has written the best checkpoints
    last = last_val or s.evaluate("val")
    by_network, counts = {n: {} for n in s.nets}, {}
    for rule in reversed(CHECKPOINTS):  # last, best_loss, best_miou
        for name in s.nets:
            if rule == "last":
                epoch, m = state["epoch"], last[name]
            else:
                path = runs.checkpoint_path(run_dir, rule, name)
                if not path.exists():  # best_miou without a selection split
                    continue
                ckpt = safeload.load(path, "checkpoint")
                epoch = ckpt["epoch"]
                if epoch == state["epoch"]:  # the last weights: already scored
                    m = last[name]
                else:
                    net = networks.place_networks(networks.build_networks(cfg, s.num_classes, (name,)), cfg, ctx)[name]
                    net.load_state_dict(ckpt["model"])
                    m = s.evaluate("val", {name: net})[name]
            by_network[name][rule] = {"epoch": epoch, **json_metrics(m)}
            counts[f"{name}/{rule}"] = m["per_image"]
    select = s.datasets.get("select")
    summary = {
        "use_case": cfg.use_case, "dataset": cfg.dataset, "seed": cfg.seed, "epochs": cfg.epochs,
        "device": distributed.device_name(ctx.device), "world_size": ctx.world_size,
        "eval_protocol": cfg.eval_protocol, "eval_passes": cfg.resolved_eval_passes,
        "primary_network": PRIMARY_NETWORK, "train_samples": len(s.datasets["train"]),
        "select_samples": len(select) if select is not None else 0, "val_samples": len(s.datasets["val"]),
        "networks": by_network, "config": asdict(cfg) | {"resume": False}, "scoring_version": SCORING_VERSION,
        # the CPU threads of this process: every network's float arithmetic differs with it (sums split over threads:
        # benchmarks/thread_reproducibility.py), so two runs of one configuration agree bit for bit only at the same
        # thread count
        "torch_threads": torch.get_num_threads(),
    }
    if ctx.is_main:
        runs.write_per_image(run_dir, counts, image_ids(s.datasets["val"]))
        atomic.write_json(run_dir / runs.METRICS_FILE, summary)
    distributed.barrier(ctx)
    return summary


def image_ids(dataset) -> list[str]:
    """The validation images' names (file stems for VOC/Cityscapes, indices for synthetic), for per_image.npz."""
    samples = getattr(dataset, "samples", None)
    return [p[0].stem for p in samples] if samples is not None else [str(i) for i in range(len(dataset))]


def json_metrics(m: dict) -> dict:
    """A metrics dict for JSON: NaN as None (absent classes, empty bins, undefined scores), no per-image tensors."""
    out = {}
    for k, v in m.items():
        if k == "per_image":
            continue
        if isinstance(v, (list, dict)):
            v = nan_to_none(v)
        elif isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out


# Config keys, besides the runtime options, that may differ between a finished run and a notebook's config for the
# run to be reused.
REUSE_IGNORED = RUNTIME_OPTIONS | {"resume", "run_dir", "results_dir", "run_name"}


def link_finished_run(cfg: TrainConfig, source) -> bool:
    """Make the finished run in ``source`` ``cfg``'s run as well, when it is one `train_or_load` would reuse (the same
    configuration, the options of REUSE_IGNORED aside; scored under the current metrics; the same weights files) and
    cfg's run directory does not exist yet.  Holding ``source``'s lock (a run being written or extended is left
    alone), its files are hard-linked (copied where the file system cannot link) into a hidden folder beside the
    use-case folders, then renamed into place, so the run appears whole or not at all.  A run's files are only ever
    replaced by atomic renames, never written in place, so the two directories stay independent afterwards.
    Returns whether it linked.  E.g. the tuned recipe's run of a use-case whose tuned rate is the shared one."""
    import os
    import secrets
    import shutil

    source, run_dir = Path(source), cfg.resolved_run_dir()
    if run_dir.exists() or not runs.is_run_dir(source):
        return False
    try:
        with runs.RunLock(source):
            metrics = runs.load_metrics(source)
            if metrics is None or metrics.get("scoring_version") != SCORING_VERSION or runs.config_differences(
                    cfg, source, ignore=REUSE_IGNORED, saved=metrics.get("config")):
                return False
            runs.check_weights(cfg, source)

            def link_or_copy(src, dst):
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

            def transient(_, names):  # the lock, an epoch's staged files, a writer's temporaries
                return [n for n in names if n == runs.LOCK_FILE or runs.STAGED_MARK in n or atomic.TEMPORARY_MARK in n]

            # staged two levels up (the dataset's folder, same file system): never inside a use-case folder, where
            # a copy left by a kill would be read as one more run
            tmp = run_dir.parent.parent / f".linking-{run_dir.parent.name}-{run_dir.name}-{secrets.token_hex(4)}"
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copytree(source, tmp, copy_function=link_or_copy, ignore=transient)
                os.rename(tmp, run_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (runs.RunLockedError, FileExistsError, FileNotFoundError):  # being written; other weights
        return False
    return True


def train_or_load(cfg: TrainConfig) -> dict:
    """Train ``cfg``, or load its run if the run directory already holds a finished run of the same configuration.
    Returns the run's metrics.json content plus "run_dir" (and "reused": True when nothing was trained).

    A finished run with a different configuration raises FileExistsError naming the differences (choose another
    run_name / results_dir, delete the run, or pass resume=True to extend it to more epochs).  With resume=True a
    finished run of the same configuration is reused too: there is nothing to continue.
    """
    run_dir = cfg.resolved_run_dir()
    metrics = runs.load_metrics(run_dir)
    if metrics is None or not runs.is_run_dir(run_dir):
        return train(cfg)
    # compared with the configuration the results were computed with (metrics.json keeps it), not with
    # config.json, which describes last.pt and may have moved on since (an interrupted extension)
    diff = runs.config_differences(cfg, run_dir, ignore=REUSE_IGNORED, saved=metrics.get("config"))
    if cfg.resume and diff:
        return train(cfg)  # extend it (train refuses the changes a resume cannot make)
    # resume asked of a finished run of this very configuration (a resumed study's finished runs): nothing to
    # continue, so it is reused (or scored again) as without resume, rather than evaluated once more
    if not diff and metrics.get("scoring_version") != SCORING_VERSION:
        if not (run_dir / runs.LAST_CHECKPOINT).exists():
            raise FileExistsError(f"{run_dir} holds a finished run scored by an older version of the metrics "
                                  f"({metrics.get('scoring_version', 1)}, now {SCORING_VERSION}) whose last.pt was "
                                  "deleted, so it cannot be scored again; delete the run to train it again")
        print(f"Scoring the finished run in {run_dir} again: its scores are of an older version of the metrics "
              f"({metrics.get('scoring_version', 1)}, now {SCORING_VERSION}); nothing is trained.")
        return train(cfg.replace(resume=True))
    if not diff:
        runs.check_weights(cfg, run_dir)
        print(f"Reusing the finished run in {run_dir} (same configuration); delete it to train again.")
        return {**metrics, "run_dir": str(run_dir), "reused": True}
    hint = " or pass resume=True to continue it" if set(diff) <= RESUMABLE_CHANGES else ""
    raise FileExistsError(f"{run_dir} holds a finished run with another configuration "
                          f"({runs.format_differences(diff)}); choose another run_name or results_dir, delete it{hint}")


def evaluate_run(run_dir, checkpoint: str = "best_miou", protocol: str | None = None, root: str | None = None,
                 device: str = "auto", batch_size: int | None = None) -> dict:
    """Evaluate the saved networks of a run on its validation split; returns {network: metrics}."""
    runs.settle(run_dir)
    cfg = runs.load_config(run_dir)
    overrides = {k: v for k, v in dict(eval_protocol=protocol, data_root=root, eval_batch_size=batch_size).items()
                 if v is not None}
    if protocol is not None and protocol != cfg.eval_protocol:
        overrides["eval_passes"] = None  # the new protocol's default number of passes
    cfg = cfg.replace(**overrides, device=device)
    nets = {n: inference.load_network(run_dir, n, checkpoint, distributed.resolve_device(device)) for n in cfg.networks}
    result = inference.evaluate_on_val(nets, cfg, device)
    return {n: json_metrics(m) for n, m in result.items()}
