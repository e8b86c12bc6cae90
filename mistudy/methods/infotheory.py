"""Information theory of the paper's section 2.2, and the Gaussian bridge to the RMI loss.

Discrete quantities (Eqs. 1-8 of the paper): `self_information`, `entropy`, `joint_entropy`,
`conditional_entropy`, `mutual_information`, `kl_divergence`, plus `binary_entropy`, `marginals`
and `joint_distribution` (an empirical joint from paired label samples).

Continuous bridge to Region Mutual Information (Zhao et al. 2019, arXiv 1910.12037):
`gaussian_mutual_information` (MI of jointly Gaussian vectors from their covariance),
`neighbourhood_vectors` and `rmi_bound_bits` (the prediction-dependent part of RMI's lower bound).
These are for teaching and cross-checking, in float64; the training loss lives in `mistudy.methods.losses`.

Conventions:
- Inputs are numpy arrays, torch tensors or (nested) Python sequences; they are read as float64.
  Functions returning one number return a Python float. Elementwise functions (`self_information`,
  `binary_entropy`) return the kind they were given: float for a Python/numpy scalar, a float64
  ndarray for an ndarray or a sequence, a tensor on the input's device (input float dtype, else
  float64) for a tensor.
- Logarithms are base 2 (bits) by default; `base=math.e` gives nats, as scipy and scikit-learn do.
- 0 log 0 = 0: outcomes of probability zero contribute nothing.
- A joint distribution `pxy` is a 2-D array with X along rows (axis 0) and Y along columns (axis 1):
  pxy[i, j] = P(X = x_i, Y = y_j).
- Bad input raises ValueError naming the argument and what is wrong with it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor, Python scalar or nested sequence

# Float64 inputs must sum to 1 within this; lower-precision inputs get n * machine-eps more,
# the rounding error their own sum can carry.
SUM_ATOL = 1e-6


# ----------------------------------------------------------------------------- validation helpers

def _as_float64(x: ArrayLike, name: str) -> np.ndarray:
    """float64 numpy copy of `x`; ValueError if empty or not finite."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be numeric, got {type(x).__name__}: {err}") from None
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} has non-finite values (NaN or inf), first at index {where}: {arr[where]}")
    return arr


def _sum_tolerance(x: ArrayLike, size: int) -> float:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        eps = torch.finfo(x.dtype).eps
    elif isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        eps = float(np.finfo(x.dtype).eps)
    else:
        eps = float(np.finfo(np.float64).eps)
    return max(SUM_ATOL, size * eps)


def _check_probabilities(arr: np.ndarray, name: str, tol: float = 0.0) -> np.ndarray:
    """Every entry in [0, 1], up to ``tol`` of rounding (such entries are clipped into [0, 1]); returns arr."""
    for bad, what in ((arr < -tol, "negative"), (arr > 1 + tol, "greater than 1")):
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} has entries {what}, first {name}{list(where)} = {float(arr[where])!r}; "
                             "probabilities lie in [0, 1]")
    return np.clip(arr, 0.0, 1.0) if tol else arr


def _distribution(x: ArrayLike, name: str, ndim: int | None = None) -> np.ndarray:
    """float64 copy of a probability distribution: finite, non-negative, summing to 1.

    Rounding is accepted, not rejected: entries within the sum tolerance of [0, 1] are clipped (a marginal summed
    from a normalised joint can be 1.0000000000000002), and the result is renormalised to sum to 1.
    """
    arr = _as_float64(x, name)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {tuple(arr.shape)}")
    tol = _sum_tolerance(x, arr.size)
    arr = _check_probabilities(arr, name, tol)
    total = float(arr.sum())
    if abs(total - 1.0) > tol:
        raise ValueError(f"{name} sums to {total:.10g}, not 1 (tolerance {tol:.1e}); "
                         "normalise it first")
    return arr / total


def _log_base(base: float) -> float:
    """ln(base), after checking that `base` is a valid logarithm base."""
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not math.isfinite(base) \
            or base <= 0 or base == 1:
        raise ValueError(f"base must be a finite number > 0 and != 1, got {base!r}")
    return math.log(base)


