"""Segmentation scores, accumulated over batches in one pass (on any device) and reduced across DDP ranks.

Every score is a function of a few summed counts, so batches, evaluation passes and processes are added before any
division happens:

* the confusion matrix (rows ground truth, columns prediction): pixel accuracy, micro IoU, mIoU, per-class IoU and
  recall, and the mutual information between ground truth and prediction I(Y; Ŷ) (bits) with its normalised form;
* boundary matches per class (Csurka et al. 2013): the boundary F-score at a tolerance of a few pixels;
* with probabilities: a reliability histogram (expected calibration error, reliability diagram) and the summed
  predictive entropy (mean entropy in bits).

`per_image_counts` gives per-image true/false positives and false negatives, from which per-image mIoU and the
mIoU of any resampled set of images follow (`mistudy.stats`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mistudy import infotheory


def _disk(radius: int, device) -> torch.Tensor:
    """A [2r+1, 2r+1] 0/1 kernel of the pixels at Euclidean distance <= radius from the centre."""
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
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


def boundary_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, tolerance: int,
                    ignore_index: int = 255) -> torch.Tensor:
    """Per class [4, C]: predicted boundary pixels within ``tolerance`` of a true boundary, predicted boundary pixels,
    true boundary pixels within ``tolerance`` of a predicted boundary, true boundary pixels (int64).

    Predicted boundary pixels on ignored ground truth do not count (their truth is unknown).
    """
    pred_b = class_boundaries(pred, num_classes, ignore_index) & (target != ignore_index)[:, None]
    true_b = class_boundaries(target, num_classes, ignore_index)
    kernel = _disk(tolerance, pred.device)[None, None].repeat(num_classes, 1, 1, 1)

    def near(b: torch.Tensor) -> torch.Tensor:  # pixels within tolerance of a boundary pixel of b
        return F.conv2d(b.float(), kernel, padding=tolerance, groups=num_classes) > 0.5

    sums = lambda x: x.sum(dim=(0, 2, 3))  # noqa: E731
    return torch.stack([sums(pred_b & near(true_b)), sums(pred_b), sums(true_b & near(pred_b)), sums(true_b)]).long()


class SegmentationMetrics:
    """Accumulate the counts behind every score over batches; `compute` turns them into numbers.

    Args:
        num_classes: number of classes C; predictions and labels are in [0, C).
        ignore_index: label of pixels that never count (VOC borders, Cityscapes void).
        boundary_tolerance: pixels within which a predicted boundary matches a true one (boundary F-score).
        calibration_bins: equal-width confidence bins of the reliability diagram and ECE.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, boundary_tolerance: int = 2,
                 calibration_bins: int = 15):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not isinstance(boundary_tolerance, int) or boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be an integer >= 0 (pixels), got {boundary_tolerance!r}")
        if calibration_bins < 1:
            raise ValueError(f"calibration_bins must be >= 1, got {calibration_bins}")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.boundary_tolerance, self.calibration_bins = boundary_tolerance, calibration_bins
        self.reset()

    def reset(self) -> None:
        self.confmat: torch.Tensor | None = None  # int64 [C, C]
        self.boundary: torch.Tensor | None = None  # int64 [4, C], see boundary_counts
        self.calibration: torch.Tensor | None = None  # float64 [3, bins]: count, summed confidence, summed correct
        self.entropy_bits: torch.Tensor | None = None  # float64 [2]: summed entropy (bits), pixels

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None) -> None:
        """Add a batch.

        Args:
            pred: class ids [N, H, W] (integer) or scores/logits [N, C, H, W]; logits also give the probabilities
                (softmax) of the calibration and entropy scores.
            target: class ids [N, H, W] (integer), ``ignore_index`` for unlabelled pixels.
            probs: class probabilities [N, C, H, W] (optional; taken from logits when pred is logits).
        """
        c = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != c:
                raise ValueError(f"pred has {pred.shape[1]} channels, expected num_classes={c}")
            if probs is None and pred.is_floating_point():
                probs = pred.float().softmax(dim=1)
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
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
        self.confmat = _add(self.confmat, torch.bincount(t * c + p, minlength=c * c).reshape(c, c))
        if pred.dim() == 3:  # label maps (other shapes: pixel lists, which have no boundaries)
            self.boundary = _add(self.boundary, boundary_counts(pred, target, c, self.boundary_tolerance,
                                                                self.ignore_index))
        if probs is None:
            return
        if tuple(probs.shape) != (pred.shape[0], c, *pred.shape[1:]):
            raise ValueError(f"probs must be [N, C, H, W] = {(pred.shape[0], c, *pred.shape[1:])}, got "
                             f"{tuple(probs.shape)}")
        probs = probs.double().movedim(1, -1)[valid]  # [labelled pixels, C]
        confidence = probs.max(dim=1).values
        correct = (p == t).double()
        bins = (confidence * self.calibration_bins).long().clamp(max=self.calibration_bins - 1)
        hist = torch.zeros(3, self.calibration_bins, dtype=torch.float64, device=probs.device)
        hist[0].index_add_(0, bins, torch.ones_like(confidence))
        hist[1].index_add_(0, bins, confidence)
        hist[2].index_add_(0, bins, correct)
        self.calibration = _add(self.calibration, hist)
        entropy = -(torch.where(probs > 0, probs * torch.log2(probs), torch.zeros_like(probs))).sum(dim=1)
        self.entropy_bits = _add(self.entropy_bits, torch.stack([entropy.sum(), torch.tensor(
            float(entropy.numel()), dtype=torch.float64, device=probs.device)]))

    def all_reduce(self) -> None:
        """Sum every count over the processes of the default process group (DDP evaluation)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        c = self.num_classes
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
            torch.device("cpu")
        zeros = {"confmat": (torch.zeros(c, c, dtype=torch.int64)), "boundary": torch.zeros(4, c, dtype=torch.int64),
                 "calibration": torch.zeros(3, self.calibration_bins, dtype=torch.float64),
                 "entropy_bits": torch.zeros(2, dtype=torch.float64)}
        has_probs = torch.tensor([float(self.calibration is not None)], device=device)
        dist.all_reduce(has_probs, op=dist.ReduceOp.MAX)  # a rank without images still joins every reduction
        for name, zero in zeros.items():
            if name in ("calibration", "entropy_bits") and not has_probs.item():
                continue
            value = getattr(self, name)
            value = (zero if value is None else value).to(device)
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            setattr(self, name, value)

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
        - boundary_f, boundary_precision, boundary_recall: means over the classes that have true or predicted
          boundaries of the per-class boundary F-score / precision / recall, boundary pixels pooled over images;
          boundary_f_per_class (NaN where a class has no boundary at all); boundary_tolerance (pixels).
        - With probabilities: ece (top-label expected calibration error over equal-width bins),
          reliability {"confidence", "accuracy", "count"} per bin, mean_entropy_bits (predictive entropy per
          labelled pixel).
        """
        c, nan = self.num_classes, float("nan")
        cm = (self.confmat if self.confmat is not None else torch.zeros(c, c, dtype=torch.int64)).double().cpu()
        tp, gt, pr = cm.diag(), cm.sum(dim=1), cm.sum(dim=0)
        union = gt + pr - tp
        total = cm.sum().item()
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, nan))
        recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, nan))
        present = ~torch.isnan(iou)
        out = {
            "pixel_accuracy": tp.sum().item() / total if total else nan,
            "iou_micro": tp.sum().item() / union.sum().item() if union.sum() > 0 else nan,
            "miou": iou[present].mean().item() if present.any() else nan,
            "iou_per_class": iou.tolist(),
            "class_accuracy": recall.tolist(),
            "mean_class_accuracy": recall[~torch.isnan(recall)].mean().item() if (gt > 0).any() else nan,
            "labelled_pixels": int(total),
        }
        out |= information_scores(cm.numpy())
        out |= self._boundary_scores()
        out |= self._calibration_scores()
        return out

    def _boundary_scores(self) -> dict:
        b = (self.boundary if self.boundary is not None else torch.zeros(4, self.num_classes)).double().cpu()
        matched_pred, n_pred, matched_true, n_true = b
        precision = torch.where(n_pred > 0, matched_pred / n_pred.clamp(min=1), torch.zeros_like(n_pred))
        recall = torch.where(n_true > 0, matched_true / n_true.clamp(min=1), torch.zeros_like(n_true))
        f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                        torch.zeros_like(precision))
        some = (n_pred + n_true) > 0  # a class with no boundary at all has no score
        f = torch.where(some, f, torch.full_like(f, float("nan")))
        mean = lambda x: x[some].mean().item() if some.any() else float("nan")  # noqa: E731
        return {"boundary_f": mean(f), "boundary_precision": mean(precision), "boundary_recall": mean(recall),
                "boundary_f_per_class": f.tolist(), "boundary_tolerance": self.boundary_tolerance}

    def _calibration_scores(self) -> dict:
        if self.calibration is None:
            return {}
        count, confidence, correct = self.calibration.cpu()
        n = count.sum().item()
        safe = count.clamp(min=1)
        gap = (confidence / safe - correct / safe).abs()
        entropy_sum, pixels = self.entropy_bits.cpu().tolist()
        return {"ece": (count * gap).sum().item() / n if n else float("nan"),
                "reliability": {"confidence": torch.where(count > 0, confidence / safe, torch.nan).tolist(),
                                "accuracy": torch.where(count > 0, correct / safe, torch.nan).tolist(),
                                "count": [int(v) for v in count.tolist()]},
                "mean_entropy_bits": entropy_sum / pixels if pixels else float("nan")}


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value.clone() if total is None else total + value.to(total.device)


