"""Nothing lost, nothing mixed, every failure named (issue 21): one writer per run directory, resumes that never
overwrite a finished run, safe and named loading of checkpoints, a full disk, debris of killed writers, early
checks of the data and one-line errors from loader workers."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datatrees import VOC_SPLITS, write_voc_mask
from fakes import count_calls
from PIL import Image

from mistudy.io import atomic, safeload
from mistudy.io.cli import error_line
from mistudy.io.safeload import CheckpointError
from mistudy.training import engine, inference, loaders, runs
from mistudy.training.config import TrainConfig
from mistudy.training.train import train, train_or_load

TINY = dict(dataset="synthetic", train_samples=10, val_samples=6, resize_size=36, crop_size=32, unet_features=4,
            epochs=2, batch_size=4, device="cpu", progress="none", seed=3)
ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MISTUDY_PROGRESS": "none"}


def tiny(run_dir, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "run_dir": str(run_dir), **kw})


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mistudy", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def cli_train_args(run_dir, **kw) -> list[str]:
    options = {**TINY, "run_dir": str(run_dir), **kw}
    out = ["train", "--profile", "paper"]  # TrainConfig's defaults, as tiny() uses (and the COCO DeepLabV3 of mutual)
    for k, v in options.items():
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [f"--no-{k.replace('_', '-')}"] if v is False else [flag, str(v)]
    return out


# ----------------------------------------------------------------------------------- 2. one writer per run


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_a_killed_lock_is_not_stale(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mistudy", *cli_train_args(run_dir, epochs=400, seed=0)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lock = run_dir / runs.LOCK_FILE
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    assert lock.read_text().startswith(f"pid {first.pid} "), "the lock names its holder"
    second = cli(*cli_train_args(run_dir, epochs=400, seed=1))
    assert second.returncode == 1
    assert f"being written by another process (pid {first.pid} " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    first.send_signal(signal.SIGKILL)  # kill -9: the OS releases the lock, which cannot go stale
    first.wait(timeout=60)
    resumed = cli(*cli_train_args(run_dir, epochs=2, seed=0, resume=True))  # whatever epoch it reached
    if resumed.returncode != 0:  # killed after more than 2 epochs: refused as such, not blocked by the lock
        assert "already trained" in resumed.stderr, resumed.stderr
    else:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["seed"] == 0 and metrics["config"]["seed"] == 0
    assert not lock.exists()


def test_the_lock_is_exclusive_within_one_machine(tmp_path):
    with runs.RunLock(tmp_path / "run"):
        with pytest.raises(runs.RunLockedError, match=f"pid {os.getpid()} "):
            with runs.RunLock(tmp_path / "run"):
                pass
    with runs.RunLock(tmp_path / "run"):  # released on exit
        pass
    assert not (tmp_path / "run" / runs.LOCK_FILE).exists()


# ------------------------------------------------------------------------------------- 3. safe resume


def test_resume_never_overwrites_a_finished_run_whose_last_checkpoint_was_deleted(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(run_dir))
    (run_dir / "last.pt").unlink()  # to save space
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    for changes in ({}, {"lr": 0.5, "seed": 7}, {"epochs": 3}):
        with pytest.raises((FileExistsError, ValueError)) as e:
            train(tiny(run_dir, resume=True, **changes))
        assert ("last.pt was deleted" in str(e.value)) or ("different configuration" in str(e.value))
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, "nothing was written"


def test_resume_into_a_mistyped_directory_is_refused_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no run to continue"):
        train(tiny(tmp_path / "no-such-run", resume=True))
    assert not (tmp_path / "no-such-run").exists()


def test_a_failed_resume_leaves_the_finished_run_as_it_was(tmp_path, monkeypatch):
    """A resume to more epochs that fails before saving one: config.json still says 2 epochs, so the 2-epoch
    results are never taken for 3-epoch ones."""
    run_dir = tmp_path / "run"
    train(tiny(run_dir))
    config_before = (run_dir / "config.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(engine, "train_step", broken)
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny(run_dir, epochs=3, resume=True))
    assert (run_dir / "config.json").read_text() == config_before
    with pytest.raises(FileExistsError, match="epochs: saved 2, now 3"):
        train_or_load(tiny(run_dir, epochs=3))
    assert train_or_load(tiny(run_dir))["epochs"] == 2  # the finished run is reused as what it is


def test_an_extension_interrupted_after_an_epoch_is_no_longer_a_finished_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny(run_dir))
    calls = count_calls(monkeypatch, engine, "train_one_epoch", raise_at=2)  # dies in epoch 4
    with pytest.raises(KeyboardInterrupt):
        train(tiny(run_dir, epochs=4, resume=True))
    assert not (run_dir / "metrics.json").exists(), "the 2-epoch results no longer describe last.pt (epoch 3)"
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 4
    with pytest.raises(FileExistsError, match="pass resume=True to continue it"):
        train_or_load(tiny(run_dir, epochs=4))
    calls.update(raise_at=None)
    assert train(tiny(run_dir, epochs=4, resume=True))["epochs"] == 4
    with pytest.raises(ValueError, match="already trained 4"):
        train(tiny(run_dir, epochs=3, resume=True))


def test_a_schedule_that_depends_on_the_length_cannot_be_stretched(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1, lr_schedule="cosine"))
    with pytest.raises(ValueError, match="cosine learning-rate schedule depends on the number of epochs"):
        train(tiny(run_dir, epochs=2, lr_schedule="cosine", resume=True))


def test_a_run_is_not_reused_or_continued_once_its_starting_weights_were_replaced(tmp_path, capsys):
    """A run names its weights by path; `mistudy pretrain` run again writes other weights at the same path. Reusing
    the old run (or extending it) would report it as a run from the new weights: refused, naming the file."""
    from mistudy.methods.models import build_model

    weights, run_dir = tmp_path / "unet.pt", tmp_path / "run"
    torch.manual_seed(0)
    torch.save(build_model("unet", 4, init_features=4).state_dict(), weights)
    cfg = tiny(run_dir, epochs=1, unet_weights=str(weights))
    train(cfg)
    assert json.loads((run_dir / "weights.json").read_text())["unet_weights"]["path"] == str(weights)
    os.utime(weights)  # rewritten with the same content (a copy, a touch): still the same run
    capsys.readouterr()
    train_or_load(cfg)
    assert "Reusing the finished run" in capsys.readouterr().out

    torch.manual_seed(1)
    torch.save(build_model("unet", 4, init_features=4).state_dict(), weights)  # pretrained again
    with pytest.raises(FileExistsError, match=r"started from unet_weights .*unet.pt with SHA-256 [0-9a-f]{12}, but "
                                              r"the file now holds other weights"):
        train_or_load(cfg)
    with pytest.raises(FileExistsError, match="now holds other weights"):
        train(cfg.replace(epochs=2, resume=True))
    assert json.loads((run_dir / "history.json").read_text())[-1]["epoch"] == 1  # nothing trained on

    # a run written before weights.json existed: the file must not be newer than the run's last saved epoch
    (run_dir / "weights.json").unlink()
    with pytest.raises(FileExistsError, match="written after the last saved epoch .* keeps no record"):
        train_or_load(cfg)
    os.utime(weights, (0, 0))
    train_or_load(cfg)
    assert "Reusing the finished run" in capsys.readouterr().out
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="unet_weights .*unet.pt does not exist, so the run .* cannot be "
                                                "checked"):
        train_or_load(cfg)
    train(tiny(tmp_path / "plain", epochs=1))
    assert not (tmp_path / "plain" / "weights.json").exists()  # nothing to record without weights files


def test_weights_replaced_while_a_run_trains_are_not_taken_for_its_start(tmp_path, monkeypatch):
    """The record is taken once, at the start: a file pretrained again during the run's epochs does not become
    the weights the run is said to have started from."""
    from mistudy.methods.models import build_model

    weights = tmp_path / "unet.pt"
    torch.manual_seed(0)
    torch.save(build_model("unet", 4, init_features=4).state_dict(), weights)
    cfg = tiny(tmp_path / "run", epochs=2, unet_weights=str(weights))
    original = engine.train_one_epoch

    def replace_after_the_first_epoch(s, epoch, *a, **k):
        if epoch == 2:
            torch.manual_seed(1)
            torch.save(build_model("unet", 4, init_features=4).state_dict(), weights)
        return original(s, epoch, *a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", replace_after_the_first_epoch)
    train(cfg)
    with pytest.raises(FileExistsError, match="now holds other weights"):
        train_or_load(cfg)


# ------------------------------------------------------------------- 4. corrupt, truncated, hostile files


def _hostile_pickle(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, path)


def test_foreign_bytes_of_every_kind_are_named_not_a_pytorch_file(tmp_path):
    # On foreign bytes torch's weights-only unpickler raises whatever they provoke: of 2,000 seeded draws like
    # these, 10% raised IndexError, KeyError, EOFError, UnicodeDecodeError or struct.error rather than
    # UnpicklingError (CI once drew an IndexError that escaped as a traceback).
    rng = random.Random(0)
    draws = [rng.randbytes(rng.choice([1, 7, 64, 4096])) for _ in range(400)]
    plain = [b"", pickle.dumps([1, 2]), pickle.dumps({"model": 3}, protocol=2), b"hello world\n"]
    for i, content in enumerate(draws + plain):
        path = tmp_path / f"foreign-{i}.bin"
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            safeload.load(path, "weights file")
        assert str(e.value).startswith(f"weights file {path} is not a PyTorch file ({len(content)} bytes"), content


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_truncated_pytorch_file_of_either_format_is_named_truncated(tmp_path, zip_format):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(1000.0)}, path, _use_new_zipfile_serialization=zip_format)
    assert torch.equal(safeload.load(path)["w"], torch.arange(1000.0))
    whole = path.read_bytes()
    for cut in (len(whole) // 3, len(whole) - 9):
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is truncated or corrupt \\({cut} bytes"):
            safeload.load(path)


@pytest.mark.slow
def test_bad_weight_and_checkpoint_files_give_one_named_line_and_never_run_code(tmp_path):
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(random.Random(0).randbytes(4096))
    hostile, marker = tmp_path / "hostile.pt", tmp_path / "PWNED"
    _hostile_pickle(hostile, marker)
    cases = {random_bytes: "is not a PyTorch file", hostile: "refused, since unpickling it could run code",
             tmp_path: "does not exist (it is a directory)"}
    for path, words in cases.items():
        out = cli(*cli_train_args(tmp_path / f"run-{path.name}", use_case="mutual", batch_size=2,
                                  deeplab_weights=path))
        assert out.returncode == 1 and words in out.stderr and str(path) in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "weights_only=False" not in out.stderr and "weights_only` set to `False`" not in out.stderr
    assert not marker.exists(), "the pickle's payload ran"
    # a truncated last.pt, then --resume
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    out = cli(*cli_train_args(run_dir, epochs=2, resume=True))
    assert out.returncode == 1 and f"checkpoint {last} is truncated or corrupt" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_hostile_best_checkpoint_is_refused_when_a_run_is_evaluated(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    marker = tmp_path / "PWNED"
    _hostile_pickle(run_dir / "best_miou-unet.pt", marker)
    with pytest.raises(CheckpointError, match="best_miou-unet.pt holds a Python object"):
        inference.load_network(run_dir, "unet")
    assert not marker.exists()


# ------------------------------------------------------------------------ 5. loader workers and the data


def _bad_mask(voc_root: Path, image_id: str) -> Path:
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[0, 0] = 77  # not a VOC class, not 255
    write_voc_mask(path, labels)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_training_file_gives_the_same_one_line_error_with_or_without_workers(voc_root, tmp_path, workers):
    path = _bad_mask(voc_root, VOC_SPLITS["train"][1])
    out = cli(*cli_train_args(tmp_path / "run", dataset="voc", data_root=voc_root, train_samples=None, val_samples=None,
                              select_fraction=0, num_workers=workers, epochs=1))
    assert out.returncode == 1
    assert out.stderr.strip() == f"mistudy train: error: mask {path} has values [77] outside [0, 21) other than 255"
    assert not (tmp_path / "run").exists(), "a run that failed before its first epoch leaves nothing behind"


def test_error_line_unwraps_a_dataloader_worker_error():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise ValueError(f"cannot read image /data/{i}.jpg: truncated")

    with pytest.raises(ValueError) as e:
        list(torch.utils.data.DataLoader(Broken(), num_workers=2))
    assert "Caught ValueError in DataLoader worker" in str(e.value)
    assert error_line(e.value).startswith("cannot read image /data/") and error_line(e.value).endswith("truncated")


def test_a_bad_validation_mask_stops_the_run_before_it_trains(voc_root, tmp_path, monkeypatch):
    path = _bad_mask(voc_root, VOC_SPLITS["val"][0])
    trained = count_calls(monkeypatch, engine, "train_step")
    with pytest.raises(ValueError, match=f"mask {path} has values \\[77\\]"):
        train(tiny(tmp_path / "run", dataset="voc", data_root=str(voc_root), train_samples=None, val_samples=None,
                   select_fraction=0))
    assert trained["n"] == 0


def test_truncated_files_are_found_by_their_end_marker_before_training(voc_root, tmp_path):
    jpeg = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_SPLITS['train'][0]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:-200])
    with pytest.raises(ValueError, match=f"image {jpeg} is truncated"):
        train(tiny(tmp_path / "run", dataset="voc", data_root=str(voc_root), train_samples=None, val_samples=None,
                   select_fraction=0))


@pytest.mark.slow
def test_study_checks_sample_counts_before_any_notebook(voc_root, tmp_path):
    out = cli("study", "--dataset", "voc", "--data-root", str(voc_root), "--profile", "tiny", "--results-dir",
              str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f"), "--notebooks", "02")
    assert out.returncode == 2 and "train_samples=16 but voc 'train' has" in out.stderr, out.stderr
    assert not (tmp_path / "r" / "notebooks").exists()


# ------------------------------------------------------------------------------------------ 6. full disk


def _small_filesystem(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    """On a real 3 MiB filesystem where one can be mounted (root), else with ENOSPC simulated in torch.save."""
    disk = tmp_path / "disk"
    mounted = _small_filesystem(disk, "3m")
    try:
        run_dir = disk / "run"
        cfg = dict(unet_features=4, epochs=3)  # last.pt 1.4 MiB, best checkpoints 0.5 MiB: only epoch 1 fits
        if not mounted:
            real_save = torch.save
            calls = {"n": 0}

            def save(obj, f, *a, **k):
                calls["n"] += 1
                if calls["n"] > 3:  # epoch 1's best_loss, best_miou and last.pt are written
                    raise RuntimeError("[enforce fail at inline_container.cc] . basic_ios::clear: iostream error")
                return real_save(obj, f, *a, **k)

            monkeypatch.setattr(torch, "save", save)
            monkeypatch.setattr(atomic, "_NEARLY_FULL", 1 << 62)  # "nearly full": whatever is free
        with pytest.raises(atomic.DiskFullError) as e:
            train(tiny(run_dir, **cfg))
        message = str(e.value)
        assert f"the disk holding {run_dir} is full" in message and "nothing was lost" in message
        assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1, "the previous checkpoint is kept"
        assert not list(run_dir.glob(f".*{atomic.TEMPORARY_MARK}*")), "no partial file left"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_errors_are_recognised():
    assert atomic._disk_full(OSError(errno.ENOSPC, "No space left on device"), Path("/"))
    assert not atomic._disk_full(ValueError("bad"), Path("/"))


# ------------------------------------------------------------------------------------------- 7. debris


def test_temporary_files_of_a_killed_writer_are_removed_on_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    debris = run_dir / f".last.pt{atomic.TEMPORARY_MARK}abc123.pt"
    debris.write_bytes(b"\0" * 2 ** 20)
    train(tiny(run_dir, epochs=2, resume=True))
    assert not debris.exists()
    assert "Removed 1 temporary file(s) (1 MiB)" in capsys.readouterr().out


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(tmp_path, monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("no")

    monkeypatch.setattr(engine, "train_step", broken)
    with pytest.raises(RuntimeError):
        train(tiny(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
    assert "nothing was kept" in capsys.readouterr().out


def test_lr_must_be_positive_says_so():
    out = cli("train", "--lr", "-1")
    assert out.returncode == 2 and "must be > 0, got -1.0" in out.stderr
    out = cli("train", "--lr", "0")
    assert out.returncode == 2 and "must be > 0, got 0.0" in out.stderr


# --------------------------------------------------- issue 34, 1: one commit point per epoch (last.pt)


def _full_disk_at(monkeypatch, n: int) -> dict:
    """The n-th file written through `mistudy.io.atomic` from now on fails as on a full disk (ENOSPC); returns the
    counter of writes."""
    real, calls = atomic.atomic_path, {"n": 0}

    @contextlib.contextmanager
    def atomic_path(path, *a, **k):
        calls["n"] += 1
        with real(path, *a, **k) as tmp:
            if calls["n"] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield tmp

    monkeypatch.setattr(atomic, "atomic_path", atomic_path)
    return calls


def _one_state(run_dir: Path) -> int:
    """Assert that the run's files describe one state, the one last.pt holds: every best checkpoint at the epoch
    last.pt records for it, the history and config of last.pt, no confusion matrices of later epochs, and
    metrics.json (if any) scoring last.pt's epoch and best checkpoints; returns the epoch."""
    last = torch.load(run_dir / "last.pt", weights_only=True)
    epoch = last["epoch"]
    for name, best in last["best"].items():
        for rule in ("loss", "miou"):
            path = run_dir / f"best_{rule}-{name}.pt"
            assert torch.load(path, weights_only=True)["epoch"] == best[f"{rule}_epoch"], path
    assert [row["epoch"] for row in runs.load_history(run_dir)] == [row["epoch"] for row in last["history"]]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == last["config"]["epochs"]
    assert max(runs.load_epoch_confmats(run_dir, "unet")) <= epoch
    metrics = runs.load_metrics(run_dir)
    if metrics is not None:
        scored = metrics["networks"]["unet"]
        assert (scored["last"]["epoch"], scored["best_loss"]["epoch"], scored["best_miou"]["epoch"]) == \
            (epoch, last["best"]["unet"]["loss_epoch"], last["best"]["unet"]["miou_epoch"])
    return epoch


