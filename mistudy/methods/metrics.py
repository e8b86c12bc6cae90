"""Segmentation scores, accumulated per image over batches and passes (on any device) and reduced across DDP ranks.

Every score is a function of a few counts kept for every validation image, so batches, evaluation passes and
processes are added before any division happens, and a resampled or leave-one-out set of images is scored exactly
as the real one (`mistudy.methods.stats`):

* the confusion matrix (rows ground truth, columns prediction): pixel accuracy, micro IoU, mIoU, per-class IoU and
  recall, and the mutual information between ground truth and prediction I(Y; Ŷ) (bits) with its normalised form;
* boundary matches per class: the boundary F-score of Csurka et al. 2013 (per image over its classes, then the mean
  over images), and the same counts pooled over images as a second, differently named score;
* with probabilities: a reliability histogram (expected calibration error, reliability diagram) and the summed
  predictive entropy (mean entropy in bits), twice: under the probabilities the network's loss trains (its own
  reading: softmax for cross-entropy, per-class sigmoids for BCE; `PROBABILITY_TEXT`) and under the softmax of its
  logits (the ``*_softmax`` statistics), so that a BCE-trained network is never judged by a softmax it never learnt.

The functions ``*_from_*`` compute a score from summed statistics with numpy, vectorised over any leading axes;
`SegmentationMetrics.compute` and the paired statistics of the study both use them.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

# Csurka et al. 2013 (and MATLAB's bfscore): a boundary pixel matches within 0.75 % of the image diagonal -- but never
# within less than one pixel: at the study's 64x64 crops 0.75 % of the diagonal is 0.68 px, where only exact pixels
# would match and a disc shifted by one pixel would score 0.5.
BOUNDARY_TOLERANCE_FRACTION = 0.0075
BOUNDARY_TOLERANCE_MIN_PX = 1.0
# Void in the ground truth within this many pixels of a labelled pixel takes the nearest label before boundaries are
# extracted: VOC's void band (5 px, drawn over every object's outline) then has the object's edge at its midline.
VOID_BAND_PX = 3
# Raised whenever what a score means changes, so that no table mixes runs scored under two definitions: a finished
# run scored under another version is scored again from its checkpoints when it is reused (`train.train_or_load`).
# 2: calibration and entropy under the network's own probabilities, boundary tolerance >= 1 px, void band filled;
# 3: only thin void bands filled (thick void regions stay void), sigmoids in float64.
SCORING_VERSION = 3
STATISTICS = ("confmat", "boundary", "calibration", "entropy", "calibration_softmax", "entropy_softmax")

# How a network's output becomes probabilities: the reading its loss trains (TrainConfig.probabilities).
PROBABILITIES = ("softmax", "sigmoid")
PROBABILITY_TEXT = ("probabilities as the loss trains them: softmax for cross-entropy-trained networks; for BCE-trained "
                    "(sigmoid) networks the predicted class's sigmoid is the confidence and the entropy is that of the "
                    "per-class sigmoids normalised to sum to 1; the softmax reading of the same logits in the "
                    "'softmax reading' columns")


# ------------------------------------------------------------------------------------------- boundaries

def boundary_tolerance_text(tolerance: float | None, size: tuple[int, int] | None = None) -> str:
    """How a boundary F-score's tolerance is named in tables: always in pixels when the scored size is known."""
    if tolerance is not None:
        return f"{tolerance:g} px"
    rule = f"max({BOUNDARY_TOLERANCE_MIN_PX:g} px, {100 * BOUNDARY_TOLERANCE_FRACTION:g}% of the image diagonal)"
    if size is None:
        return rule + " (images of several sizes)"
    return f"{tolerance_pixels(*size, None):.3g} px at {size[0]}x{size[1]} ({rule})"


def tolerance_pixels(height: int, width: int, tolerance: float | None) -> float:
    """The matching distance in pixels: ``tolerance`` if given, else 0.75 % of the image's diagonal, at least 1 px."""
    if tolerance is not None:
        return float(tolerance)
    return max(BOUNDARY_TOLERANCE_MIN_PX, BOUNDARY_TOLERANCE_FRACTION * math.hypot(height, width))


