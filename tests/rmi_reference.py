"""Straightforward reference implementation of the RMI loss (Zhao et al. 2019, arXiv 1910.12037).

This is the formula as the RMI authors wrote it (``forward_sigmoid`` + ``rmi_lower_bound`` +
``map_get_pairs`` + ``log_det_by_cholesky``), ported to current PyTorch and any device:
stack the radius**2 shifted copies of both maps, cast everything to float64, three batched
matmuls for the covariance sums, an explicit ``torch.linalg.inv``, and plain autograd.

It is deliberately kept independent of ``mistudy.methods.losses`` (no shared helpers) so that the
tests and ``benchmarks/bench_rmi.py`` compare the fast path against an implementation that
does not share its bugs. It is the "straightforward formula" of issue 5, target 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MIN = 1e-6  # added to the masked sigmoid probabilities
POS_ALPHA = 5e-4  # ridge added before the inverse and before the log-determinant
LOGDET_EPS = 1e-8  # added to the Cholesky diagonal inside the log, as the RMI authors do


def rmi_loss_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    radius: int = 3,
    pool: str = "none",
    pool_size: int = 2,
    bce_weight: float = 0.5,
    ignore_index: int = 255,
    probabilities: str = "sigmoid",
) -> torch.Tensor:
    """bce_weight * BCE + (1 - bce_weight) * RMI lower bound; with probabilities="softmax" the RMI lower bound of
    the softmax probabilities alone (no BCE: the caller adds its own cross-entropy).

    logits: [N, C, H, W] float; target: [N, H, W] long (ignore_index = unlabelled).
    Returns a float32 scalar. No input validation: this is a test oracle.
    """
    logits = logits.float()
    n, c = logits.shape[:2]
    valid = target != ignore_index  # [N, H, W]
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).float()  # [N, C, H, W]
    onehot = onehot * valid.unsqueeze(1).float()

    # Part I: sigmoid BCE summed over classes and valid pixels, / (valid pixels + 1).
    logits_flat = logits.permute(0, 2, 3, 1).reshape(-1, c)
    onehot_flat = onehot.permute(0, 2, 3, 1).reshape(-1, c)
    mask_flat = valid.reshape(-1).float()
    bce = F.binary_cross_entropy_with_logits(
        logits_flat, onehot_flat, weight=mask_flat.unsqueeze(1), reduction="sum"
    )
    bce = bce / (mask_flat.sum() + 1.0)

    # Part II: RMI lower bound.
    activation = torch.sigmoid(logits) if probabilities == "sigmoid" else torch.softmax(logits, dim=1)
    probs = activation * valid.unsqueeze(1).float() + CLIP_MIN
    labels = onehot
    if pool == "max":
        labels = F.max_pool2d(labels, pool_size, stride=pool_size, padding=pool_size // 2)
        probs = F.max_pool2d(probs, pool_size, stride=pool_size, padding=pool_size // 2)
    elif pool == "avg":
        labels = F.avg_pool2d(labels, pool_size, stride=pool_size, padding=pool_size // 2)
        probs = F.avg_pool2d(probs, pool_size, stride=pool_size, padding=pool_size // 2)
    elif pool != "none":
        raise ValueError(pool)

    h, w = labels.shape[2:]
    new_h, new_w = h - (radius - 1), w - (radius - 1)
    la_ns, pr_ns = [], []
    for y in range(radius):
        for x in range(radius):
            la_ns.append(labels[:, :, y : y + new_h, x : x + new_w])
            pr_ns.append(probs[:, :, y : y + new_h, x : x + new_w])
    half_d = radius * radius
    la_vectors = torch.stack(la_ns, dim=2).reshape(n, c, half_d, -1).double()
    pr_vectors = torch.stack(pr_ns, dim=2).reshape(n, c, half_d, -1).double()

    eye = torch.eye(half_d, dtype=torch.float64, device=logits.device)
    la_vectors = la_vectors - la_vectors.mean(dim=3, keepdim=True)
    la_cov = la_vectors @ la_vectors.transpose(2, 3)
    pr_vectors = pr_vectors - pr_vectors.mean(dim=3, keepdim=True)
    pr_cov = pr_vectors @ pr_vectors.transpose(2, 3)
    pr_cov_inv = torch.linalg.inv(pr_cov + eye * POS_ALPHA)
    la_pr_cov = la_vectors @ pr_vectors.transpose(2, 3)
    appro_var = la_cov - la_pr_cov @ pr_cov_inv @ la_pr_cov.transpose(2, 3)

    chol = torch.linalg.cholesky(appro_var + eye * POS_ALPHA)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + LOGDET_EPS).sum(-1)
    rmi_per_class = (0.5 * logdet).mean(dim=0).float() / float(half_d)  # [C]
    rmi = rmi_per_class.sum()

    if probabilities == "softmax":
        return rmi
    return bce_weight * bce + (1.0 - bce_weight) * rmi
