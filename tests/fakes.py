"""Hand-made run directories and per-image statistics for the tests of tables, comparisons and ablations, and a
call counter that simulates a crash."""

from __future__ import annotations

import json

import numpy as np
import torch

from mistudy.methods.metrics import SCORING_VERSION, SegmentationMetrics
from mistudy.training import runs
from mistudy.training.config import TrainConfig

CLASSES = 3


def count_calls(monkeypatch, owner, name: str, raise_at: int | None = None, error=KeyboardInterrupt) -> dict:
    """Replace ``owner.name`` by a wrapper that counts its calls in ``calls["n"]`` and raises ``error`` at call
    ``raise_at`` (a kill or crash at a known step); returns ``calls``.  ``calls.update(n=0, raise_at=None)`` lets the
    next calls through, still counted."""
    real = getattr(owner, name)
    calls = {"n": 0, "raise_at": raise_at}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["raise_at"]:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def scores(acc: float, miou: float, per_class=None, **extra) -> dict:
    """A checkpoint's entry of metrics.json."""
    return {"epoch": 2, "pixel_accuracy": acc, "iou_micro": acc / (2 - acc), "miou": miou,
            "iou_per_class": per_class or [miou] * CLASSES, "class_accuracy": [acc] * CLASSES,
            "mean_class_accuracy": acc, "labelled_pixels": 100, **extra}


def masks(rng, images: int, quality: float, classes: int = CLASSES, size: int = 6):
    """(predictions, targets) [images, size, size]: each pixel right with probability ``quality``."""
    targets = rng.integers(0, classes, (images, size, size))
    preds = np.where(rng.random(targets.shape) < quality, targets, rng.integers(0, classes, targets.shape))
    return preds, targets


def per_image(preds, targets, classes: int = CLASSES, logits=None) -> dict[str, np.ndarray]:
    """The per-image statistics of per_image.npz for these masks (and logits [N, C, H, W], if given)."""
    m = SegmentationMetrics(classes, boundary_tolerance=1, num_images=len(preds))
    pred = torch.as_tensor(logits) if logits is not None else torch.as_tensor(preds)
    m.update(pred, torch.as_tensor(targets), index=torch.arange(len(preds)))
    return m.per_image()


def statistics(rng, images: int, quality: float, classes: int = CLASSES) -> dict[str, np.ndarray]:
    return per_image(*masks(rng, images, quality, classes), classes)


def fake_run(results, dataset, use_case, seed, checkpoint_scores, epochs=2, name=None, networks=("unet",),
             counts=None, **config):
    """A run directory as mistudy.training.train writes it (config.json, metrics.json and, if per-image statistics are
    given, per_image.npz), with the given scores for every checkpoint."""
    run = results / dataset / use_case / (name or f"seed{seed}")
    run.mkdir(parents=True)
    cfg = {**TrainConfig(dataset="synthetic").__dict__, "use_case": use_case, "dataset": dataset, "seed": seed,
           "epochs": epochs, "results_dir": str(results), "run_name": name,
           "data_root": None if dataset == "synthetic" else f"/data/{dataset}", **config}  # a root not on this machine
    (run / "config.json").write_text(json.dumps(cfg))
    nets = {n: {"last": checkpoint_scores, "best_loss": checkpoint_scores, "best_miou": checkpoint_scores}
            for n in networks}
    (run / "metrics.json").write_text(json.dumps({"use_case": use_case, "dataset": dataset, "seed": seed,
                                                  "epochs": epochs, "train_samples": 8, "select_samples": 2,
                                                  "val_samples": 4, "eval_passes": 1, "networks": nets,
                                                  "scoring_version": SCORING_VERSION}))
    if counts is not None:
        runs.write_per_image(run, {f"{n}/{rule}": counts for n in networks for rule in ("last", "best_loss", "best_miou")},
                             list(range(len(counts["tp"]))))
    return run
