"""Losses of the three use-cases: cross-entropy, Region Mutual Information, deep mutual learning KL.

- `cross_entropy_loss` — the baseline: pixel-wise cross-entropy averaged over labelled pixels.
- `RMILoss` — Zhao et al. 2019 (arXiv 1910.12037) in the sigmoid form the paper used:
  ``bce_weight * BCE + (1 - bce_weight) * RMI lower bound``. Same formula as the RMI authors'
  ``forward_sigmoid`` / ``rmi_lower_bound``, but computed without materialising the radius**2
  shifted copies of the whole batch (see `region_covariance`), in float64 where it matters, and on
  any device with current PyTorch.
- `mutual_kl` — the deep mutual learning term of Zhang et al. 2018: KL(p_other || p_self).

Shapes: logits [N, C, H, W] (any float dtype), target [N, H, W] integer class ids with
``ignore_index`` (255 by default) marking unlabelled pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PixelCrossEntropyLoss",
    "RMILoss",
    "cross_entropy_loss",
    "mutual_kl",
    "region_covariance",
    "rmi_loss_term",
]

RMI_POOLS = ("none", "max", "avg")
_CLIP_MIN = 1e-6  # added to the masked sigmoid probabilities (RMI authors' _CLIP_MIN)
_POS_ALPHA = 5e-4  # ridge that keeps both covariance matrices positive definite (_POS_ALPHA)
_LOGDET_EPS = 1e-8  # added to the Cholesky diagonal inside the log, as in log_det_by_cholesky
# Bytes of float64 neighbourhood vectors built at once. On CPU about one 224x224 map pair, so
# that the vectors are still in cache when multiplied (measured: 8 MiB ~2x faster than 128 MiB);
# elsewhere large enough that per-chunk launches do not matter, small next to the batch's maps.
_CHUNK_BYTES = {"cpu": 8 << 20}
_CHUNK_BYTES_DEFAULT = 64 << 20


# --------------------------------------------------------------------------- cross-entropy


class PixelCrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy averaged over labelled pixels (target != ignore_index).

    Equal to ``nn.CrossEntropyLoss(ignore_index=ignore_index)`` whenever a pixel is labelled,
    but returns 0 (still connected to the graph) instead of NaN when none is, so that one
    all-void crop cannot poison a training run.

    forward(logits [N, C, H, W] float, target [N, H, W] integer) -> float32 scalar.
    """

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(
            logits.float(), target.long(), ignore_index=self.ignore_index, reduction="sum"
        )
        labelled = (target != self.ignore_index).sum()
        return total / labelled.clamp(min=1)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


def cross_entropy_loss(ignore_index: int = 255) -> PixelCrossEntropyLoss:
    """The baseline loss: cross-entropy over labelled pixels (see `PixelCrossEntropyLoss`)."""
    return PixelCrossEntropyLoss(ignore_index=ignore_index)


# --------------------------------------------------------------------------- RMI