def test_a_full_disk_at_any_write_of_an_extension_leaves_one_state_and_a_resume_restores_it(tmp_path, monkeypatch):
    """A finished 1-epoch run extended to 2 epochs, the disk full at the 1st, 2nd, ... write: the run stays the
    finished 1-epoch run (byte for byte, metrics.json included) or has moved to epoch 2 as a whole; resumed, it
    ends exactly as an uninterrupted extension."""
    template, reference = tmp_path / "template", tmp_path / "reference"
    train(tiny(template, epochs=1))
    before = {p.name: p.read_bytes() for p in template.iterdir()}
    shutil.copytree(template, reference)
    expected = train(tiny(reference, epochs=2, resume=True))["networks"]
    assert expected["unet"]["best_loss"]["epoch"] == 2, "epoch 2 improves the best checkpoint (the case at stake)"
    n = 0
    while True:
        n += 1
        run_dir = tmp_path / f"full-at-{n}"
        shutil.copytree(template, run_dir)
        calls = _full_disk_at(monkeypatch, n)
        try:
            train(tiny(run_dir, epochs=2, resume=True))
        except atomic.DiskFullError as e:
            assert "could not be" in str(e) and str(run_dir) in str(e)
        monkeypatch.undo()
        if calls["n"] < n:
            break  # every write of the extension has failed once
        if _one_state(run_dir) == 1:
            assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before, f"write {n}"
        assert not list(run_dir.glob(".*")), f"write {n}: files left behind"
        assert train(tiny(run_dir, epochs=2, resume=True))["networks"] == expected, f"write {n}"
        _one_state(run_dir)
    assert n > 8