def _like(result: np.ndarray, x: ArrayLike):
    """Return an elementwise result in the kind of the input `x` (see module docstring)."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float64
        return torch.from_numpy(result).to(device=x.device, dtype=dtype)
    if isinstance(x, np.ndarray) and x.ndim > 0:
        return result
    if result.ndim == 0:
        return float(result)
    return result


def _sum_plog(p: np.ndarray, ratio_den: np.ndarray | None, log_b: float) -> float:
    """sum over p > 0 of p * log_b(p / den); den = 1 when None. Skips p = 0 terms (0 log 0 = 0)."""
    mask = p > 0
    num = p[mask]
    terms = np.log(num) if ratio_den is None else np.log(num) - np.log(ratio_den[mask])
    return float(np.sum(num * terms)) / log_b


# ----------------------------------------------------------------------------- discrete quantities

def self_information(p: ArrayLike, base: float = 2) -> Any:
    """I(x) = -log_b p(x), Eq. (1), elementwise.

    p: probabilities of events, any shape, each in [0, 1] (they need not sum to 1).
    Returns the same kind as `p` (module docstring). An impossible event (p = 0) carries infinite
    information: the result is inf there.
    """
    log_b = _log_base(base)
    arr = _as_float64(p, "p")
    _check_probabilities(arr, "p")
    with np.errstate(divide="ignore"):
        info = -np.log(arr) / log_b
    return _like(info + 0.0, p)  # + 0.0 turns -0.0 (p = 1) into 0.0


def binary_entropy(p: ArrayLike, base: float = 2) -> Any:
    """H_b(p) = -p log p - (1-p) log(1-p): entropy of a coin with P(heads) = p, elementwise.

    p: any shape, each in [0, 1]. Returns the same kind as `p`; H_b(0) = H_b(1) = 0.
    """
    log_b = _log_base(base)
    arr = _as_float64(p, "p")
    _check_probabilities(arr, "p")
    q = 1.0 - arr
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(arr > 0, arr * np.log(arr), 0.0) + np.where(q > 0, q * np.log(q), 0.0)) / log_b
    return _like(h + 0.0, p)


def entropy(p: ArrayLike, base: float = 2) -> float:
    """H(X) = -sum_x p(x) log_b p(x), Eq. (2).

    p: a distribution over all its entries (any shape; a 2-D joint gives the joint entropy),
    non-negative and summing to 1.
    """
    log_b = _log_base(base)
    arr = _distribution(p, "p")
    return -_sum_plog(arr.ravel(), None, log_b) + 0.0


def joint_entropy(pxy: ArrayLike, base: float = 2) -> float:
    """H(X, Y) = -sum_{x,y} p(x,y) log_b p(x,y), Eq. (3). pxy: [|X|, |Y|] joint distribution."""
    log_b = _log_base(base)
    arr = _distribution(pxy, "pxy", ndim=2)
    return -_sum_plog(arr.ravel(), None, log_b) + 0.0


def marginals(pxy: ArrayLike) -> tuple[Any, Any]:
    """(p(x), p(y)) of a joint pxy [|X|, |Y|]: row sums [|X|] and column sums [|Y|].

    Returned as numpy float64 arrays, or as tensors (device and float dtype of `pxy`) for a tensor.
    """
    arr = _distribution(pxy, "pxy", ndim=2)
    return _like(arr.sum(axis=1), pxy), _like(arr.sum(axis=0), pxy)


def conditional_entropy(pxy: ArrayLike, base: float = 2) -> float:
    """H(X | Y) = -sum_y p(y) sum_x p(x|y) log_b p(x|y), Eq. (4).

    pxy: [|X|, |Y|] joint distribution, X along rows (axis 0), Y along columns (axis 1).
    The entropy left in the ROW variable once the COLUMN variable is known; for H(Y | X) pass pxy.T.
    Computed directly from Eq. (4) as -sum p(x,y) log(p(x,y) / p(y)), not from identities.
    """
    log_b = _log_base(base)
    arr = _distribution(pxy, "pxy", ndim=2)
    py = np.broadcast_to(arr.sum(axis=0, keepdims=True), arr.shape)
    return -_sum_plog(arr, py, log_b) + 0.0


def mutual_information(pxy: ArrayLike, base: float = 2) -> float:
    """I(X; Y) = sum_{x,y} p(x,y) log_b [p(x,y) / (p(x) p(y))], Eq. (5).

    pxy: [|X|, |Y|] joint distribution. Computed directly from Eq. (5), so that identities (6)
    I = H(X) - H(X|Y) and (7) I = H(X) + H(Y) - H(X,Y) are genuine checks. Non-negative up to
    rounding (about 1e-16 below zero for independent variables).
    """
    log_b = _log_base(base)
    arr = _distribution(pxy, "pxy", ndim=2)
    outer = np.outer(arr.sum(axis=1), arr.sum(axis=0))
    return _sum_plog(arr, outer, log_b) + 0.0


def kl_divergence(p: ArrayLike, q: ArrayLike, base: float = 2) -> float:
    """D_KL(P || Q) = sum_x p(x) log_b [p(x) / q(x)], Eq. (8): the relative entropy from Q to P.

    p, q: distributions of the same shape (any). Terms with p(x) = 0 are 0 whatever q(x) is;
    q(x) = 0 where p(x) > 0 makes the divergence infinite and raises ValueError naming the place.
    Not symmetric: D(P || Q) != D(Q || P) in general.
    """
    log_b = _log_base(base)
    p_arr = _distribution(p, "p")
    q_arr = _distribution(q, "q")
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same shape, got p {tuple(p_arr.shape)} "
                         f"and q {tuple(q_arr.shape)}")
    bad = (q_arr == 0) & (p_arr > 0)
    if bad.any():
        where = [tuple(int(i) for i in w) for w in np.argwhere(bad)[:5]]
        raise ValueError(f"q is 0 where p > 0 at index {where}"
                         f"{' (first 5 shown)' if bad.sum() > 5 else ''}, "
                         f"e.g. p{list(where[0])} = {p_arr[where[0]]:g}: D_KL(p || q) is infinite")
    return _sum_plog(p_arr, q_arr, log_b) + 0.0


def joint_distribution(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Empirical joint distribution of paired samples: pxy [|X|, |Y|] of relative frequencies.

    x, y: 1-D arrays of the same length (e.g. class labels of the same pixels in two label maps).
    Row i is the i-th smallest distinct value of x, column j the j-th smallest distinct value of y.
    """
    xs = _as_float64(x, "x")
    ys = _as_float64(y, "y")
    if xs.ndim != 1 or ys.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got x {tuple(xs.shape)} "
                         f"and y {tuple(ys.shape)}")
    _, xi = np.unique(xs, return_inverse=True)
    _, yi = np.unique(ys, return_inverse=True)
    counts = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(counts, (xi, yi), 1.0)
    return counts / xs.size


