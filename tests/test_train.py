"""The training engine on tiny synthetic runs (CPU, seconds each)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fakes import count_calls

from mistudy.io.machine import available_cores
from mistudy.training import engine, inference, loaders, networks, runs
from mistudy.training.config import TrainConfig
from mistudy.training.engine import NonFiniteLossError
from mistudy.training.loaders import EpochSampler
from mistudy.training.train import evaluate_run, train

TINY = dict(dataset="synthetic", train_samples=10, val_samples=6, resize_size=36,
            crop_size=32, unet_features=4, epochs=3, batch_size=4, device="cpu", progress="none", seed=3)


def tiny(tmp_path, name="run", **kw):
    return TrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **kw})


def _strip_times(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second", "eval_seconds")} for row in history]


@pytest.mark.slow
def test_run_directory_and_determinism(tmp_path):
    a = train(tiny(tmp_path, "a"))
    b = train(tiny(tmp_path, "b"))
    run = tmp_path / "a"
    for name in ("config.json", "history.csv", "history.json", "last.pt", "metrics.json", "per_image.npz",
                 "best_loss-unet.pt", "best_miou-unet.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp*")), "temporary files left behind"
    ha, hb = runs.load_history(tmp_path / "a"), runs.load_history(tmp_path / "b")
    assert len(ha) == 3 and _strip_times(ha) == _strip_times(hb)
    assert a["networks"] == b["networks"]
    m = a["networks"]["unet"]
    assert set(m) == {"last", "best_loss", "best_miou"}
    # the last weights' mIoU, recomputed with scikit-learn from the saved network's predictions
    from sklearn.metrics import jaccard_score

    samples = inference.predict_samples(run, range(6), "last")
    y_true = np.concatenate([t.ravel() for t in samples["targets"]])
    y_pred = np.concatenate([p.ravel() for p in samples["predictions"]["unet"]])
    present = sorted(set(y_true) | set(y_pred))
    assert m["last"]["miou"] == pytest.approx(jaccard_score(y_true, y_pred, labels=present, average="macro"))
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    for col in ("epoch", "lr", "seconds", "images_per_second", "unet/train_loss", "unet/val_miou",
                "unet/val_iou_micro", "unet/val_pixel_accuracy", "unet/select_miou"):
        assert col in header
    # best_miou: the epoch with the highest mIoU on the selection split (never the reported validation split),
    # scored afterwards on the validation split
    best = max(ha, key=lambda r: r["unet/select_miou"])
    assert m["best_miou"]["epoch"] == best["epoch"]
    assert m["best_miou"]["miou"] == pytest.approx(best["unet/val_miou"])
    assert a["select_samples"] == 2 and a["val_samples"] == 6 and a["train_samples"] == 10


def test_existing_run_is_not_overwritten(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(FileExistsError, match="resume"):
        train(tiny(tmp_path, epochs=1))


@pytest.mark.slow
def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    full = train(tiny(tmp_path, "full", use_case="rmi", rmi_radius=2, batch_size=3))
    calls = count_calls(monkeypatch, engine, "train_step", raise_at=5)  # 3 steps per epoch: dies in epoch 2
    cfg = tiny(tmp_path, "cut", use_case="rmi", rmi_radius=2, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    calls.update(raise_at=None)
    resumed = train(tiny(tmp_path, "cut", use_case="rmi", rmi_radius=2, batch_size=3, resume=True))
    assert resumed["networks"] == full["networks"]
    assert _strip_times(runs.load_history(tmp_path / "cut")) == _strip_times(runs.load_history(tmp_path / "full"))


@pytest.mark.slow
def test_a_finished_run_extended_is_the_longer_run(tmp_path):
    """The long profile is the standard runs continued (README): a finished 2-epoch run resumed to 3 epochs equals a
    3-epoch run, history and reported metrics, when the learning rate does not depend on the length."""
    longer = train(tiny(tmp_path, "three", epochs=3))
    train(tiny(tmp_path, "extended", epochs=2))
    extended = train(tiny(tmp_path, "extended", epochs=3, resume=True))
    assert extended["networks"] == longer["networks"]
    assert _strip_times(runs.load_history(tmp_path / "extended")) == _strip_times(runs.load_history(tmp_path / "three"))


def test_resume_refuses_changed_config(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr"):
        train(tiny(tmp_path, epochs=2, lr=0.5, resume=True))


# TINY has 3 steps per epoch (10 samples, batch 4: 4 + 4 + 2).
@pytest.mark.slow
@pytest.mark.parametrize("check_every,poisoned_call,where,saved_epochs", [
    (None, 4, "epoch 2, step 1", 1),  # CPU default: every step
    (2, 4, "epoch 2, step 1", 1),  # found at step 2, reported as step 1
    (50, 3, "epoch 1, step 3", 0),  # an epoch's last step is always checked, before anything is saved
])
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, check_every, poisoned_call, where,
                                                        saved_epochs):
    real = engine.Objective.__call__
    calls = {"n": 0}

    def poisoned(self, logits, target, other=None):
        calls["n"] += 1
        loss, parts = real(self, logits, target, other)
        return (loss * float("nan"), parts) if calls["n"] == poisoned_call else (loss, parts)

    monkeypatch.setattr(engine.Objective, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match=where):
        train(tiny(tmp_path, finite_check_every=check_every))
    run = tmp_path / "run"
    if saved_epochs:
        assert torch.load(run / "last.pt", weights_only=True)["epoch"] == saved_epochs
    else:
        assert not (run / "last.pt").exists()
    assert len(runs.load_history(run) if (run / "history.json").exists() else []) == saved_epochs
    assert not (run / "metrics.json").exists()
    assert not list(run.glob(".*tmp*"))


def test_loss_meter_finds_the_first_non_finite_loss_and_sums():
    meter = engine.LossMeter()
    t = torch.tensor
    meter.add(1, {"deeplabv3": {"loss": t(1.0)}, "unet": {"loss": t(2.0)}}, batch_size=4)
    assert meter.first_nonfinite() is None
    meter.add(2, {"deeplabv3": {"loss": t(3.0)}, "unet": {"loss": t(float("inf"))}}, batch_size=2)
    meter.add(3, {"deeplabv3": {"loss": t(float("nan"))}, "unet": {"loss": t(float("nan"))}}, batch_size=2)
    assert meter.first_nonfinite() == (2, "unet", float("inf"))
    assert meter.first_nonfinite() is None  # each step is inspected once
    assert meter.seen == 8
    assert meter.sums["deeplabv3"]["loss"].isnan()  # the sums keep everything
    meter = engine.LossMeter()
    meter.add(1, {"unet": {"loss": t(1.0), "ce": t(0.5)}}, batch_size=4)
    meter.add(2, {"unet": {"loss": t(4.0), "ce": t(1.0)}}, batch_size=2)
    assert meter.sums["unet"]["loss"].item() == 12.0 and meter.sums["unet"]["ce"].item() == 4.0


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    # Real inductor compilation on CPU (~30 s); on CPU "reduce-overhead" compiles without CUDA graphs.
    # The saved weights must carry the plain module's keys, so that they load into an eager network.
    kw = dict(epochs=2, train_samples=8, val_samples=4)
    eager = train(tiny(tmp_path, "eager", **kw))
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = train(tiny(tmp_path, "compiled", compile=True, compile_mode="reduce-overhead", **kw))
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    for a, b in zip(runs.load_history(tmp_path / "eager"), runs.load_history(tmp_path / "compiled")):
        assert b["unet/train_loss"] == pytest.approx(a["unet/train_loss"], rel=1e-4)
    assert compiled["networks"]["unet"]["last"]["pixel_accuracy"] == pytest.approx(
        eager["networks"]["unet"]["last"]["pixel_accuracy"], abs=0.02)
    keys = lambda run: list(torch.load(tmp_path / run / "last.pt", weights_only=True)["models"]["unet"])
    assert keys("compiled") == keys("eager")
    assert evaluate_run(tmp_path / "compiled", "last", device="cpu")["unet"]["pixel_accuracy"] == pytest.approx(
        compiled["networks"]["unet"]["last"]["pixel_accuracy"])


def test_same_data_order_and_crops_across_use_cases(tmp_path):
    def targets(cfg):
        train_set = loaders.build_datasets(cfg)["train"]
        loader = loaders.make_loader(train_set, cfg, train=True, device=torch.device("cpu"))
        loader.sampler.set_epoch(2)
        return torch.cat([t for _, t, _ in loader])

    base = targets(tiny(tmp_path, use_case="baseline", batch_size=2))
    rmi = targets(tiny(tmp_path, use_case="rmi", batch_size=5))
    assert torch.equal(base, rmi)


@pytest.mark.parametrize("n,batch,expected", [(9, 8, 8), (10, 8, 10), (8, 8, 8), (1, 4, 1)])
def test_sampler_drops_only_a_single_sample_last_batch(n, batch, expected):
    assert len(EpochSampler(n, 0, shuffle=True, batch_size=batch)) == expected


def test_default_loader_workers(tmp_path):
    cfg = tiny(tmp_path)
    train_set = loaders.build_datasets(cfg)["train"]
    assert loaders.make_loader(train_set, cfg, train=True, device=torch.device("cpu")).num_workers == 0
    cuda = loaders.make_loader(train_set, cfg, train=True, device=torch.device("cuda"), rank=1, world_size=2)
    assert cuda.num_workers == min(8, available_cores() // 2) and cuda.pin_memory  # built, not iterated
    assert loaders.make_loader(train_set, tiny(tmp_path, num_workers=1), train=False,
                              device=torch.device("cpu")).num_workers == 1


def test_sampler_shards_cover_the_data():
    shards = [list(EpochSampler(7, 0, shuffle=False, batch_size=2, rank=r, world_size=2, drop_single=False))
              for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7))


@pytest.mark.slow
def test_mutual_sequential_runs_three_forward_passes(tmp_path, monkeypatch):
    counts = {"deeplabv3": 0, "unet": 0}
    real_build = networks.build_networks

    def counting(cfg, num_classes=None, names=None):
        nets = real_build(cfg, num_classes, names)
        for name, net in nets.items():
            net.register_forward_hook(lambda m, i, o, name=name: counts.__setitem__(name, counts[name] + 1) if m.training else None)
        return nets

    monkeypatch.setattr(engine, "build_networks", counting)
    cfg = tiny(tmp_path, use_case="mutual", epochs=1, batch_size=4, train_samples=8, val_samples=2)
    summary = train(cfg)
    assert counts == {"deeplabv3": 4, "unet": 2}  # 2 steps: teacher twice, student once per step
    assert set(summary["networks"]) == {"deeplabv3", "unet"}
    for f in ("best_loss-deeplabv3.pt", "best_loss-unet.pt", "best_miou-unet.pt"):
        assert (tmp_path / "run" / f).is_file()
    hist = runs.load_history(tmp_path / "run")[0]
    assert hist["unet/train_kl"] > 0 and hist["deeplabv3/train_kl"] > 0  # two random networks disagree


def test_frozen_bn_stats_keeps_running_estimates():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), networks.frozen_bn_stats(net):
        net(torch.randn(4, 1, 3, 3) * 5 + 2)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net[1].momentum == 0.1


@pytest.mark.slow
def test_random_crop_evaluation_is_seeded(tmp_path):
    # The authors' random-crop evaluation, made repeatable: crops seeded by (seed, sample), so a later
    # evaluation of the saved weights reproduces the run's numbers, and they differ from the centre crop.
    summary = train(tiny(tmp_path, epochs=1, eval_protocol="random-crop", resize_size=48))
    last = summary["networks"]["unet"]["last"]
    for _ in range(2):
        again = evaluate_run(tmp_path / "run", "last", device="cpu")["unet"]
        assert again["pixel_accuracy"] == last["pixel_accuracy"] and again["miou"] == last["miou"]
    centre = evaluate_run(tmp_path / "run", "last", protocol="paper", device="cpu")["unet"]
    assert centre["pixel_accuracy"] != last["pixel_accuracy"]


@pytest.mark.slow
def test_evaluate_run_matches_metrics_json(tmp_path):
    summary = train(tiny(tmp_path, epochs=2))
    again = evaluate_run(tmp_path / "run", "best_miou", device="cpu")
    assert again["unet"]["miou"] == pytest.approx(summary["networks"]["unet"]["best_miou"]["miou"])
    full = evaluate_run(tmp_path / "run", "last", protocol="full", device="cpu")["unet"]
    # "full" on synthetic data: the whole 36x36 images, every pixel labelled; checked against a direct prediction
    assert full["labelled_pixels"] == 6 * 36 * 36
    net = inference.load_network(tmp_path / "run", "unet", "last")
    whole = loaders.build_datasets(runs.load_config(tmp_path / "run").replace(eval_protocol="full"))["val"]
    with torch.no_grad():
        correct = sum(int((net(image[None]).argmax(1)[0] == mask).sum()) for image, mask in (whole[i] for i in range(6)))
    assert full["pixel_accuracy"] == pytest.approx(correct / (6 * 36 * 36))


def test_a_missing_root_is_found_before_training_not_when_a_config_is_read(tmp_path):
    """Values are checked when a config is made; files when a run starts: a saved VOC run's config loads on a
    machine without the data (to tabulate it), and training it there fails at once, naming the path."""
    cfg = TrainConfig(dataset="voc", data_root=str(tmp_path / "nowhere"), run_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cfg.check_paths()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="unet_weights .*missing.pt does not exist"):
        TrainConfig(unet_weights=str(tmp_path / "missing.pt")).check_paths()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mistudy", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["train", "--use-case", "foo"], "invalid choice: 'foo'"),
    (["train", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["train", "--batch-size", "0"], "positive integer"),
    (["train", "--epochs", "-3"], "positive integer"),
    (["train", "--dataset", "cityscapes"], "root"),
    (["train", "--dataset", "voc", "--data-root", "/does/not/exist"], "/does/not/exist"),
    (["train", "--dataset", "voc", "--root", "/does/not/exist"], "/does/not/exist"),  # the old name, an alias
    (["train", "--use-case", "mutual", "--batch-size", "1"], "ASPP"),
    (["train", "--compile-mode", "reduce-overhead"], "needs --compile"),
    (["train", "--finite-check-every", "0"], "positive integer"),
    (["evaluate", "--run", "/tmp"], "not a run directory"),
])
def test_cli_bad_options_fail_fast_with_one_line(args, needle):
    r = _cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.slow
def test_cli_help_documents_every_option():
    out = _cli("train", "--help", env={"MISTUDY_PROFILE": "quick"}).stdout
    for f in ("--use-case", "--rmi-radius", "--kl-temperature", "--eval-protocol", "--resume", "--num-workers",
              "--seed", "--device", "--train-samples", "--compile-mode", "--finite-check-every"):
        assert f in out
    assert "training epochs (paper: 200) (default: 6)" in " ".join(out.split())  # the quick profile's
    paper = " ".join(_cli("train", "--profile", "paper", "--help").stdout.split())
    assert "training epochs (paper: 200) (default: 200)" in paper


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    run = tmp_path / "ddp"
    args = ["--use-case", "baseline", "--dataset", "synthetic", "--train-samples", "12", "--val-samples", "7",
            "--resize-size", "36", "--crop-size", "32", "--unet-features", "4",
            "--epochs", "2", "--batch-size", "3", "--device", "cpu", "--progress", "none", "--run-dir", str(run)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "mistudy", "train", *args], capture_output=True, text=True, timeout=180,
                       cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    files = sorted(p.name for p in run.iterdir())
    assert files == sorted(["config.json", "history.csv", "history.json", "last.pt", "metrics.json",
                            "per_image.npz", "val_per_epoch.npz", "best_loss-unet.pt", "best_miou-unet.pt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # nothing written anywhere else
    saved = json.loads((run / "metrics.json").read_text())["networks"]["unet"]
    single = evaluate_run(run, "last", device="cpu")["unet"]
    assert single["miou"] == pytest.approx(saved["last"]["miou"], abs=1e-12)
    assert single["labelled_pixels"] == saved["last"]["labelled_pixels"]
    for key in ("boundary_f", "ece", "mean_entropy_bits", "mutual_information_bits"):  # every count reduced over ranks
        assert single[key] == pytest.approx(saved["last"][key], rel=1e-9), key
    assert single["reliability"]["count"] == saved["last"]["reliability"]["count"]
    assert len(runs.load_history(run)) == 2


@pytest.mark.slow
def test_voc_training_identical_with_and_without_cache(voc_root, tmp_path):
    common = dict(TINY, dataset="voc", data_root=str(voc_root), epochs=2, batch_size=2, train_samples=None,
                  val_samples=None, select_fraction=0.2)  # 1 of the tree's 3 training images held out for selection
    plain = train(TrainConfig(**common, run_dir=str(tmp_path / "plain")))
    cached = train(TrainConfig(**common, run_dir=str(tmp_path / "cached"), cache_dir=str(tmp_path / "cache")))
    assert any((tmp_path / "cache").iterdir())
    assert plain["networks"] == cached["networks"]
    assert _strip_times(runs.load_history(tmp_path / "plain")) == _strip_times(runs.load_history(tmp_path / "cached"))


@pytest.mark.slow
def test_rmi_training_same_with_fast_and_reference_loss(tmp_path, monkeypatch):
    from rmi_reference import rmi_loss_reference

    cfg = dict(use_case="rmi", rmi_radius=3, epochs=2, batch_size=3)
    fast = train(tiny(tmp_path, "fast", **cfg))

    class Reference(torch.nn.Module):
        def __init__(self, num_classes, radius, pool, pool_size, bce_weight, ignore_index, check_target, base):
            super().__init__()
            self.kw = dict(num_classes=num_classes, radius=radius, pool=pool, pool_size=pool_size,
                           ignore_index=ignore_index)
            self.bce_weight = bce_weight

        def parts(self, logits, target):  # each term of the reference alone: lambda = 1 is BCE, lambda = 0 RMI
            return {"bce": rmi_loss_reference(logits, target, bce_weight=1.0, **self.kw),
                    "rmi": rmi_loss_reference(logits, target, bce_weight=0.0, **self.kw)}

        def combine(self, parts):  # Zhao et al.'s mix, written here again: lambda * BCE + (1 - lambda) * RMI
            return self.bce_weight * parts["bce"] + (1 - self.bce_weight) * parts["rmi"]

    monkeypatch.setattr(engine, "RMILoss", lambda n, **kw: Reference(n, **kw))
    ref = train(tiny(tmp_path, "ref", **cfg))
    hf, hr = runs.load_history(tmp_path / "fast"), runs.load_history(tmp_path / "ref")
    for a, b in zip(hf, hr):
        assert a["unet/train_loss"] == pytest.approx(b["unet/train_loss"], rel=1e-5)
    for key in ("pixel_accuracy", "miou"):
        assert fast["networks"]["unet"]["last"][key] == pytest.approx(ref["networks"]["unet"]["last"][key], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("use_case", ["baseline", "rmi"])
def test_bf16_autocast_and_channels_last_paths_train(tmp_path, use_case):
    # The CUDA settings (bf16 autocast, channels-last; also the quick profile's on CPUs with bf16) exercised on CPU:
    # the same computation as float32 up to bf16 rounding.
    train(tiny(tmp_path, "bf16", use_case=use_case, amp="bf16", channels_last=True, epochs=1))
    train(tiny(tmp_path, "fp32", use_case=use_case, epochs=1))
    bf16, fp32 = (runs.load_history(tmp_path / name)[0]["unet/train_loss"] for name in ("bf16", "fp32"))
    assert bf16 == pytest.approx(fp32, rel=0.05) and bf16 != fp32


# ------------------------------------------------------------------ selection split, protocols, per-image scores

def _digests(dataset):
    import hashlib
    return {hashlib.sha1(dataset[i][0].numpy().tobytes()).hexdigest() for i in range(len(dataset))}


def test_synthetic_selection_split_is_its_own_and_sized_by_the_fraction(tmp_path):
    cfg = tiny(tmp_path, train_samples=20, val_samples=8, select_fraction=0.25, eval_protocol="full")
    sets = loaders.build_datasets(cfg)
    assert len(sets["select"]) == 5 and len(sets["val"]) == 8
    raw = {k: loaders.build_datasets(cfg.replace(eval_protocol="full"))[k] for k in ("select", "val")}
    assert not _digests(raw["select"]) & _digests(raw["val"])
    assert "select" not in loaders.build_datasets(cfg.replace(select_fraction=0.0))


def test_voc_selection_split_is_held_out_of_train_and_never_the_validation_split(voc_root, tmp_path):
    cfg = TrainConfig(**{**TINY, "dataset": "voc", "data_root": str(voc_root), "train_samples": None,
                         "val_samples": None,
                         "select_fraction": 0.2, "run_dir": str(tmp_path / "r")})
    sets = loaders.build_datasets(cfg)
    stems = {k: [p[0].stem for p in ds.samples] for k, ds in sets.items()}
    # 2007_000032's hash is 0.125 < 0.2: held out; the other two train images (0.30, 0.81) stay
    assert stems == {"train": ["2007_000039", "2008_000123"], "select": ["2007_000032"],
                     "val": ["2007_000033", "2009_000456"]}
    with pytest.raises(ValueError, match="select_fraction=0.01 leaves voc split 'select' empty"):
        loaders.build_datasets(cfg.replace(select_fraction=0.01))


def test_training_without_selection_split_has_no_best_miou(tmp_path):
    summary = train(tiny(tmp_path, epochs=2, select_fraction=0.0))
    assert set(summary["networks"]["unet"]) == {"last", "best_loss"} and summary["select_samples"] == 0
    assert "unet/select_miou" not in runs.load_history(tmp_path / "run")[0]
    with pytest.raises(FileNotFoundError, match="best_miou needs a selection split"):
        inference.load_network(tmp_path / "run", "unet", "best_miou")


@pytest.mark.slow
def test_full_protocol_scores_at_the_masks_own_resolution(voc_root, tmp_path):
    import numpy as np
    from PIL import Image

    cfg = TrainConfig(**{**TINY, "dataset": "voc", "data_root": str(voc_root), "train_samples": None,
                         "val_samples": None,
                         "select_fraction": 0.2, "epochs": 1, "eval_protocol": "full", "resize_size": 36,
                         "crop_size": 32, "run_dir": str(tmp_path / "r")})
    val = loaders.build_datasets(cfg)["val"]
    for i, (image_path, mask_path) in enumerate(val.samples):
        image, mask = val[i]
        original = np.array(Image.open(mask_path))
        assert tuple(mask.shape) == original.shape and np.array_equal(mask.numpy(), original)  # never resized
        assert min(image.shape[1:]) == 36  # the network sees the image at the training scale
        assert image.shape[1] / image.shape[2] == pytest.approx(original.shape[0] / original.shape[1], abs=0.05)
    summary = train(cfg)
    labelled = sum(int((np.array(Image.open(m)) != 255).sum()) for _, m in val.samples)
    assert summary["networks"]["unet"]["last"]["labelled_pixels"] == labelled
    with np.load(tmp_path / "r" / "per_image.npz") as f:
        counts = f["unet/last/tp"] + f["unet/last/fn"]  # per image and class: the labelled pixels of the class
        assert counts.sum() == labelled and list(f["ids"]) == ["2007_000033", "2009_000456"]


@pytest.mark.slow
def test_random_crop_protocol_pools_five_passes_by_default(tmp_path):
    cfg = tiny(tmp_path, epochs=1, eval_protocol="random-crop", resize_size=48)
    assert cfg.resolved_eval_passes == 5
    summary = train(cfg)
    pixels = 5 * 6 * 32 * 32  # 5 passes x 6 validation images x one 32x32 crop (synthetic: no ignored pixels)
    assert summary["networks"]["unet"]["last"]["labelled_pixels"] == pixels and summary["eval_passes"] == 5
    one = evaluate_run(tmp_path / "run", "last", device="cpu")  # the run's own protocol: the same 5 passes
    assert one["unet"]["labelled_pixels"] == pixels
    assert one["unet"]["miou"] == summary["networks"]["unet"]["last"]["miou"]
    single = train(tiny(tmp_path, "one", epochs=1, eval_protocol="random-crop", resize_size=48, eval_passes=1))
    assert single["networks"]["unet"]["last"]["labelled_pixels"] == pixels // 5
    with pytest.raises(ValueError, match="only the random-crop protocol"):
        tiny(tmp_path, eval_passes=5)


@pytest.mark.slow
def test_per_image_counts_rebuild_the_confusion_matrix_and_match_the_predictions(tmp_path):
    import numpy as np

    from oracles import miou_from_counts

    summary = train(tiny(tmp_path, epochs=1))
    counts = runs.load_per_image(tmp_path / "run", "unet", "last")
    last = summary["networks"]["unet"]["last"]
    assert miou_from_counts(*(counts[k].sum(0) for k in ("tp", "fp", "fn"))) == pytest.approx(last["miou"])
    assert counts["tp"].sum() / (counts["tp"] + counts["fn"]).sum() == pytest.approx(last["pixel_accuracy"])
    samples = inference.predict_samples(tmp_path / "run", range(6), "last")
    for i, (target, pred) in enumerate(zip(samples["targets"], samples["predictions"]["unet"])):
        tp = [int(((pred == c) & (target == c)).sum()) for c in range(7)]
        fp = [int(((pred == c) & (target != c)).sum()) for c in range(7)]
        assert counts["tp"][i].tolist() == tp and counts["fp"][i].tolist() == fp
    union = counts["tp"] + counts["fp"] + counts["fn"]
    by_hand = [np.mean([t / u for t, u in zip(counts["tp"][i], union[i]) if u]) for i in range(6)]
    assert counts["miou"].tolist() == pytest.approx(by_hand)


def test_learning_rate_factors_by_hand():
    from mistudy.training.networks import LRFactor

    linear = LRFactor("constant", total=100, warmup_steps=4, warmup_mode="linear", warmup_factor=0.2)
    assert [linear(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    slow = LRFactor("poly", total=12, warmup_steps=2, warmup_mode="constant", warmup_factor=0.01)
    # the RMI authors' slow start: constant 0.01 x lr, then (1 - u)^0.9 over the remaining 10 steps
    assert [slow(t) for t in (0, 1, 2, 7, 12)] == pytest.approx([0.01, 0.01, 1.0, 0.5 ** 0.9, 0.0])
    cosine = LRFactor("cosine", total=10)
    assert [cosine(t) for t in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])


@pytest.mark.slow
def test_scheduled_training_records_each_epochs_rate_and_resumes_exactly(tmp_path, monkeypatch):
    kw = dict(lr=0.01, warmup_steps=3, warmup_factor=0.5, lr_schedule="cosine")  # 3 steps per epoch
    full = train(tiny(tmp_path, "full", **kw))
    lrs = [row["lr"] for row in runs.load_history(tmp_path / "full")]
    # the last step of each epoch: step 2 (warm-up 0.5 + 0.5 * 2/3), step 5 and 8 (cosine over the 6 steps after it)
    assert lrs == pytest.approx([0.01 * (0.5 + 0.5 * 2 / 3), 0.01 * 0.5 * (1 + np.cos(np.pi * 2 / 6)),
                                 0.01 * 0.5 * (1 + np.cos(np.pi * 5 / 6))])
    calls = count_calls(monkeypatch, engine, "train_step", raise_at=5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "cut", **kw))
    calls.update(raise_at=None)
    resumed = train(tiny(tmp_path, "cut", resume=True, **kw))
    assert resumed["networks"] == full["networks"]
    assert _strip_times(runs.load_history(tmp_path / "cut")) == _strip_times(runs.load_history(tmp_path / "full"))


@pytest.mark.slow
def test_a_metric_failure_keeps_the_epoch_and_resume_scores_it(tmp_path, monkeypatch):
    """A failure while scoring an epoch (once: a probability range check on a single-class prediction) must not
    lose the epoch: its weights are saved before the error, and --resume scores it and finishes the run exactly as
    an uninterrupted one."""
    from mistudy.methods import metrics
    from mistudy.training.train import EvaluationError

    full = train(tiny(tmp_path, "full"))
    real = metrics.SegmentationMetrics.compute
    calls = {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2: select split scored, then the validation split fails
            raise ValueError("p has entries greater than 1")
        return real(self)

    monkeypatch.setattr(metrics.SegmentationMetrics, "compute", failing)
    with pytest.raises(EvaluationError, match="scoring epoch 2 failed.*--resume"):
        train(tiny(tmp_path, "cut"))
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["unevaluated"] == 2
    monkeypatch.setattr(metrics.SegmentationMetrics, "compute", real)
    resumed = train(tiny(tmp_path, "cut", resume=True))
    assert resumed["networks"] == full["networks"]
    assert _strip_times(runs.load_history(tmp_path / "cut")) == _strip_times(runs.load_history(tmp_path / "full"))


PROGRESS_CELL = """
from mistudy.training.progress import TrainingProgress
bars = TrainingProgress("unet", 3, option="bar")
for epoch in bars.epochs(1):
    for _ in bars.steps(range(2), epoch):
        pass