@pytest.mark.parametrize("renames", [0, 1, 3])
def test_a_kill_between_the_commit_and_the_renames_is_completed_by_the_next_reader_or_writer(tmp_path, monkeypatch,
                                                                                             renames):
    """Killed after last.pt of epoch 2 was written (the commit) and ``renames`` of the epoch's other files were
    put in place: whoever opens the run next completes the epoch, so no reader sees epoch-1 best checkpoints or
    metrics beside an epoch-2 last.pt."""
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    real, done = os.replace, {"n": 0}

    def replace(src, dst):
        if Path(src).name.startswith(runs.STAGED_MARK):  # the epoch's files, after the commit
            if done["n"] == renames:
                raise KeyboardInterrupt
            done["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(run_dir, epochs=2, resume=True))
    monkeypatch.undo()
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    net = inference.load_network(run_dir, "unet", "best_loss")  # a reader
    assert _one_state(run_dir) == 2 and runs.load_metrics(run_dir) is None
    last = torch.load(run_dir / "last.pt", weights_only=True)["models"]["unet"]
    assert all(torch.equal(v, last[k]) for k, v in net.state_dict().items())
    assert train(tiny(run_dir, epochs=2, resume=True))["networks"]["unet"]["last"]["epoch"] == 2
    _one_state(run_dir)


# ------------------------------------------------ issue 34, 2: nothing written outside the results directory


@pytest.mark.parametrize("name", ["../../../x", "/abs/path", "..", ".", "a/b", ""])
def test_a_run_name_that_would_leave_the_results_directory_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="run_name must be one plain folder name"):
        TrainConfig(**TINY, results_dir=str(tmp_path / "results"), run_name=name)
    assert TrainConfig(**TINY, run_name="seed0 (λ=0.5)-b").run_name  # any other name is one folder


