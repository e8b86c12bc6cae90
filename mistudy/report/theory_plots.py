"""Demo inputs, figures and widgets of notebook 01 (information theory and the bridge to RMI).

- Demo inputs: `discrete_bump`, `discretized_gaussian_joint`, `toy_label_map`, `blurred_prediction`,
  `noisy_prediction`, and the sweeps `rmi_versus_blur` / `rmi_versus_mixing`.
- `plot_*` draw one figure each with pyplot and return it (the notebook saves it with
  `mistudy.report.viz.save_figure`; the inline backend shows it).
- `*_widget` wrap a plot function in `ipywidgets.interactive`. Widget state is not kept in executed
  notebooks, so the notebook also draws every demo once as a plain figure at the default values; in the study's
  headless runs (env MISTUDY_WIDGETS=off, set by `mistudy study`) the widgets are not built at all: an
  ipywidgets cell was seen to stall papermill for its whole cell time limit on a loaded machine (nbclient's
  handling of output widgets, jupyter/nbclient#312), and headless there is no one to move a slider.
All quantities come from `mistudy.methods.infotheory`, in bits.
"""

from __future__ import annotations

import math
import numbers
import os

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.transforms.v2 import functional as TF

from mistudy.methods import infotheory as it

# ----------------------------------------------------------------------------- demo inputs


def discrete_bump(k: int, mean: float, width: float) -> np.ndarray:
    """A bell-shaped distribution [k] over outcomes 0..k-1: p(x) ∝ exp(-(x - mean)² / (2 width²)).

    Strictly positive everywhere (so KL between two bumps is finite).
    """
    if not isinstance(k, numbers.Integral) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    x = np.arange(k, dtype=np.float64)
    logits = -((x - mean) ** 2) / (2.0 * width ** 2)
    p = np.exp(logits - logits.max())
    return p / p.sum()


def discretized_gaussian_joint(rho: float, bins: int = 41, limit: float = 4.0) -> np.ndarray:
    """Joint pxy [bins, bins] of a standard bivariate normal with correlation rho on a grid over [-limit, limit]².

    Cell probabilities are the density at the cell centres, normalised. As the grid gets finer its
    discrete mutual information tends to the Gaussian one, -½ log2(1 - rho²) (MI, unlike entropy,
    survives the limit).
    """
    if not (math.isfinite(rho) and -1 < rho < 1):
        raise ValueError(f"rho must lie strictly between -1 and 1, got {rho!r}")
    if not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a finite number > 0, got {limit!r}")
    c = np.linspace(-limit, limit, bins)
    x, y = np.meshgrid(c, c, indexing="ij")  # X along rows, Y along columns
    density = np.exp(-(x ** 2 - 2 * rho * x * y + y ** 2) / (2 * (1 - rho ** 2)))
    return density / density.sum()


def toy_label_map(size: int = 48) -> np.ndarray:
    """A binary [size, size] label map (float64 0/1) with a disc, a rectangle and a triangle."""
    if not isinstance(size, numbers.Integral) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    r, c = np.mgrid[0:size, 0:size] / size  # row and column coordinates in [0, 1)
    disc = (r - 0.30) ** 2 + (c - 0.30) ** 2 < 0.18 ** 2
    rectangle = (r > 0.58) & (r < 0.88) & (c > 0.12) & (c < 0.45)
    triangle = (r > 0.15) & (r < 0.85) & (c > 0.55) & (c - 0.55 < (r - 0.15) * 0.55)
    return (disc | rectangle | triangle).astype(np.float64)