bars.close()
"""


@pytest.mark.slow
def test_a_notebook_progress_bar_leaves_its_final_state_as_text_in_the_saved_notebook(tmp_path):
    """A saved notebook (papermill's output) keeps only a widget's text form from when it was created ("0%"): the
    final state is printed when the bar closes (issue 19).  Through a real kernel, the project's: there the bar is
    tqdm.auto's class (issue 30: a check of the class's own module missed it)."""
    import nbformat
    import papermill
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(PROGRESS_CELL)], metadata={"kernelspec": {
        "name": "mistudy", "display_name": "Python (mistudy)", "language": "python"}})
    nbformat.write(nb, tmp_path / "bars.ipynb")
    papermill.execute_notebook(str(tmp_path / "bars.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="mistudy",
                               cwd=str(tmp_path), progress_bar=False)
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "unet epochs:   0%" in text  # the widget, as saved when it was created
    assert "unet epochs: 100%" in text, text


def test_a_terminal_progress_bar_prints_nothing_extra(monkeypatch, capsys):
    import tqdm.std

    from mistudy.training import progress

    monkeypatch.setattr(progress, "tqdm", tqdm.std.tqdm)
    bars = progress.TrainingProgress("unet", 3, option="bar")
    list(bars.epochs(1))
    bars.close()
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_a_run_scored_by_older_metrics_is_scored_again_when_reused_without_training(tmp_path, monkeypatch, capsys):
    """A table never mixes runs scored under two definitions: a finished run whose metrics.json is of an older scoring
    version (as every run before the sigmoid calibration and the 1-pixel boundary tolerance) is scored again from
    its checkpoints, not reused as it is and not trained again."""
    from mistudy.methods.metrics import SCORING_VERSION
    from mistudy.training.train import train_or_load

    cfg = tiny(tmp_path, epochs=2, use_case="rmi")
    first = train(cfg)
    assert first["scoring_version"] == SCORING_VERSION
    assert first["torch_threads"] == torch.get_num_threads()  # what a bit-for-bit repeat needs
    path = tmp_path / "run" / "metrics.json"
    old = json.loads(path.read_text())
    del old["scoring_version"]  # written before versions existed
    old["networks"]["unet"]["best_miou"]["ece"] = 0.123  # and scored otherwise
    path.write_text(json.dumps(old))
    calls = count_calls(monkeypatch, engine, "train_step")
    again = train_or_load(cfg)
    assert calls["n"] == 0 and "Scoring the finished run" in capsys.readouterr().out
    assert again["scoring_version"] == SCORING_VERSION
    assert again["networks"]["unet"]["best_miou"]["ece"] == first["networks"]["unet"]["best_miou"]["ece"]
    assert json.loads(path.read_text())["networks"]["unet"]["best_miou"]["ece"] != 0.123
    assert train_or_load(cfg)["epochs"] == 2 and "Reusing the finished run" in capsys.readouterr().out
    # without last.pt it cannot be scored again: refused, naming why, rather than reused under the old definition
    path.write_text(json.dumps(old))
    (tmp_path / "run" / "last.pt").unlink()
    with pytest.raises(FileExistsError, match="older version of the metrics"):
        train_or_load(cfg)


def test_a_run_says_what_it_will_do_before_its_first_step_and_projects_its_time(tmp_path, capsys):
    import re

    from mistudy.training import progress

    run_dir = tmp_path / "run"
    history = train(tiny(tmp_path, progress="log", train_samples=40, epochs=2)) and runs.load_history(run_dir)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[baseline] profile tiny, with train_samples=40, val_samples=6, select_fraction=0.1, "
                               "lr=None, unet_features=4: ")  # the nearest profile and what departs from it
    assert "synthetic images (train 40, val 6, select 4), crop 32 after resize 36; 2 epochs x 10 steps of batch 4; " \
           f"device cpu; writing {run_dir}" in lines[0]
    assert lines[1].startswith("[baseline] projected: ")
    assert "for the 2 epochs x 10 steps left on this device" in lines[1]
    assert "over steps 2-6" in lines[1]  # the first step (warm-up) is not timed
    assert lines[2].startswith("[baseline] epoch 1/2")  # said before the first epoch ends
    per_step = float(re.search(r"\(([\d.e+-]+) s/step", lines[1]).group(1))
    trained = sum(row["seconds"] for row in history)
    assert trained / 5 < per_step * 20 < trained * 5, (per_step, trained)
    train(tiny(tmp_path, progress="log", train_samples=40, epochs=3, resume=True))
    lines = capsys.readouterr().out.splitlines()
    assert "3 epochs from epoch 3 x 10 steps" in lines[0]
    assert "for the 1 epochs x 10 steps left" in lines[1]
    assert progress.duration(42) == "42 s" and progress.duration(5400) == "1.5 h" and progress.duration(3 * 86400) \
        == "3.0 days"


def test_voc_aug_trains_end_to_end_the_same_with_the_cache(voc_root, tmp_path):
    from datatrees import write_sbd

    write_sbd(voc_root)
    common = dict(TINY, dataset="voc_aug", data_root=str(voc_root), epochs=1, batch_size=2, train_samples=None,
                  val_samples=None, select_fraction=0.2)
    plain = train(TrainConfig(**common, run_dir=str(tmp_path / "plain")))
    cached = train(TrainConfig(**common, cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / "cached")))
    assert plain["train_samples"] + plain["select_samples"] == 5 and plain["val_samples"] == 2  # VOC + SBD, VOC val
    assert plain["networks"] == cached["networks"]


def test_a_finished_run_of_the_same_configuration_is_linked_not_trained_and_stays_independent(tmp_path, capsys,
                                                                                              monkeypatch):
    """The tuned recipe's run of a use-case whose tuned rate is the shared one is the shared run: linked, reused
    without a training step, and untouched when the shared run is extended afterwards (or the other way round)."""
    from mistudy.training.train import link_finished_run, train_or_load

    shared = tiny(tmp_path, "shared", epochs=2)
    first = train(shared)
    tuned = shared.replace(run_dir=str(tmp_path / "tuned" / "seed3"), results_dir=str(tmp_path / "tuned"))
    assert not link_finished_run(tuned.replace(lr=3e-4), tmp_path / "shared")  # another rate: another run
    assert not link_finished_run(tuned, tmp_path / "missing")
    with runs.RunLock(tmp_path / "shared"):  # being written (extended, scored again): left alone
        assert not link_finished_run(tuned, tmp_path / "shared")
    assert not (tmp_path / "tuned" / "seed3").exists()
    assert link_finished_run(tuned, tmp_path / "shared")
    linked = tmp_path / "tuned" / "seed3"
    assert sorted(p.name for p in linked.iterdir()) == sorted(p.name for p in (tmp_path / "shared").iterdir())
    assert os.stat(linked / "last.pt").st_ino == os.stat(tmp_path / "shared" / "last.pt").st_ino
    assert not list(tmp_path.glob("**/.linking*")), "temporary folder left behind"
    assert not link_finished_run(tuned, tmp_path / "shared")  # there already: never overwritten
    calls = count_calls(monkeypatch, engine, "train_step")
    again = train_or_load(tuned)
    assert calls["n"] == 0 and again["networks"] == first["networks"] and again["reused"]
    assert "Reusing the finished run" in capsys.readouterr().out
    before = (linked / "metrics.json").read_bytes(), (linked / "history.json").read_bytes()
    calls.update(n=0)
    train(shared.replace(epochs=3, resume=True))  # the shared run extended: its files replaced, not rewritten
    assert calls["n"] > 0 and len(runs.load_history(tmp_path / "shared")) == 3
    assert ((linked / "metrics.json").read_bytes(), (linked / "history.json").read_bytes()) == before
    assert len(runs.load_history(linked)) == 2
    metrics = json.loads((tmp_path / "shared" / "metrics.json").read_text())
    metrics["scoring_version"] = 1  # scored under older metrics: not taken as it is
    (tmp_path / "shared" / "metrics.json").write_text(json.dumps(metrics))
    assert not link_finished_run(shared.replace(run_dir=str(tmp_path / "other"), epochs=3), tmp_path / "shared")


def test_resuming_a_finished_run_of_the_same_configuration_reuses_it(tmp_path, monkeypatch, capsys):
    """A resumed study passes resume=True to every run it finds started; a finished one of the same length has
    nothing to continue: reused as it is (it used to be evaluated again, its metrics.json rewritten)."""
    from mistudy.training.train import train_or_load

    cfg = tiny(tmp_path, epochs=1)
    train(cfg)
    written = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    calls = count_calls(monkeypatch, inference, "evaluate")
    again = train_or_load(cfg.replace(resume=True))
    assert again["reused"] and calls["n"] == 0 and "Reusing the finished run" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == written
    extended = train_or_load(cfg.replace(epochs=2, resume=True))  # more epochs: continued
    assert extended["epochs"] == 2 and not extended.get("reused")


@pytest.mark.slow
def test_the_progress_display_never_changes_the_training(tmp_path, capsys):
    """Bars, lines or nothing: the same numbers.  The step bar used to wrap the loader, and tqdm.auto's bar makes an
    iterator of what it wraps besides the loop's, each drawing a seed from torch's global generator: DeepLabV3's
    dropout masks, drawn after it, moved (mutual learning's runs differed between `make run` and `mistudy study`
    with explicit Ray options; the U-Net has no dropout, so the baseline's and RMI's did not)."""
    histories = {}
    for mode in ("none", "bar", "log"):
        train(tiny(tmp_path, mode, use_case="mutual", epochs=1, progress=mode))
        histories[mode] = _strip_times(runs.load_history(tmp_path / mode))
    assert histories["bar"] == histories["none"] == histories["log"]
    assert "deeplabv3/train_loss" in histories["none"][0]