def test_a_run_name_outside_the_results_directory_is_refused_by_train_and_study(tmp_path):
    results = tmp_path / "a" / "b" / "results"
    out = cli("train", "--profile", "tiny", "--results-dir", str(results), "--run-name", "../../../x")
    assert out.returncode == 2 and out.stderr.strip() == (
        "mistudy train: error: --run-name must be one plain folder name (no '/', not '.' or '..'), got '../../../x': "
        "runs stay inside <results_dir>/<dataset>/<use-case>/ (--run-dir names any other place)"), out.stderr
    out = cli("study", "--profile", "tiny", "--results-dir", str(results), "--figures-dir", str(tmp_path / "f"),
              "--notebooks", "02", "--set", "run_name=../../../x")
    assert out.returncode == 2 and "run_name must be one plain folder name" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.rglob("*x*")) and not results.exists()


# ------------------------------------------------------------ issue 34, 4: non-finite values and predictions


@pytest.mark.parametrize("option", ["boundary_tolerance", "lr", "kl_weight", "warmup_factor", "select_fraction"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_a_non_finite_number_is_refused_when_the_configuration_is_made(option, value):
    with pytest.raises(ValueError, match=f"^{option} must be a finite number, got {value}$"):
        TrainConfig(**{**TINY, option: value})


def test_a_non_finite_option_is_refused_by_train_before_anything_runs(tmp_path):
    out = cli("train", "--profile", "tiny", "--run-dir", str(tmp_path / "run"), "--set", "boundary_tolerance=nan")
    assert out.returncode == 2 and out.stderr.strip() == \
        "mistudy train: error: --boundary-tolerance must be a finite number, got nan", out.stderr
    assert not (tmp_path / "run").exists()


def _diverge_at(monkeypatch, epoch: int) -> None:
    """Epoch ``epoch`` trains with finite losses but leaves weights that predict NaN (as --lr 1e30 can)."""
    real = engine.train_one_epoch

    def train_one_epoch(s, e, *a, **k):
        row = real(s, e, *a, **k)
        if e == epoch:
            with torch.no_grad():
                next(iter(s.nets.values())).encoder1.conv1.weight.fill_(float("nan"))
        return row

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)


def test_weights_that_predict_non_finite_logits_are_not_saved_and_a_resume_goes_on(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _diverge_at(monkeypatch, 2)
    with pytest.raises(inference.NonFiniteOutputError) as e:
        train(tiny(run_dir, epochs=3))
    assert str(e.value) == (f"after epoch 2, unet predicts non-finite logits (NaN or inf): its weights have diverged "
                            f"(too high a learning rate?); the last good checkpoint ({run_dir / 'last.pt'}, epoch 1) "
                            "is kept")
    assert _one_state(run_dir) == 1
    monkeypatch.undo()
    assert train(tiny(run_dir, epochs=3, resume=True))["networks"]["unet"]["last"]["epoch"] == 3  # not stuck


def test_diverged_weights_in_the_first_epoch_keep_nothing_and_say_so(tmp_path, monkeypatch):
    _diverge_at(monkeypatch, 1)
    with pytest.raises(inference.NonFiniteOutputError, match="; no epoch had been saved, so no checkpoint is kept$"):
        train(tiny(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- issue 34, 3: resources bound by the machine


def test_more_loader_workers_than_cores_are_refused_before_anything_is_written(tmp_path):
    from mistudy.io.machine import available_cores

    with pytest.raises(ValueError, match=f"^num_workers must be at most {available_cores()} \\(the CPU cores this "
                                         "process may use\\), got 100000$"):
        train(tiny(tmp_path / "run", num_workers=100000))
    assert not (tmp_path / "run").exists()


_BUSY_WORKERS = """
import time, torch
from mistudy.training.config import TrainConfig
from mistudy.training.loaders import make_loader

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        time.sleep(300)  # busy: PyTorch's own check of its parent runs only between items

loader = make_loader(Slow(), TrainConfig(num_workers=2, batch_size=2, device="cpu"), train=False,
                     device=torch.device("cpu"))
iterator = iter(loader)
print(" ".join(str(w.pid) for w in iterator._workers), flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended (reaped by whoever adopted it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_no_loader_worker_outlives_a_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", _BUSY_WORKERS], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        time.sleep(0.5)  # the workers are inside __getitem__
    finally:
        parent.kill()  # kill -9, as the out-of-memory killer does
        parent.wait(timeout=60)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "loader workers outlived their parent"


# -------------------------------------------------------- issue 34, 6: one line instead of a traceback


def _main(capsys, *args) -> tuple[int, str]:
    """`mistudy ARGS` in this process: (exit status, stderr)."""
    from mistudy.__main__ import main

    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.strip()


def _one_line(err: str, *words: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


def test_a_best_checkpoint_copied_over_last_pt_is_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    shutil.copy(run_dir / "best_loss-unet.pt", run_dir / "last.pt")
    status, err = _main(capsys, *cli_train_args(run_dir, resume=True))
    assert status == 1
    _one_line(err, f"checkpoint {run_dir / 'last.pt'} does not hold models", "a best_*.pt copied over it?")
    status, err = _main(capsys, "evaluate", "--run", run_dir, "--checkpoint", "last", "--device", "cpu")
    assert status == 2
    _one_line(err, f"checkpoint {run_dir / 'last.pt'} does not hold models")


def test_an_edited_or_foreign_config_json_is_named(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny(run_dir, epochs=1))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "unet_features": 8}))
    status, err = _main(capsys, "evaluate", "--run", run_dir, "--checkpoint", "best_loss", "--device", "cpu")
    assert status == 2
    _one_line(err, f"checkpoint {run_dir / 'best_loss-unet.pt'} does not fit the network", "config.json edited")
    status, err = _main(capsys, *cli_train_args(run_dir, unet_features=8, epochs=2, resume=True))
    assert status == 1
    _one_line(err, f"checkpoint {run_dir / 'last.pt'} does not fit the network")
    (run_dir / "config.json").write_text(json.dumps([config]))
    for args, expected in [(["evaluate", "--run", run_dir, "--device", "cpu"], 2),
                           (cli_train_args(run_dir, epochs=2, resume=True), 1)]:
        status, err = _main(capsys, *args)
        assert status == expected
        _one_line(err, f"{run_dir / 'config.json'} holds a JSON list, not the dict a run writes there")
    (run_dir / "config.json").write_text(json.dumps({**config, "unet_features": "wide"}))
    status, err = _main(capsys, "evaluate", "--run", run_dir, "--device", "cpu")
    _one_line(err, f"{run_dir / 'config.json'}: ", "unet-features must be a positive integer, got 'wide'")


def test_a_folder_that_cannot_be_written_is_named_in_one_line(tmp_path, capsys, monkeypatch, voc_root):
    """Read-only folders (simulated: the tests run as root, whom permissions do not stop)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if "read-only" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    run_dir = tmp_path / "read-only" / "run"
    status, err = _main(capsys, *cli_train_args(run_dir))
    assert status == 1
    _one_line(err, f"cannot write the run directory {run_dir} (Permission denied)")
    cache = tmp_path / "read-only-cache"
    status, err = _main(capsys, *cli_train_args(tmp_path / "voc-run", dataset="voc", root=voc_root, train_samples=None,
                                                val_samples=None, select_fraction=0, cache_dir=cache))
    assert status == 1
    _one_line(err, f"Permission denied: {cache}")
    assert not (tmp_path / "voc-run").exists()


def test_a_full_disk_at_the_run_lock_is_named(tmp_path, capsys, monkeypatch):
    class FullFile:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "open", lambda *a, **k: FullFile(open(*a, **k)), raising=False)
    run_dir = tmp_path / "results" / "run"
    status, err = _main(capsys, *cli_train_args(run_dir))
    assert status == 1
    _one_line(err, f"the disk holding {run_dir} is full: its lock .lock could not be written; nothing was changed")
    assert not (tmp_path / "results").exists(), "the folders a failed start created are removed"


def test_the_full_protocol_on_real_data_refuses_batches_of_whole_images(tmp_path):
    with pytest.raises(ValueError, match="^eval_batch_size must be 1 under the full protocol on voc, got 4: whole "
                                         "images differ in size"):
        TrainConfig(**{**TINY, "dataset": "voc", "data_root": str(tmp_path), "eval_protocol": "full",
                       "eval_batch_size": 4})
    TrainConfig(**{**TINY, "dataset": "voc", "data_root": str(tmp_path), "eval_protocol": "full"})  # 1 by default


# ------------------------------------------------------------------ issue 34, 7: messages that do not mislead


def _voc(voc_root, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "dataset": "voc", "data_root": str(voc_root), "train_samples": None, "val_samples": None,
                          "select_fraction": 0, **kw})


def test_a_list_file_that_is_not_utf8_is_named(voc_root):
    listing = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_bytes(listing.read_bytes() + b"2007_\xe9t\xe9\n")
    with pytest.raises(ValueError, match=f"^{listing} is not UTF-8 text \\(byte b'\\\\xe9' at offset 41\\)"):
        loaders.build_datasets(_voc(voc_root))


def test_a_png_named_jpg_is_read_as_the_png_it_is_not_called_truncated(voc_root):
    jpeg = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_SPLITS['train'][0]}.jpg"
    Image.open(jpeg).save(jpeg, format="PNG")
    loaders.build_datasets(_voc(voc_root), check=True)
    jpeg.write_bytes(jpeg.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"image {jpeg} is truncated \\(.* its PNG end marker is missing\\)"):
        loaders.build_datasets(_voc(voc_root), check=True)


def test_too_many_samples_are_named_by_the_option(voc_root):
    with pytest.raises(ValueError, match="^train_samples=16 but voc 'train' has 3 images$"):
        loaders.build_datasets(_voc(voc_root, train_samples=16))
    with pytest.raises(ValueError, match="^val_samples=5 but voc 'val' has 2 images$"):
        loaders.build_datasets(_voc(voc_root, val_samples=5))


def test_a_full_disk_in_the_first_epoch_does_not_claim_an_earlier_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _full_disk_at(monkeypatch, 4)  # config.json is the 1st write, then epoch 1's files
    with pytest.raises(atomic.DiskFullError) as e:
        train(tiny(run_dir))
    assert str(e.value).endswith(f"the disk holding {run_dir} is full: epoch 1 could not be saved; no epoch had been "
                                 "saved yet (free some space, then start the run again)")
    assert "nothing was kept" in capsys.readouterr().out and not run_dir.exists()
    monkeypatch.undo()
    train(tiny(run_dir, epochs=1))
    (run_dir / "metrics.json").unlink()
    calls = _full_disk_at(monkeypatch, 2)  # per_image.npz, then metrics.json
    with pytest.raises(atomic.DiskFullError, match="metrics.json could not be written; there was no metrics.json "
                                                   "before \\(free some space, then continue"):
        train(tiny(run_dir, epochs=1, resume=True))
    assert calls["n"] == 2


def test_weights_that_give_nan_from_the_start_keep_nothing_and_say_it_once(tmp_path, capsys):
    from mistudy.methods.models import build_model

    weights = tmp_path / "nan.pt"
    net = build_model("unet", 4, init_features=4)
    torch.save({k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in net.state_dict().items()},
               weights)
    status, err = _main(capsys, *cli_train_args(tmp_path / "run", unet_weights=weights))
    assert status == 1
    _one_line(err, "non-finite unet loss (nan) at epoch 1, step 1; stopped; no epoch had been saved, so no "
                   "checkpoint is kept")
    assert not (tmp_path / "run").exists()


def test_an_option_given_two_values_is_refused(tmp_path, capsys):
    status, err = _main(capsys, *cli_train_args(tmp_path / "run"), "--set", "epochs=3")
    assert status == 2
    _one_line(err, "an option given two values: --set epochs=3 and --epochs 2")
    assert not (tmp_path / "run").exists()


def test_an_existing_run_asks_for_resume_once(tmp_path, capsys):
    train(tiny(tmp_path / "run", epochs=1))
    (tmp_path / "run" / "metrics.json").unlink()  # an unfinished run (a finished one is reported with its scores)
    status, err = _main(capsys, *cli_train_args(tmp_path / "run", epochs=1))
    assert status == 1
    _one_line(err, "already holds a run; pass --resume to continue it, or choose")


def test_a_training_split_of_one_sample_is_refused_before_batchnorm_meets_it(tmp_path):
    with pytest.raises(ValueError, match="has 1 samples: too few for one batch of 2, which DeepLabV3's BatchNorm needs"):
        train(tiny(tmp_path / "run", use_case="mutual", train_samples=1, batch_size=2))
    assert not (tmp_path / "run").exists()


def test_two_studies_on_one_results_directory_are_refused(tmp_path, capsys):
    results = tmp_path / "results"
    with runs.RunLock(results, "results directory"):
        status, err = _main(capsys, "study", "--profile", "tiny", "--results-dir", results, "--figures-dir",
                            tmp_path / "figures", "--notebooks", "01")
    assert status == 1
    _one_line(err, f"results directory {results} is being written by another process (pid {os.getpid()} ",
              "give this study another --results-dir")
    assert not (results / "study.log").exists()


# ----------------------------------------------- issue 34, 5: no image dropped or shared between splits unsaid


def test_a_cityscapes_image_in_another_format_is_named_not_skipped(cityscapes_root):
    png = next((cityscapes_root / "leftImg8bit" / "train" / "aachen").glob("*_leftImg8bit.png"))
    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpg)
    png.unlink()
    cfg = TrainConfig(**{**TINY, "dataset": "cityscapes", "data_root": str(cityscapes_root), "train_samples": None,
                         "val_samples": None, "select_fraction": 0})
    with pytest.raises(ValueError, match=f"^cityscapes image {jpg} is not a PNG \\(1 such file\\(s\\)\\)"):
        loaders.build_datasets(cfg)


def test_an_image_in_both_training_and_validation_lists_is_refused(voc_root):
    lists = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text((lists / "val.txt").read_text() + f"{VOC_SPLITS['train'][2]}\n")
    loaders.build_datasets(_voc(voc_root))  # without the check: as listed
    shared = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_SPLITS['train'][2]}.jpg"
    with pytest.raises(ValueError, match=f"^1 image\\(s\\) of voc's train split are also validation images, e.g. "
                                         f"{shared}: validation scores would not be held out"):
        loaders.build_datasets(_voc(voc_root), check=True)