def blurred_prediction(labels: np.ndarray, sigma: float) -> np.ndarray:
    """A soft prediction [H, W] in [0, 1]: the label map blurred by a Gaussian of std `sigma` pixels.

    sigma = 0 returns the labels themselves (a perfect prediction).
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    labels = np.asarray(labels, dtype=np.float64)
    if sigma == 0:
        return labels.copy()
    kernel = 2 * math.ceil(3 * sigma) + 1
    if kernel // 2 >= min(labels.shape):
        raise ValueError(f"sigma={sigma} needs a {kernel}-pixel kernel, too large for a map of shape "
                         f"{labels.shape}")
    out = TF.gaussian_blur(torch.from_numpy(labels)[None], [kernel, kernel], [sigma, sigma])[0]
    return out.numpy().clip(0.0, 1.0)


def noisy_prediction(labels: np.ndarray, alpha: float, seed: int = 0) -> np.ndarray:
    """A soft prediction [H, W]: alpha * labels + (1 - alpha) * uniform noise (noise drawn from `seed`).

    alpha = 0 is pure noise (no information about the labels), alpha = 1 the labels themselves.
    """
    if not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    labels = np.asarray(labels, dtype=np.float64)
    noise = np.random.default_rng(seed).random(labels.shape)
    return alpha * labels + (1 - alpha) * noise


def rmi_versus_blur(labels: np.ndarray, sigmas, radius: int = 3) -> np.ndarray:
    """`rmi_bound_bits` (bits) of `blurred_prediction(labels, s)` for each s in sigmas: [len(sigmas)]."""
    return np.array([it.rmi_bound_bits(labels, blurred_prediction(labels, float(s)), radius)
                     for s in sigmas])


def rmi_versus_mixing(labels: np.ndarray, alphas, radius: int = 3, seed: int = 0) -> np.ndarray:
    """`rmi_bound_bits` (bits) of `noisy_prediction(labels, a, seed)` for each a in alphas: [len(alphas)].

    The same noise for every alpha, so the curve shows only the effect of alpha.
    """
    return np.array([it.rmi_bound_bits(labels, noisy_prediction(labels, float(a), seed), radius)
                     for a in alphas])


# ----------------------------------------------------------------------------- figures


def plot_coin(p: float = 0.3) -> Figure:
    """Entropy of a biased coin against its bias, and the self-information of heads and tails at bias p."""
    if not (0 < p < 1):
        raise ValueError(f"p must lie strictly between 0 and 1, got {p!r}")
    grid = np.linspace(0, 1, 501)
    h = it.binary_entropy(p)
    info = it.self_information(np.array([p, 1 - p]))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax0.plot(grid, it.binary_entropy(grid), color="tab:blue")
    ax0.plot([p], [h], "o", color="tab:red")
    ax0.set(xlabel="P(heads)", ylabel="H (bits)", title=f"Coin entropy: H({p:.2f}) = {h:.3f} bits",
            ylim=(0, 1.05))
    ax1.bar(["heads", "tails"], info, color=["tab:orange", "tab:green"])
    ax1.axhline(h, color="tab:red", ls="--", label=f"H = expected information = {h:.3f}")
    ax1.set(ylabel="self-information -log2 p (bits)", ylim=(0, 1.25 * info.max()),
            title=f"I(heads) = {info[0]:.2f}, I(tails) = {info[1]:.2f} bits")
    ax1.legend(loc="upper center")
    fig.tight_layout()
    return fig


def plot_die(distributions: dict[str, np.ndarray]) -> Figure:
    """Grouped bars of die distributions [6] each, with their entropies; the fair die's log2 6 is the maximum."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(distributions)
    faces = np.arange(1, 7)
    for i, (name, p) in enumerate(distributions.items()):
        ax.bar(faces + (i - (len(distributions) - 1) / 2) * width, p, width,
               label=f"{name}: H = {it.entropy(p):.3f} bits")
    ax.set(xlabel="face", ylabel="probability", xticks=faces,
           title=f"Die entropy (maximum log2 6 = {math.log2(6):.3f} bits, uniform)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_joint(pxy: np.ndarray, x_labels: list[str], y_labels: list[str], x_name: str = "X",
               y_name: str = "Y") -> Figure:
    """A joint distribution [|X|, |Y|] as an annotated table beside bars of its entropies and MI."""
    pxy = np.asarray(pxy, dtype=np.float64)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    ax0.imshow(pxy, cmap="Blues", vmin=0)
    for (i, j), v in np.ndenumerate(pxy):
        ax0.text(j, i, f"{v:.2f}", ha="center", va="center")
    ax0.set(xticks=range(len(y_labels)), xticklabels=y_labels, yticks=range(len(x_labels)),
            yticklabels=x_labels, xlabel=y_name, ylabel=x_name, title=f"p({x_name}, {y_name})")
    px, py = it.marginals(pxy)
    values = {
        f"H({x_name})": it.entropy(px), f"H({y_name})": it.entropy(py),
        f"H({x_name},{y_name})": it.joint_entropy(pxy),
        f"H({x_name}|{y_name})": it.conditional_entropy(pxy),
        f"H({y_name}|{x_name})": it.conditional_entropy(pxy.T),
        f"I({x_name};{y_name})": it.mutual_information(pxy),
    }
    bars = ax1.bar(list(values), list(values.values()),
                   color=["tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive", "tab:red"])
    ax1.bar_label(bars, fmt="%.3f")
    ax1.set(ylabel="bits", title="Entropies and mutual information")
    ax1.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