class _RegionCovariance(torch.autograd.Function):
    """Covariance sums of the radius x radius neighbourhood vectors of two maps.

    For every map pair (n, c) the neighbourhood vectors of ``labels`` and ``probs`` are
    concatenated into 2d-vectors v_k (d = radius**2, valid positions k only) and the scatter
    matrix sum_k (v_k - mean)(v_k - mean)^T (not divided by the count) is returned in float64.

    Unlike the straightforward formula, the d shifted copies are never built for the whole
    batch: the vectors of a few maps at a time are unfolded (float64), multiplied and dropped,
    and the backward unfolds them again instead of saving them. The per-component means come
    from the maps directly (two small matmuls with window indicators), so the vectors are used
    uncentred: sum_k v_k v_k^T - M mean mean^T. Cancellation in that difference is avoided by
    first subtracting each map's own mean (covariances do not change under a constant shift),
    and float32 inputs multiply exactly in float64, so the sums match the float64 reference to
    the rounding of float64 sums. Gradient flows into ``probs`` only.

    The large sums must be float64: accumulated in float32 they are off by ~2e-6 relative,
    which shifts per-map log-determinants by ~1e-3 already for random logits and makes the
    second Cholesky fail for confident ("trained") predictions, where
    la_cov - la_pr_cov pr_cov^-1 la_pr_cov^T cancels down to the 5e-4 ridge.
    """

    @staticmethod
    def forward(ctx, labels: torch.Tensor, probs: torch.Tensor, radius: int) -> torch.Tensor:
        n, c, h, w = probs.shape
        d = radius * radius
        pair = _centred_pair(labels, probs)  # [n*c, 2, h, w] float64
        rows, cols = _window_indicators(h, w, radius, pair.device)
        count = (h - radius + 1) * (w - radius + 1)  # M, vectors per map
        # means of the vectors' components = window means of the maps: [n*c, 2, r, r] -> [n*c, 2d]
        mean = (rows @ pair @ cols.T).reshape(n * c, 2 * d) / count
        out = torch.empty(n * c, 2 * d, 2 * d, dtype=torch.float64, device=probs.device)
        for start, stop in _chunks(n * c, 2 * d * (h - radius + 1) * (w - radius + 1), probs.device):
            # unfold orders rows as (map, dy, dx), the order of the RMI authors' map_get_pairs
            vectors = F.unfold(pair[start:stop], radius)  # [b, 2d, M]
            torch.bmm(vectors, vectors.transpose(1, 2), out=out[start:stop])
        out -= count * mean.unsqueeze(2) * mean.unsqueeze(1)
        ctx.save_for_backward(labels, probs, mean)
        ctx.radius = radius
        return out.view(n, c, 2 * d, 2 * d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        labels, probs, mean = ctx.saved_tensors
        radius = ctx.radius
        n, c, h, w = probs.shape
        d = radius * radius
        grad = grad.reshape(n * c, 2 * d, 2 * d).to(torch.float64)
        # S = V_c V_c^T  =>  dL/dV = (G + G^T) V_c with V_c = V - mean 1^T (the centring's own
        # backward adds nothing: its input gradient has zero mean). Only probs rows are needed.
        coef = (grad + grad.transpose(1, 2))[:, d:, :]  # [n*c, d, 2d]
        pair = _centred_pair(labels, probs)
        # preallocated, not a list of parts: small live blocks between the chunks' big
        # temporaries fragment the CPU heap (measured: peak RSS 120 -> 290 MiB at batch 2)
        grad_probs = torch.empty(n * c, h, w, dtype=torch.float64, device=probs.device)
        for start, stop in _chunks(n * c, 2 * d * (h - radius + 1) * (w - radius + 1), probs.device):
            vectors = F.unfold(pair[start:stop], radius)
            # fold sums every vector entry back onto the pixel it was copied from
            grad_probs[start:stop] = F.fold(torch.bmm(coef[start:stop], vectors), (h, w), radius)[:, 0]
        # minus fold(coef @ mean 1^T): entry i lands on the window of offset i, rows x cols
        rows, cols = _window_indicators(h, w, radius, probs.device)
        shifted_mean = (coef @ mean.unsqueeze(2)).view(n * c, radius, radius)
        grad_probs -= rows.T @ shifted_mean @ cols
        return None, grad_probs.view(n, c, h, w).to(probs.dtype), None


def _chunks(total: int, values_per_map: int, device: torch.device):
    """(start, stop) ranges over the n*c maps so that one chunk's float64 vectors fit the budget."""
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES_DEFAULT)
    step = max(1, budget // (8 * values_per_map))
    for start in range(0, total, step):
        yield start, min(start + step, total)


def _centred_pair(labels: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """float64 [n*c, 2, h, w]: labels and probs maps side by side, each minus its own mean."""
    n, c, h, w = probs.shape
    pair = torch.empty(n * c, 2, h, w, dtype=torch.float64, device=probs.device)
    pair[:, 0] = labels.reshape(n * c, h, w)
    pair[:, 1] = probs.reshape(n * c, h, w)
    pair -= pair.mean(dim=(2, 3), keepdim=True)
    return pair


def _window_indicators(h: int, w: int, radius: int, device: torch.device):
    """rows [r, h], cols [r, w] float64: rows[dy, y] = 1 iff y is in the window of offset dy."""
    def indicator(size: int) -> torch.Tensor:
        pos = torch.arange(size, device=device)
        offset = torch.arange(radius, device=device).unsqueeze(1)
        return ((pos >= offset) & (pos < offset + size - radius + 1)).to(torch.float64)

    return indicator(h), indicator(w)


def region_covariance(labels: torch.Tensor, probs: torch.Tensor, radius: int) -> torch.Tensor:
    """Scatter matrices of the joint radius x radius neighbourhood vectors, in float64.

    labels, probs: [N, C, H, W] float (H, W >= radius). Returns [N, C, 2d, 2d] float64 with
    d = radius**2: blocks [:d, :d] = labels' covariance sum, [:d, d:] = labels x probs,
    [d:, d:] = probs'. Differentiable with respect to ``probs`` only.
    """
    if labels.shape != probs.shape or probs.dim() != 4:
        raise ValueError(
            f"labels and probs must be the same [N, C, H, W] shape, got "
            f"{tuple(labels.shape)} and {tuple(probs.shape)}"
        )
    if min(probs.shape[-2:]) < radius:
        raise ValueError(f"maps of size {tuple(probs.shape[-2:])} are smaller than radius={radius}")
    return _RegionCovariance.apply(labels.detach(), probs, radius)


def _pool(maps: torch.Tensor, pool: str, pool_size: int) -> torch.Tensor:
    """RMI authors' downsampling: kernel = stride = pool_size, padding pool_size // 2."""
    if pool not in RMI_POOLS:
        raise ValueError(f"pool must be one of {RMI_POOLS}, got {pool!r}")
    padding = pool_size // 2
    if pool == "max":
        return F.max_pool2d(maps, pool_size, stride=pool_size, padding=padding)
    if pool == "avg":
        return F.avg_pool2d(maps, pool_size, stride=pool_size, padding=padding)
    return maps


def _pooled_size(size: int, pool: str, pool_size: int) -> int:
    if pool == "none":
        return size
    return (size + 2 * (pool_size // 2) - pool_size) // pool_size + 1


def rmi_loss_term(
    labels: torch.Tensor,
    probs: torch.Tensor,
    radius: int = 3,
    pool: str = "none",
    pool_size: int = 2,
) -> torch.Tensor:
    """The RMI loss term (nats, minimised): sum over classes of the batch mean of 0.5 log det(Sigma_{Y|P}) / radius**2.

    It is the negative of the prediction-dependent part of Zhao et al.'s lower bound on I(Y; P), per dimension
    (the RMI authors call it ``rmi_lower_bound``; `mistudy.methods.infotheory.rmi_bound_bits` is the bound itself, in bits).

    labels: [N, C, H, W] one-hot labels (zeroed at ignored pixels); probs: [N, C, H, W]
    probabilities (zeroed at ignored pixels, plus 1e-6). Both are optionally max/avg pooled
    (kernel = stride = pool_size, padding pool_size // 2). Sigma_{Y|P} = la_cov - la_pr_cov
    (pr_cov + 5e-4 I)^-1 la_pr_cov^T is the approximate posterior covariance of the label
    vectors given the prediction vectors, from covariance *sums*; 5e-4 I is added again before
    the log-determinant, which is taken from a Cholesky factor (diagonal + 1e-8 inside the log,
    as the RMI authors do). The d x d algebra is float64, with Cholesky solves, no inverse.
    Returns a scalar of probs' dtype (float32 for float32 / half inputs).
    """
    labels = _pool(labels, pool, pool_size)
    probs = _pool(probs, pool, pool_size)
    d = radius * radius
    cov = region_covariance(labels, probs, radius)  # [N, C, 2d, 2d] float64
    la_cov, la_pr_cov, pr_cov = cov[..., :d, :d], cov[..., :d, d:], cov[..., d:, d:]
    eye = torch.eye(d, dtype=torch.float64, device=cov.device)
    pr_chol = torch.linalg.cholesky(pr_cov + _POS_ALPHA * eye)
    # la_pr_cov pr_cov^-1 la_pr_cov^T = Z^T Z with Z = L^-1 la_pr_cov^T, L L^T = pr_cov
    z = torch.linalg.solve_triangular(pr_chol, la_pr_cov.transpose(-2, -1), upper=False)
    appro_var = la_cov - z.transpose(-2, -1) @ z
    appro_chol = torch.linalg.cholesky(appro_var + _POS_ALPHA * eye)
    # 0.5 * log det = 0.5 * 2 * sum(log(diag(chol)))
    half_logdet = torch.log(torch.diagonal(appro_chol, dim1=-2, dim2=-1) + _LOGDET_EPS).sum(-1)
    per_class = half_logdet.mean(dim=0) / d  # [C]
    return per_class.sum().to(probs.dtype)


class RMILoss(nn.Module):
    """Region Mutual Information loss: bce_weight * BCE + (1 - bce_weight) * RMI (sigmoid form, ``base="bce"``).

    BCE is the per-class sigmoid binary cross-entropy summed over classes and labelled pixels,
    divided by (labelled pixels + 1); RMI is `rmi_loss_term` of the one-hot labels and
    sigmoid(logits), both zeroed at ignored pixels (the probabilities then + 1e-6).
    The paper ran radius=3, pool="none"; the RMI authors' default is pool="avg", pool_size=2.
    ``base="ce"`` replaces the sigmoid by a softmax: softmax cross-entropy averaged over labelled pixels (the
    baseline's loss) and RMI of the softmax probabilities (zeroed at ignored pixels, + 1e-6), so that RMI can be
    added to the baseline without the switch to BCE.  ``bce_weight`` (lambda) then weighs that cross-entropy.
    `parts` returns both terms; ``bce_weight=1`` skips the RMI term (its weight is 0).

    forward(logits [N, C, H, W] any float dtype, target [N, H, W] integer) -> float32 scalar
    (float64 for float64 logits). Autocast is switched off inside: logits are cast to float32
    and the covariance algebra runs in float64, so bf16 autocast is safe. Bad arguments, shapes
    or target values (other than ignore_index, outside [0, num_classes)) raise ValueError; the
    target check reads one boolean back from the device, which makes the host wait for a GPU:
    check_target=False skips it where the targets are known to be valid (the training engine's
    masks are checked when read).
    """

    def __init__(
        self,
        num_classes: int,
        radius: int = 3,
        pool: str = "none",
        pool_size: int = 2,
        bce_weight: float = 0.5,
        ignore_index: int = 255,
        check_target: bool = True,
        base: str = "bce",
    ):
        super().__init__()
        for name, value, low in (("num_classes", num_classes, 1), ("radius", radius, 1),
                                 ("pool_size", pool_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if pool not in RMI_POOLS:
            raise ValueError(f"pool must be one of {RMI_POOLS}, got {pool!r}")
        if not isinstance(bce_weight, (int, float)) or not 0.0 <= bce_weight <= 1.0:
            raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        if base not in ("bce", "ce"):
            raise ValueError(f"base must be 'bce' or 'ce', got {base!r}")
        self.base = base
        self.num_classes = num_classes
        self.radius = radius
        self.pool = pool
        self.pool_size = pool_size
        self.bce_weight = float(bce_weight)
        self.ignore_index = ignore_index
        self.check_target = bool(check_target)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, radius={self.radius}, pool={self.pool!r}, "
                f"pool_size={self.pool_size}, bce_weight={self.bce_weight}, "
                f"ignore_index={self.ignore_index}, base={self.base!r}")

    def _check_inputs(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be [N, {self.num_classes}, H, W] (num_classes={self.num_classes}), "
                f"got shape {tuple(logits.shape)}"
            )
        if not logits.is_floating_point():
            raise ValueError(f"logits must be a float tensor, got dtype {logits.dtype}")
        n, _, h, w = logits.shape
        if tuple(target.shape) != (n, h, w):
            raise ValueError(
                f"target must have shape [N, H, W] = {(n, h, w)} to match logits, "
                f"got {tuple(target.shape)}"
            )
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must be an integer tensor of class ids, got dtype {target.dtype}")
        ph, pw = (_pooled_size(s, self.pool, self.pool_size) for s in (h, w))
        if min(ph, pw) < self.radius:
            raise ValueError(
                f"a {h}x{w} map is {ph}x{pw} after pool={self.pool!r} (pool_size={self.pool_size}), "
                f"smaller than radius={self.radius}"
            )
        if not self.check_target:
            return
        bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes))
        if bad.any():
            values = torch.unique(target[bad])[:10].tolist()
            raise ValueError(
                f"target has values {values} outside [0, {self.num_classes}) that are not "
                f"ignore_index={self.ignore_index}"
            )

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"bce" (or "ce"): the per-pixel loss, "rmi": the RMI term} (unweighted; "rmi" absent when
        bce_weight = 1)."""
        self._check_inputs(logits, target)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)  # [N, 1, H, W]
            class_ids = torch.where(target != self.ignore_index, target, 0).long().unsqueeze(1)
            onehot = torch.zeros_like(logits).scatter_(1, class_ids, 1.0) * valid
            if self.base == "bce":
                out = {"bce": F.binary_cross_entropy_with_logits(
                    logits, onehot, weight=valid.expand_as(logits), reduction="sum") / (valid.sum() + 1.0)}
                probs = torch.sigmoid(logits)
            else:
                out = {"ce": F.cross_entropy(logits, target.long(), ignore_index=self.ignore_index, reduction="sum")
                       / valid.sum().clamp(min=1)}
                probs = torch.softmax(logits, dim=1)
            if self.bce_weight < 1.0:
                out["rmi"] = rmi_loss_term(onehot, probs * valid + _CLIP_MIN, self.radius, self.pool, self.pool_size)
            return out

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss from its `parts`: bce_weight * BCE (or CE) + (1 - bce_weight) * RMI (the per-pixel term alone
        where RMI's weight is 0)."""
        base = parts[self.base]
        return base if "rmi" not in parts else self.bce_weight * base + (1.0 - self.bce_weight) * parts["rmi"]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.combine(self.parts(logits, target))


# --------------------------------------------------------------------------- mutual learning


def mutual_kl(
    logits: torch.Tensor,
    other_logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Deep mutual learning term KL(p_other || p_self), averaged over labelled pixels.

    logits, other_logits: [N, C, H, W]; target: [N, H, W] (only its ignore_index pixels matter).
    p_self = softmax(logits / T), p_other = softmax(other_logits.detach() / T); per pixel
    sum_c p_other (log p_other - log p_self), computed from log-probabilities (stable; clamped
    at 0 against rounding, so never negative), averaged over pixels with target != ignore_index.
    The gradient flows only into ``logits``. For T != 1 the result is multiplied by T**2, as in
    Hinton et al.'s distillation, so that gradient magnitudes do not shrink as 1/T**2. With no
    labelled pixel it returns 0, still connected to ``logits``' graph. Returns a float32 scalar
    (float64 for float64 logits). Bad shapes or temperature raise ValueError.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [N, C, H, W], got shape {tuple(logits.shape)}")
    if other_logits.shape != logits.shape:
        raise ValueError(
            f"other_logits must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(other_logits.shape)}"
        )
    n, _, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(f"target must have shape {(n, h, w)}, got {tuple(target.shape)}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")

    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 if given
    log_p_self = F.log_softmax(logits.to(dtype) / temperature, dim=1)
    log_p_other = F.log_softmax(other_logits.detach().to(dtype) / temperature, dim=1)
    kl = F.kl_div(log_p_self, log_p_other, reduction="none", log_target=True).sum(dim=1)  # [N, H, W]
    # KL >= 0 exactly; rounding can give -1e-8 where the two agree (and the gradient is ~0 there)
    kl = kl.clamp_min(0.0)
    labelled = target != ignore_index
    total = torch.where(labelled, kl, torch.zeros_like(kl)).sum()
    return total / labelled.sum().clamp(min=1) * (temperature * temperature)