# ----------------------------------------------------------------------------- Gaussian bridge to RMI

def _logdet_pd(mat: np.ndarray, what: str) -> float:
    """ln det of a symmetric positive-definite matrix through its Cholesky factor."""
    try:
        chol = np.linalg.cholesky(mat)
    except np.linalg.LinAlgError:
        raise ValueError(f"{what} is not positive definite") from None
    return 2.0 * float(np.sum(np.log(np.diag(chol))))


def gaussian_mutual_information(cov_joint: ArrayLike, dx: int, base: float = 2) -> float:
    """I(X; Y) of jointly Gaussian vectors: ½ log_b [det Σx det Σy / det Σ].

    cov_joint: [dx + dy, dx + dy] symmetric positive-definite covariance of the stacked vector (X, Y);
    X is the first `dx` coordinates, Y the rest. For a bivariate normal with correlation rho this is
    -½ log_b(1 - rho²). Equivalently ½ log_b [det Σy / det(Σy - Σyx Σx⁻¹ Σxy)] (a Schur complement),
    the form the RMI lower bound is built from.
    """
    log_b = _log_base(base)
    cov = _as_float64(cov_joint, "cov_joint")
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov_joint must be a square 2-D matrix, got shape {tuple(cov.shape)}")
    n = cov.shape[0]
    if isinstance(dx, bool) or not isinstance(dx, numbers.Integral) or not 1 <= dx < n:
        raise ValueError(f"dx must be an integer in [1, {n - 1}] for a {n}x{n} cov_joint, got {dx!r}")
    asym = float(np.max(np.abs(cov - cov.T)))
    if asym > 1e-9 * max(1.0, float(np.max(np.abs(cov)))):
        raise ValueError(f"cov_joint is not symmetric (max |cov - cov.T| = {asym:.3g})")
    logdet = _logdet_pd(cov, "cov_joint")
    logdet_x = _logdet_pd(cov[:dx, :dx], "cov_joint[:dx, :dx]")
    logdet_y = _logdet_pd(cov[dx:, dx:], "cov_joint[dx:, dx:]")
    return 0.5 * (logdet_x + logdet_y - logdet) / log_b