def _disk(radius: float, device) -> torch.Tensor:
    """A [2k+1, 2k+1] 0/1 kernel (k = floor(radius)) of the pixels at Euclidean distance <= radius from the centre."""
    k = int(math.floor(radius + 1e-9))
    r = torch.arange(-k, k + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + 1e-6).float()


def class_boundaries(ids: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Inner boundaries of every class: bool [N, C, H, W], a pixel of class c with an 8-neighbour of another label.

    ids: [N, H, W] class ids (``ignore_index`` is a label of its own, in no class).  Outside the image counts as the
    same label, so the image border is not a boundary.
    """
    onehot = F.one_hot(torch.where(ids == ignore_index, num_classes, ids.long()), num_classes + 1)
    onehot = onehot[..., :num_classes].permute(0, 3, 1, 2).float()  # [N, C, H, W]
    # erosion by a 3x3 square = -maxpool(-x); the pool's -inf padding keeps borders inside
    eroded = -F.max_pool2d(-onehot, kernel_size=3, stride=1, padding=1)
    return (onehot > 0) & (eroded < 1)


def fill_void_band(target: torch.Tensor, num_classes: int, ignore_index: int = 255, width: int = VOID_BAND_PX
                   ) -> torch.Tensor:
    """``target`` [N, H, W] with the void of its thin void bands labelled: void pixels within ``width`` pixels
    (chessboard distance) of a labelled pixel, grown one pixel at a time, each taking the label most of its labelled
    8-neighbours have (ties: the lowest class id).  A void band between two regions is split at its midline.  Void
    regions at least 2 x ``width`` + 3 pixels thick (Cityscapes' ego vehicle, a void object) stay void whole: what
    lies under them is unknown, not the neighbouring label."""
    ids = target.long()
    void = (ids == ignore_index).float()[:, None]
    k = 2 * width + 3  # an opening by this square keeps the void regions thicker than a band
    thick = F.max_pool2d(-F.max_pool2d(-void, k, 1, k // 2), k, 1, k // 2)[:, 0] > 0.5
    kernel = torch.ones(num_classes, 1, 3, 3, device=target.device)
    for _ in range(width):
        void = (ids == ignore_index) & ~thick
        if not void.any():
            break
        onehot = F.one_hot(torch.where(void, num_classes, ids), num_classes + 1)[..., :num_classes]
        votes = F.conv2d(onehot.permute(0, 3, 1, 2).float(), kernel, padding=1, groups=num_classes)
        count, label = votes.max(dim=1)
        ids = torch.where(void & (count > 0), label, ids)
    return ids


def boundary_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, tolerance: float | None = None,
                    ignore_index: int = 255) -> torch.Tensor:
    """Per image and class, int64 [N, 4, C]: predicted boundary pixels within the tolerance of a true boundary,
    predicted boundary pixels, true boundary pixels within the tolerance of a predicted boundary, true boundary
    pixels.

    Void in the ground truth: a band within VOID_BAND_PX of labelled pixels takes the nearest label
    (`fill_void_band`: VOC's band over each outline is split at its midline, where the object's edge is), and void
    beyond it is made void in the prediction (as DAVIS' f_measure and GSCNN's evaluation do), so a class pixel beside
    a large void region is a boundary in both maps alike.  A perfect prediction scores 1, a prediction that misses
    an object scores no boundary credit for it, and one that finds it too small scores in between.  ``tolerance``:
    pixels, or None for 0.75 % of the image diagonal, at least 1 px.
    """
    target = fill_void_band(target, num_classes, ignore_index)
    pred = torch.where(target == ignore_index, torch.full_like(pred, ignore_index), pred)
    pred_b = class_boundaries(pred, num_classes, ignore_index)
    true_b = class_boundaries(target, num_classes, ignore_index)
    radius = tolerance_pixels(*target.shape[-2:], tolerance)
    kernel = _disk(radius, pred.device)
    pad = kernel.shape[-1] // 2
    kernel = kernel[None, None].repeat(num_classes, 1, 1, 1)

    def near(b: torch.Tensor) -> torch.Tensor:  # pixels within the tolerance of a boundary pixel of b
        return F.conv2d(b.float(), kernel, padding=pad, groups=num_classes) > 0.5

    sums = lambda x: x.sum(dim=(2, 3))  # noqa: E731  [N, C]
    return torch.stack([sums(pred_b & near(true_b)), sums(pred_b), sums(true_b & near(pred_b)), sums(true_b)],
                       dim=1).long()


def boundary_f_from_counts(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F, precision, recall) per class from boundary counts [..., 4, C]; NaN where a class has no boundary pixel
    in either map.  Precision is 0 without predicted boundary pixels, recall 0 without true ones."""
    matched_pred, n_pred, matched_true, n_true = np.moveaxis(np.asarray(counts, dtype=np.float64), -2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, matched_pred / np.maximum(n_pred, 1), 0.0)
        recall = np.where(n_true > 0, matched_true / np.maximum(n_true, 1), 0.0)
        f = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    some = (n_pred + n_true) > 0
    nan = np.full_like(f, np.nan)
    return np.where(some, f, nan), np.where(some, precision, nan), np.where(some, recall, nan)


def image_boundary_f(counts) -> np.ndarray:
    """Csurka et al.'s per-image boundary F [...]: the mean over the image's classes that have a boundary pixel in the
    ground truth or the prediction, from per-image counts [..., 4, C]; NaN for an image without any boundary."""
    f = boundary_f_from_counts(counts)[0]
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        return np.nanmean(f, axis=-1)


@contextlib.contextmanager
def _quiet_nanmean():
    """np.nanmean of an all-NaN slice warns; here NaN is the documented answer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ----------------------------------------------------------------------- scores from summed statistics (numpy)

def iou_from_confmat(cm) -> np.ndarray:
    """IoU per class [..., C] of confusion matrices [..., C, C] (rows: ground truth): TP / (TP + FP + FN), NaN for
    a class absent from both the ground truth and the prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(-1) + cm.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def miou_from_confmat(cm) -> np.ndarray:
    """mIoU [...] of confusion matrices [..., C, C]: the mean of `iou_from_confmat` over the classes present in the
    ground truth or prediction (NaN where none is) -- the project's one definition of mIoU."""
    with _quiet_nanmean():
        return np.nanmean(iou_from_confmat(cm), axis=-1)


def information_from_confmat(cm) -> tuple[np.ndarray, np.ndarray]:
    """(I(Y; Ŷ) in bits, 2 I / (H(Y) + H(Ŷ))) of confusion matrices of counts [..., C, C]; NaN without pixels.

    Computed from the counts (n_xy / n, row sums / n, ...), so probabilities never exceed 1 by rounding; MI is
    clamped at 0 (it is >= 0 exactly; rounding gives ~1e-16 below for a constant prediction).
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum(axis=(-2, -1))
    rows, cols = cm.sum(-1), cm.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = total[..., None, None]
        ratio = cm * n / (rows[..., :, None] * cols[..., None, :])
        mi = np.where(cm > 0, cm / n * np.log2(np.where(cm > 0, ratio, 1.0)), 0.0).sum(axis=(-2, -1))

        def entropy(counts):
            p = counts / total[..., None]
            return -np.where(counts > 0, p * np.log2(np.where(counts > 0, p, 1.0)), 0.0).sum(-1)

        h = entropy(rows) + entropy(cols)
        mi = np.where(total > 0, np.maximum(mi, 0.0), np.nan)
        nmi = np.where((total > 0) & (h > 0), 2 * mi / np.where(h > 0, h, 1.0), np.nan)
    return mi, nmi


def ece_from_calibration(hist) -> np.ndarray:
    """Top-label expected calibration error [...] from reliability histograms [..., 3, bins] (count, summed
    confidence, summed correct); NaN without pixels."""
    count, confidence, correct = np.moveaxis(np.asarray(hist, dtype=np.float64), -2, 0)
    n = count.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.abs(confidence - correct).sum(-1) / np.where(n > 0, n, 1), np.nan)


def mean_entropy_from_sums(sums) -> np.ndarray:
    """Mean predictive entropy per labelled pixel [...] from (summed entropy in bits, pixels) [..., 2]."""
    sums = np.asarray(sums, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[..., 1] > 0, sums[..., 0] / np.where(sums[..., 1] > 0, sums[..., 1], 1), np.nan)


# --------------------------------------------------------------------------------- per-image statistics

def image_confmats(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """One confusion matrix per image, int64 [N, C, C] (rows ground truth), from class ids [N, H, W]."""
    n, c = pred.shape[0], num_classes
    valid = target != ignore_index
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    index = (image * c + target.long().clamp(0, c - 1)) * c + pred.long()
    return torch.bincount(index[valid], minlength=n * c * c).reshape(n, c, c)


def output_probabilities(logits: torch.Tensor, reading: str) -> torch.Tensor:
    """Per-class probabilities [N, C, H, W] of logits under a reading of PROBABILITIES: softmax (sums to 1 over
    classes) or sigmoid (each class on its own, as BCE trains them)."""
    if reading not in PROBABILITIES:
        raise ValueError(f"probabilities must be one of {list(PROBABILITIES)}, got {reading!r}")
    if reading == "softmax":
        return logits.float().softmax(dim=1)
    return logits.double().sigmoid()  # float32 sigmoids of logits below -103 are all 0: no entropy to normalise


def _probability_statistics(pred: torch.Tensor, target: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor,
                            owner: torch.Tensor, n: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reliability histogram [N, 3, bins], (summed entropy in bits, pixels) [N, 2]) of per-class probabilities:
    the predicted class's probability is the confidence; the entropy is that of the probabilities normalised to sum
    to 1 over classes (unchanged for a softmax)."""
    p = probs.double().movedim(1, -1)[valid]  # [labelled pixels, C]
    chosen = pred[valid].long()
    confidence = p.gather(1, chosen[:, None])[:, 0]
    correct = (chosen == target[valid].long()).double()
    index = (confidence * bins).long().clamp(0, bins - 1) + owner * bins
    hist = torch.stack([torch.bincount(index, weights=w, minlength=n * bins)
                        for w in (torch.ones_like(confidence), confidence, correct)])
    q = p / p.sum(dim=1, keepdim=True).clamp(min=1e-300)
    entropy = -(torch.where(q > 0, q * torch.log2(q), torch.zeros_like(q))).sum(dim=1)
    sums = torch.stack([torch.bincount(owner, weights=entropy, minlength=n),
                        torch.bincount(owner, minlength=n).double()], dim=1)
    return hist.view(3, n, bins).transpose(0, 1).contiguous(), sums


@torch.no_grad()
def image_statistics(pred: torch.Tensor, target: torch.Tensor, num_classes: int, probs: torch.Tensor | None = None,
                     ignore_index: int = 255, boundary_tolerance: float | None = None,
                     calibration_bins: int = 15, softmax_probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The counts behind every score, for each image of a batch.

    pred: class ids [N, H, W]; target: [N, H, W] with ``ignore_index`` for unlabelled pixels (values checked by the
    caller); probs: the network's own class probabilities [N, C, H, W] (softmax, or per-class sigmoids for a
    BCE-trained network) or None; softmax_probs: the softmax reading of the same logits (None: not kept).  Returns
    {"confmat": int64 [N, C, C], "boundary": int64 [N, 4, C] (see `boundary_counts`), and with probs "calibration":
    float64 [N, 3, bins] (count, summed confidence, summed correct), "entropy": float64 [N, 2] (summed entropy in
    bits, labelled pixels); with softmax_probs the same as "calibration_softmax" and "entropy_softmax"}.
    """
    n, c = pred.shape[0], num_classes
    valid = target != ignore_index
    out = {"confmat": image_confmats(pred, target, c, ignore_index),
           "boundary": boundary_counts(pred, target, c, boundary_tolerance, ignore_index)}
    owner = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)[valid]
    for suffix, p in (("", probs), ("_softmax", softmax_probs)):
        if p is not None:
            out["calibration" + suffix], out["entropy" + suffix] = _probability_statistics(
                pred, target, p, valid, owner, n, calibration_bins)
    return out


class SegmentationMetrics:
    """Accumulate the per-image counts behind every score over batches; `compute` turns them into numbers.

    Args:
        num_classes: number of classes C; predictions and labels are in [0, C).
        ignore_index: label of pixels that never count (VOC borders, Cityscapes void).
        boundary_tolerance: pixels within which a predicted boundary matches a true one; None (default): 0.75 % of
            each image's diagonal (Csurka et al. 2013).
        calibration_bins: equal-width confidence bins of the reliability diagram and ECE.
        num_images: the size of the evaluated split.  Given, every `update` names its images (``index``) and an
            image's counts add up over passes and DDP ranks (what the training engine does); None, every batch
            brings new images.
        probabilities: how logits become the network's own probabilities (PROBABILITIES): "softmax" (cross-entropy)
            or "sigmoid" (BCE: per-class sigmoids).  The softmax reading is kept beside it either way.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, boundary_tolerance: float | None = None,
                 calibration_bins: int = 15, num_images: int | None = None, probabilities: str = "softmax"):
        if probabilities not in PROBABILITIES:
            raise ValueError(f"probabilities must be one of {list(PROBABILITIES)}, got {probabilities!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if boundary_tolerance is not None and (isinstance(boundary_tolerance, bool) or not isinstance(
                boundary_tolerance, (int, float)) or not boundary_tolerance >= 0):
            raise ValueError(f"boundary_tolerance must be a number of pixels >= 0 or None (0.75% of the image "
                             f"diagonal), got {boundary_tolerance!r}")
        if calibration_bins < 1:
            raise ValueError(f"calibration_bins must be >= 1, got {calibration_bins}")
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be >= 1 or None, got {num_images}")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.boundary_tolerance, self.calibration_bins = boundary_tolerance, calibration_bins
        self.num_images, self.probabilities = num_images, probabilities
        self.reset()

    def reset(self) -> None:
        self.images: dict[str, torch.Tensor] = {}  # STATISTICS name -> [images, ...], see image_statistics

    @property
    def confmat(self) -> torch.Tensor:
        """The confusion matrix summed over images, int64 [C, C] (rows ground truth, columns prediction)."""
        cm = self.images.get("confmat")
        return cm.sum(0) if cm is not None else torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None,
               index: torch.Tensor | None = None) -> None:
        """Add a batch.

        Args:
            pred: class ids [N, H, W] (integer) or scores/logits [N, C, H, W]; logits also give the probabilities
                of the calibration and entropy scores (the ``probabilities`` reading, and the softmax reading).
            target: class ids [N, H, W] (integer), ``ignore_index`` for unlabelled pixels.
            probs: the network's own class probabilities [N, C, H, W] (optional; taken from logits when pred is
                logits).
            index: the batch's image numbers [N] in [0, num_images) (required when num_images was given).
        """
        c = self.num_classes
        softmax_probs = None
        if pred.dim() == 4:
            if pred.shape[1] != c:
                raise ValueError(f"pred has {pred.shape[1]} channels, expected num_classes={c}")
            if probs is None and pred.is_floating_point():
                probs = output_probabilities(pred, self.probabilities)
                softmax_probs = probs if self.probabilities == "softmax" else output_probabilities(pred, "softmax")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        maps = pred.dim() == 3  # label maps; other shapes are pixel lists [N, ...], which have no boundaries
        if not maps:
            pred, target = pred.reshape(pred.shape[0] if pred.dim() else 1, 1, -1), \
                target.reshape(target.shape[0] if target.dim() else 1, 1, -1)
            if probs is not None:
                raise ValueError("probs need label maps: pred [N, C, H, W] or [N, H, W]")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred (class ids) and target must be integer tensors")
        target = target.to(pred.device)
        valid = target != self.ignore_index
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= c):
            bad = torch.unique(t[(t < 0) | (t >= c)]).tolist()
            raise ValueError(f"target holds values {bad} outside [0, {c}) that are not ignore_index={self.ignore_index}")
        if p.numel() and (p.min() < 0 or p.max() >= c):
            bad = torch.unique(p[(p < 0) | (p >= c)]).tolist()
            raise ValueError(f"pred holds class ids {bad} outside [0, {c})")
        if probs is not None and tuple(probs.shape) != (pred.shape[0], c, *pred.shape[1:]):
            raise ValueError(f"probs must be [N, C, H, W] = {(pred.shape[0], c, *pred.shape[1:])}, got "
                             f"{tuple(probs.shape)}")
        if (index is None) != (self.num_images is None):
            raise ValueError("index is required exactly when SegmentationMetrics was built with num_images")
        batch = image_statistics(pred, target, c, probs, self.ignore_index, self.boundary_tolerance,
                                 self.calibration_bins, softmax_probs)
        if not maps:
            batch["boundary"].zero_()
        for name, value in batch.items():
            if self.num_images is None:
                self.images[name] = value if name not in self.images else torch.cat([self.images[name], value])
                continue
            if name not in self.images:
                self.images[name] = torch.zeros(self.num_images, *value.shape[1:], dtype=value.dtype,
                                                device=value.device)
            self.images[name].index_add_(0, index.to(value.device), value)

    def all_reduce(self) -> None:
        """Sum every image's counts over the processes of the default process group (DDP evaluation)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.num_images is None:
            raise RuntimeError("all_reduce needs per-image buffers: build SegmentationMetrics with num_images")
        c, n, bins = self.num_classes, self.num_images, self.calibration_bins
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")
        zeros = {"confmat": lambda: torch.zeros(n, c, c, dtype=torch.int64),
                 "boundary": lambda: torch.zeros(n, 4, c, dtype=torch.int64),
                 "calibration": lambda: torch.zeros(n, 3, bins, dtype=torch.float64),
                 "entropy": lambda: torch.zeros(n, 2, dtype=torch.float64)}
        zeros |= {"calibration_softmax": zeros["calibration"], "entropy_softmax": zeros["entropy"]}
        has = torch.tensor([float(k in self.images) for k in ("calibration", "calibration_softmax")], device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)  # a rank without images still joins every reduction
        for name, zero in zeros.items():
            if name.startswith(("calibration", "entropy")) and not has[int(name.endswith("_softmax"))].item():
                continue
            value = self.images.get(name)
            value = (zero() if value is None else value).to(device)
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            self.images[name] = value

    def per_image(self) -> dict[str, np.ndarray]:
        """Every image's counts as numpy arrays (see `image_statistics`; zeros for an image never seen), plus "tp",
        "fp", "fn" [images, C] and the image's own "miou" and "boundary_f" (Csurka, NaN where undefined)."""
        out = {name: v.cpu().numpy() for name, v in self.images.items()}
        if "confmat" not in out:
            return out
        cm = out["confmat"]
        tp = np.diagonal(cm, axis1=1, axis2=2).copy()
        out |= {"tp": tp, "fp": cm.sum(1) - tp, "fn": cm.sum(2) - tp, "miou": miou_from_confmat(cm),
                "boundary_f": image_boundary_f(out["boundary"])}
        return out

    def compute(self) -> dict:
        """Every score, as plain Python numbers (NaN where undefined).

        - pixel_accuracy: correct pixels / labelled pixels (the paper's Eq. 10, multi-class).
        - iou_micro: sum_c TP_c / sum_c (TP_c + FP_c + FN_c) -- the multi-class IoU as the paper's text defines it.
          Each wrong pixel is one FP and one FN, so iou_micro = acc / (2 - acc).
        - miou: mean over classes of TP_c / (TP_c + FP_c + FN_c), classes absent from both prediction and ground
          truth excluded -- the standard benchmark score (and what the authors' code computed).
        - iou_per_class, class_accuracy (recall) and mean_class_accuracy: per class, NaN where absent.
        - mutual_information_bits: I(Y; Ŷ) of the labelled pixels' joint distribution (the normalised confusion
          matrix), in bits; normalized_mutual_information: 2 I / (H(Y) + H(Ŷ)) (scikit-learn's default).
        - boundary_f: Csurka et al.'s boundary F-score: per image the mean F over its classes with boundaries, then
          the mean over images that have any; boundary_precision / boundary_recall the same means;
          boundary_f_pooled and boundary_f_per_class: the counts pooled over images, per class and their mean over
          classes; boundary_tolerance: pixels, or None for 0.75 % of each image's diagonal.
        - With probabilities (the network's own reading, ``probabilities``): ece (top-label expected calibration
          error over equal-width bins: the predicted class's probability against its accuracy), reliability
          {"confidence", "accuracy", "count"} per bin, mean_entropy_bits (predictive entropy per labelled pixel, of
          the probabilities normalised to sum to 1) and "probabilities" (the reading); with logits also
          ece_softmax, reliability_softmax and mean_entropy_bits_softmax, the softmax reading of the same logits
          (equal to the above for a softmax network).
        """
        c, nan = self.num_classes, float("nan")
        images = self.per_image()
        cm = images["confmat"].sum(0).astype(np.float64) if "confmat" in images else np.zeros((c, c))
        tp, gt, pr = np.diag(cm), cm.sum(1), cm.sum(0)
        union = gt + pr - tp
        total = cm.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(gt > 0, tp / np.maximum(gt, 1), nan)
        mi, nmi = information_from_confmat(cm)
        out = {
            "pixel_accuracy": float(tp.sum() / total) if total else nan,
            "iou_micro": float(tp.sum() / union.sum()) if union.sum() > 0 else nan,
            "miou": float(miou_from_confmat(cm)),
            "iou_per_class": iou_from_confmat(cm).tolist(),
            "class_accuracy": recall.tolist(),
            "mean_class_accuracy": float(np.nanmean(recall)) if (gt > 0).any() else nan,
            "labelled_pixels": int(total),
            "mutual_information_bits": float(mi), "normalized_mutual_information": float(nmi),
        }
        out |= self._boundary_scores(images.get("boundary", np.zeros((0, 4, c))))
        for suffix in ("", "_softmax"):
            if "calibration" + suffix in images:
                scores = self._calibration_scores(images["calibration" + suffix].sum(0),
                                                  images["entropy" + suffix].sum(0))
                out |= {k + suffix: v for k, v in scores.items()}
        if "calibration" in images:
            out["probabilities"] = self.probabilities
        return out

    def _boundary_scores(self, counts: np.ndarray) -> dict:
        f_img, p_img, r_img = boundary_f_from_counts(counts)  # [images, C]
        with _quiet_nanmean():
            per_image = [np.nanmean(x, axis=-1) if len(x) else x[:, 0] for x in (f_img, p_img, r_img)]
            f_class = boundary_f_from_counts(counts.sum(0))[0]
            mean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")  # noqa: E731
            return {"boundary_f": mean(per_image[0]), "boundary_precision": mean(per_image[1]),
                    "boundary_recall": mean(per_image[2]), "boundary_f_pooled": mean(f_class),
                    "boundary_f_per_class": f_class.tolist(), "boundary_tolerance": self.boundary_tolerance}

    @staticmethod
    def _calibration_scores(hist: np.ndarray, entropy: np.ndarray) -> dict:
        count, confidence, correct = hist
        safe = np.maximum(count, 1)
        return {"ece": float(ece_from_calibration(hist)),
                "reliability": {"confidence": np.where(count > 0, confidence / safe, np.nan).tolist(),
                                "accuracy": np.where(count > 0, correct / safe, np.nan).tolist(),
                                "count": [int(v) for v in count.tolist()]},
                "mean_entropy_bits": float(mean_entropy_from_sums(entropy))}


def nan_to_none(values):
    """JSON has no NaN: lists (and nested dicts of lists) are stored with None for undefined entries."""
    if isinstance(values, dict):
        return {k: nan_to_none(v) for k, v in values.items()}
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]