def plot_gaussian_joint(rho: float = 0.6, bins: int = 41, limit: float = 4.0) -> Figure:
    """A discretised bivariate normal with correlation rho, and its MI against rho beside -½ log2(1 - rho²)."""
    pxy = discretized_gaussian_joint(rho, bins, limit)
    mi = it.mutual_information(pxy)
    rhos = np.linspace(-0.95, 0.95, 39)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    ax0.imshow(pxy, cmap="viridis", origin="lower", extent=(-limit, limit, -limit, limit))
    ax0.set(xlabel="Y", ylabel="X", title=f"p(x, y), rho = {rho:.2f}: I = {mi:.3f} bits")
    fine = np.linspace(-0.99, 0.99, 397)
    ax1.plot(fine, -0.5 * np.log2(1 - fine ** 2), color="tab:blue", label="Gaussian: -½ log2(1 - rho²)")
    ax1.plot(rhos, [it.mutual_information(discretized_gaussian_joint(r, bins, limit)) for r in rhos], ".",
             color="tab:orange", label=f"discrete MI on a {bins}x{bins} grid")
    ax1.plot([rho], [mi], "o", color="tab:red")
    ax1.set(xlabel="correlation rho", ylabel="I(X;Y) (bits)", title="Mutual information grows with |rho|",
            ylim=(0, 2.2))
    ax1.legend(loc="upper center")
    fig.tight_layout()
    return fig