def neighbourhood_vectors(image: ArrayLike, radius: int) -> np.ndarray:
    """Every radius x radius window of a 2-D map as a column: [radius², (H-radius+1)(W-radius+1)].

    Valid positions only (no padding), windows in row-major order of their top-left corner;
    row k of the result is the pixel at offset (k // radius, k % radius) inside the window.
    This is how RMI turns a pixel into a vector of itself and its neighbours.
    """
    arr = _as_float64(image, "image")
    if arr.ndim != 2:
        raise ValueError(f"image must be a 2-D map [H, W], got shape {tuple(arr.shape)}")
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or radius < 1 \
            or radius > min(arr.shape):
        raise ValueError(f"radius must be an integer in [1, {min(arr.shape)}] for a map of shape "
                         f"{tuple(arr.shape)}, got {radius!r}")
    windows = np.lib.stride_tricks.sliding_window_view(arr, (radius, radius))
    return windows.reshape(-1, radius * radius).T.copy()


def rmi_bound_bits(labels: ArrayLike, probs: ArrayLike, radius: int = 3, eps: float = 5e-4,
                    base: float = 2) -> float:
    """The part of RMI's lower bound on I(Y; P) that depends on the prediction: -½ log_b det(Σ_{Y|P} + εI).

    labels: [H, W] binary map of one class (one channel of the one-hot labels), values 0 or 1.
    probs:  [H, W] predicted probability of that class, values in [0, 1].
    Y and P are the radius x radius neighbourhood vectors (d = radius²) of the two maps.

    Zhao et al. (2019): I(Y; P) >= H(Y) - (d/2) log(2 pi e) - ½ log det Σ_{Y|P}, with
    Σ_{Y|P} = Σ_Y - Σ_YP (Σ_P + εI)⁻¹ Σ_YP^T the covariance of the error of the best linear prediction
    of Y from P (a Gaussian with that covariance has the largest entropy, hence the bound). H(Y) is
    fixed by the labels, so only -½ log det Σ_{Y|P} moves with the prediction: that is returned.
    Covariances here are sample covariances (divided by the number of vectors); the training loss uses
    plain sums, which shifts log det by d log(count), and minimises ½ log det(Σ_{Y|P} + εI) / d.
    ε (5e-4 as in the RMI code) keeps the inverse and the log-determinant finite; eps=0 is allowed when
    both covariances are non-singular.
    """
    log_b = _log_base(base)
    lab = _as_float64(labels, "labels")
    prb = _as_float64(probs, "probs")
    if lab.ndim != 2 or lab.shape != prb.shape:
        raise ValueError(f"labels and probs must be 2-D maps of the same shape, got labels "
                         f"{tuple(lab.shape)} and probs {tuple(prb.shape)}")
    if not np.isin(lab, (0.0, 1.0)).all():
        raise ValueError(f"labels must be a binary 0/1 map of one class, got values "
                         f"{np.unique(lab)[:10].tolist()}")
    _check_probabilities(prb, "probs")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    y = neighbourhood_vectors(lab, radius)
    p = neighbourhood_vectors(prb, radius)
    y -= y.mean(axis=1, keepdims=True)
    p -= p.mean(axis=1, keepdims=True)
    n = y.shape[1]
    eye = np.eye(y.shape[0])
    cov_y, cov_p, cov_yp = y @ y.T / n, p @ p.T / n, y @ p.T / n
    try:
        gain = np.linalg.solve(cov_p + eps * eye, cov_yp.T).T   # Σ_YP (Σ_P + εI)⁻¹
    except np.linalg.LinAlgError:
        raise ValueError("the covariance of the prediction's vectors is singular; use eps > 0") from None
    posterior = cov_y - gain @ cov_yp.T
    posterior = 0.5 * (posterior + posterior.T)                 # symmetric up to rounding
    logdet = _logdet_pd(posterior + eps * eye, "Σ_{Y|P} + eps*I (use eps > 0)")
    return -0.5 * logdet / log_b