def information_scores(confmat: np.ndarray) -> dict:
    """I(Y; Ŷ) in bits from a confusion matrix of counts, and 2 I / (H(Y) + H(Ŷ))."""
    total = confmat.sum()
    if total == 0:
        return {"mutual_information_bits": float("nan"), "normalized_mutual_information": float("nan")}
    pxy = confmat / total
    mi = infotheory.mutual_information(pxy)
    h = infotheory.entropy(pxy.sum(axis=1)) + infotheory.entropy(pxy.sum(axis=0))
    return {"mutual_information_bits": mi, "normalized_mutual_information": 2 * mi / h if h > 0 else float("nan")}


def nan_to_none(values):
    """JSON has no NaN: lists (and nested dicts of lists) are stored with None for undefined entries."""
    if isinstance(values, dict):
        return {k: nan_to_none(v) for k, v in values.items()}
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]


@torch.no_grad()
def per_image_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives of every image and class.

    Args:
        pred: class ids [N, H, W]; target: class ids [N, H, W] with ``ignore_index`` for unlabelled pixels
            (values are assumed checked, as `SegmentationMetrics.update` does).
    Returns:
        (tp, fp, fn), each int64 [N, C] on pred's device: summed over images they are the diagonal, column sums
        minus diagonal and row sums minus diagonal of the confusion matrix.  Per-image mIoU, and the mIoU of any
        resampled set of images (bootstrap), follow from them.
    """
    n, c = pred.shape[0], num_classes
    valid = target != ignore_index
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    index = (image * c + target.long().clamp(0, c - 1)) * c + pred.long()
    cm = torch.bincount(index[valid], minlength=n * c * c).reshape(n, c, c)
    tp = cm.diagonal(dim1=1, dim2=2)
    return tp, cm.sum(dim=1) - tp, cm.sum(dim=2) - tp


def per_image_miou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """mIoU of each image [N] from per-image counts [N, C]: classes absent from an image's ground truth and
    prediction are left out (NaN where an image has no labelled pixel)."""
    union = (tp + fp + fn).double()
    iou = torch.where(union > 0, tp.double() / union.clamp(min=1), torch.full_like(union, float("nan")))
    return iou.nanmean(dim=1)