def plot_kl(p: np.ndarray, q: np.ndarray) -> Figure:
    """Two distributions [k] side by side, and the per-outcome terms of D(P||Q) and D(Q||P)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    d_pq, d_qp = it.kl_divergence(p, q), it.kl_divergence(q, p)
    x = np.arange(len(p))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax0.bar(x - 0.2, p, 0.4, label="P")
    ax0.bar(x + 0.2, q, 0.4, label="Q")
    ax0.set(xlabel="outcome", ylabel="probability", xticks=x, title="Two distributions")
    ax0.legend()
    with np.errstate(divide="ignore", invalid="ignore"):
        ax1.bar(x - 0.2, np.where(p > 0, p * np.log2(p / q), 0.0), 0.4, label=f"p log2(p/q): D(P||Q) = {d_pq:.3f}")
        ax1.bar(x + 0.2, np.where(q > 0, q * np.log2(q / p), 0.0), 0.4, label=f"q log2(q/p): D(Q||P) = {d_qp:.3f}")
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set(xlabel="outcome", ylabel="bits", xticks=x, title="KL terms per outcome: the sums differ")
    ax1.legend()
    fig.tight_layout()
    return fig


def plot_rmi_maps(labels: np.ndarray, predictions: dict[str, np.ndarray], radius: int = 3) -> Figure:
    """The label map and soft predictions [H, W] side by side, each titled with its RMI lower bound."""
    fig, axes = plt.subplots(1, len(predictions) + 1, figsize=(3 * (len(predictions) + 1), 3.3))
    axes[0].imshow(labels, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("labels Y")
    for ax, (name, probs) in zip(axes[1:], predictions.items()):
        ax.imshow(probs, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}\nRMI bound {it.rmi_bound_bits(labels, probs, radius):.2f} bits")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_rmi_growth(sigmas, bound_blur, alphas, bound_mix, perfect: float) -> Figure:
    """The RMI lower bound (bits, up to a constant) against blur sigma and against the truth fraction alpha."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    ax0.plot(sigmas, bound_blur, "o-")
    ax0.invert_xaxis()  # structure increases to the right
    ax0.set(xlabel="blur sigma (pixels), decreasing", ylabel="-½ log2 det(Σ_Y|P + εI) (bits)",
            title="Sharper prediction, larger bound")
    ax1.plot(alphas, bound_mix, "o-", color="tab:green")
    ax1.set(xlabel="alpha: prediction = alpha·truth + (1-alpha)·noise", title="More truth, larger bound")
    for ax in (ax0, ax1):
        ax.axhline(perfect, color="tab:red", ls="--", label="perfect prediction")
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- widgets


WIDGETS_ENV = "MISTUDY_WIDGETS"  # "off": the *_widget functions return None (headless runs)


def _interactive(draw, **sliders) -> widgets.interactive | None:
    """``ipywidgets.interactive(draw, **sliders)``, or None where env MISTUDY_WIDGETS is "off"."""
    if os.environ.get(WIDGETS_ENV) == "off":
        return None
    return widgets.interactive(draw, **sliders)


def coin_widget() -> widgets.interactive | None:
    """Slider for the coin's bias, redrawing `plot_coin`."""
    slider = widgets.FloatSlider(value=0.3, min=0.01, max=0.99, step=0.01, description="P(heads)",
                                 continuous_update=False)
    return _interactive(lambda p: _draw(plot_coin, p), p=slider)


def gaussian_joint_widget() -> widgets.interactive | None:
    """Slider for the correlation of a discretised bivariate normal, redrawing `plot_gaussian_joint`."""
    slider = widgets.FloatSlider(value=0.6, min=-0.95, max=0.95, step=0.05, description="rho",
                                 continuous_update=False)
    return _interactive(lambda rho: _draw(plot_gaussian_joint, rho), rho=slider)


def kl_widget(k: int = 8) -> widgets.interactive | None:
    """Sliders for the centre and width of two bumps P and Q over k outcomes, redrawing `plot_kl`."""
    def slider(value, lo, hi, label):
        return widgets.FloatSlider(value=value, min=lo, max=hi, step=0.1, description=label,
                                   continuous_update=False)

    def draw(p_mean, p_width, q_mean, q_width):
        _draw(plot_kl, discrete_bump(k, p_mean, p_width), discrete_bump(k, q_mean, q_width))

    return _interactive(draw, p_mean=slider(2.0, 0, k - 1, "P centre"),
                               p_width=slider(1.0, 0.5, 3, "P width"),
                               q_mean=slider(4.0, 0, k - 1, "Q centre"),
                               q_width=slider(2.0, 0.5, 3, "Q width"))


def _draw(plot, *args) -> None:
    """Draw a figure into the widget's output area: displayed explicitly, then closed.

    ipywidgets' `interactive` shows pyplot figures only under the backend's full module name
    ("module://matplotlib_inline.backend_inline"); after ``%matplotlib inline`` matplotlib reports the alias
    "inline", and a figure left to the backend was never shown: the sliders moved and nothing redrew.  Returning
    nothing keeps `interactive` from displaying the figure a second time.
    """
    from IPython.display import display

    fig = plot(*args)
    display(fig)
    plt.close(fig)
