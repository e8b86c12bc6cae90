"""Segmentation scores from one confusion matrix.

Rows of the confusion matrix are ground-truth classes, columns predicted classes. Every score is a
function of that one matrix, so the numbers are consistent with each other and can be summed across
batches, epochs and (with `all_reduce`) processes before any division happens.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class SegmentationMetrics:
    """Accumulate a confusion matrix over batches and compute every score from it.

    Args:
        num_classes: number of classes C; predictions and labels are in [0, C).
        ignore_index: label value of pixels that never count (VOC borders, Cityscapes void).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confmat: torch.Tensor | None = None  # int64 [C, C], on the device of the first update

    def reset(self) -> None:
        self.confmat = None

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch.

        Args:
            pred: class ids [N, H, W] (integer) or scores/logits [N, C, H, W] (argmax over C is taken).
            target: class ids [N, H, W] (integer), `ignore_index` for unlabelled pixels.
        """
        c = self.num_classes
        if pred.dim() == 4:
            if pred.shape[1] != c:
                raise ValueError(f"pred has {pred.shape[1]} channels, expected num_classes={c}")
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred (class ids) and target must be integer tensors")
        target = target.to(pred.device)
        valid = target != self.ignore_index
        t = target[valid].long()
        p = pred[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= c):
            bad = torch.unique(t[(t < 0) | (t >= c)]).tolist()
            raise ValueError(f"target holds values {bad} outside [0, {c}) that are not ignore_index={self.ignore_index}")
        if p.numel() and (p.min() < 0 or p.max() >= c):
            bad = torch.unique(p[(p < 0) | (p >= c)]).tolist()
            raise ValueError(f"pred holds class ids {bad} outside [0, {c})")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        if self.confmat is None:
            self.confmat = torch.zeros(c, c, dtype=torch.int64, device=counts.device)
        self.confmat += counts.to(self.confmat.device)

    def all_reduce(self) -> None:
        """Sum the confusion matrix over all processes of the default process group (DDP evaluation)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.confmat is None:
            self.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        cm = self.confmat.to(device)
        dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        self.confmat = cm

    def compute(self) -> dict:
        """Every score, as plain Python numbers.

        - pixel_accuracy: correct pixels / labelled pixels (the paper's Eq. 10, multi-class).
        - iou_micro: sum_c TP_c / sum_c (TP_c + FP_c + FN_c) -- the multi-class IoU as the paper's
          text defines it. Each wrong pixel is one FP and one FN, so iou_micro = acc / (2 - acc).
        - miou: mean over classes of TP_c / (TP_c + FP_c + FN_c), classes absent from both prediction
          and ground truth excluded -- the standard benchmark score (and what the authors' code computed).
        - iou_per_class: list of per-class IoU, NaN where a class is absent from both.
        - class_accuracy / mean_class_accuracy: per-class recall and its mean over present classes.
        """
        c = self.num_classes
        cm = self.confmat if self.confmat is not None else torch.zeros(c, c, dtype=torch.int64)
        cm = cm.double().cpu()
        tp = cm.diag()
        gt = cm.sum(dim=1)
        pr = cm.sum(dim=0)
        union = gt + pr - tp
        total = cm.sum().item()
        nan = float("nan")
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, nan))
        recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, nan))
        present = ~torch.isnan(iou)
        return {
            "pixel_accuracy": tp.sum().item() / total if total else nan,
            "iou_micro": tp.sum().item() / union.sum().item() if union.sum() > 0 else nan,
            "miou": iou[present].mean().item() if present.any() else nan,
            "iou_per_class": iou.tolist(),
            "class_accuracy": recall.tolist(),
            "mean_class_accuracy": recall[~torch.isnan(recall)].mean().item() if (gt > 0).any() else nan,
            "labelled_pixels": int(total),
        }


def nan_to_none(values: list[float]) -> list[float | None]:
    """JSON has no NaN: per-class lists are stored with None for absent classes."""
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
