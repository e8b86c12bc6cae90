"""mistudy.methods.infotheory and mistudy.report.theory_plots: cross-checked against scipy, scikit-learn and hand-derived cases."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.ndimage  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import mutual_info_score  # noqa: E402
from sklearn.metrics.cluster import contingency_matrix  # noqa: E402

from mistudy.methods import infotheory as it  # noqa: E402
from mistudy.report import theory_plots as tp  # noqa: E402

BASES = [2, math.e, 10, 3.5]


def random_distribution(rng, shape, zeros=0):
    p = rng.random(shape)
    if zeros:
        p.ravel()[rng.choice(p.size, zeros, replace=False)] = 0.0
    return p / p.sum()



# ----------------------------------------------------------------------------- against scipy / sklearn

@pytest.mark.parametrize("base", BASES)
def test_entropy_matches_scipy(base):
    rng = np.random.default_rng(0)
    for k, zeros in [(2, 0), (7, 2), (50, 10)]:
        p = random_distribution(rng, k, zeros)
        assert it.entropy(p, base=base) == pytest.approx(scipy.stats.entropy(p, base=base), rel=1e-12)


@pytest.mark.parametrize("base", BASES)
def test_kl_matches_scipy(base):
    rng = np.random.default_rng(1)
    for k in (2, 5, 30):
        p, q = random_distribution(rng, k, zeros=1), random_distribution(rng, k)
        assert it.kl_divergence(p, q, base=base) == pytest.approx(scipy.stats.entropy(p, q, base=base), rel=1e-12)


def test_joint_entropy_matches_scipy_on_flattened_joint():
    pxy = random_distribution(np.random.default_rng(2), (4, 6), zeros=3)
    assert it.joint_entropy(pxy) == pytest.approx(scipy.stats.entropy(pxy.ravel(), base=2), rel=1e-12)


def test_mutual_information_matches_sklearn_on_label_samples():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=2000)
    y = np.where(rng.random(2000) < 0.6, x, rng.integers(0, 4, size=2000))  # y depends on x
    pxy = it.joint_distribution(x, y)
    # sklearn reports nats
    assert it.mutual_information(pxy, base=math.e) == pytest.approx(mutual_info_score(x, y), rel=1e-10)
    assert it.mutual_information(pxy) == pytest.approx(mutual_info_score(x, y) / math.log(2), rel=1e-10)
    np.testing.assert_allclose(pxy, contingency_matrix(x, y) / x.size)


def test_joint_distribution_rows_are_sorted_values_of_x():
    pxy = it.joint_distribution([7, 3, 3, 7], [1, 1, 2, 2])
    np.testing.assert_allclose(pxy, [[0.25, 0.25], [0.25, 0.25]])
    pxy = it.joint_distribution([10, 10, 10, 2], [0, 5, 5, 5])
    np.testing.assert_allclose(pxy, [[0.0, 0.25], [0.25, 0.5]])   # row 0 is x = 2, column 0 is y = 0


# ----------------------------------------------------------------------------- hand-derived cases

def test_hand_derived_entropies():
    assert it.entropy([0.5, 0.5]) == 1.0
    assert it.entropy(np.full(6, 1 / 6)) == pytest.approx(math.log2(6), rel=1e-14)
    assert it.entropy([0.0, 1.0, 0.0]) == 0.0
    assert it.entropy([0.5, 0.25, 0.25]) == pytest.approx(1.5)
    assert it.entropy(np.full(8, 1 / 8), base=8) == pytest.approx(1.0)
    assert it.entropy([0.5, 0.5], base=math.e) == pytest.approx(math.log(2))


def test_self_information_hand_cases_and_kinds():
    assert it.self_information(0.5) == 1.0
    assert it.self_information(1.0) == 0.0 and math.copysign(1, it.self_information(1.0)) == 1
    assert it.self_information(0.0) == math.inf
    assert isinstance(it.self_information(np.float32(0.125)), float)
    out = it.self_information(np.array([1 / 8, 1 / 4, 1.0]))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [3.0, 2.0, 0.0])
    np.testing.assert_allclose(it.self_information([1 / 27], base=3), [3.0])
    # additivity of independent events (axiom 3)
    assert it.self_information(0.3 * 0.6) == pytest.approx(it.self_information(0.3) + it.self_information(0.6))
    t = torch.tensor([0.5, 0.25], dtype=torch.float32)
    out = it.self_information(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device == t.device
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0]))
    assert it.self_information(torch.tensor([1, 0])).dtype == torch.float64


def test_binary_entropy():
    assert it.binary_entropy(0.5) == 1.0
    assert it.binary_entropy(0.0) == 0.0 and it.binary_entropy(1.0) == 0.0
    grid = np.linspace(0, 1, 101)
    h = it.binary_entropy(grid)
    np.testing.assert_allclose(h, h[::-1], atol=1e-15)  # symmetric in p <-> 1-p
    assert grid[np.argmax(h)] == 0.5
    expected = [scipy.stats.entropy([p, 1 - p], base=2) for p in grid]
    np.testing.assert_allclose(h, expected, atol=1e-14)
    out = it.binary_entropy(torch.tensor([0.11, 0.5], dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert out[0].item() == pytest.approx(0.4999, abs=1e-3)


def test_independent_joint_has_zero_mi_and_identical_variables_have_mi_equal_to_entropy():
    rng = np.random.default_rng(4)
    px, py = random_distribution(rng, 4), random_distribution(rng, 6)
    independent = np.outer(px, py)
    assert abs(it.mutual_information(independent)) < 1e-14
    assert it.conditional_entropy(independent) == pytest.approx(it.entropy(px), rel=1e-12)
    assert it.joint_entropy(independent) == pytest.approx(it.entropy(px) + it.entropy(py), rel=1e-12)
    identical = np.diag(px)   # X = Y
    assert it.mutual_information(identical) == pytest.approx(it.entropy(px), rel=1e-12)
    assert it.conditional_entropy(identical) == 0.0


def test_correlated_bits_hand_formula():
    # P(X=Y) = (1+rho)/2 for two fair bits: I = 1 - H_b((1+rho)/2)
    for rho in (-0.8, 0.0, 0.3, 0.9):
        pxy = np.array([[1 + rho, 1 - rho], [1 - rho, 1 + rho]]) / 4
        assert it.mutual_information(pxy) == pytest.approx(1 - it.binary_entropy((1 + rho) / 2), abs=1e-14)


def test_conditional_entropy_orientation_rows_given_columns():
    # Y uniform on 4 values (columns), X = Y mod 2 (rows): X is known from Y, not Y from X.
    pxy = np.zeros((2, 4))
    for y in range(4):
        pxy[y % 2, y] = 0.25
    assert it.conditional_entropy(pxy) == 0.0        # H(X | Y)
    assert it.conditional_entropy(pxy.T) == pytest.approx(1.0)   # H(Y | X)
    assert it.mutual_information(pxy) == pytest.approx(1.0)


def test_conditional_entropy_matches_eq4_loop():
    pxy = random_distribution(np.random.default_rng(5), (3, 5), zeros=4)
    expected = 0.0
    for y in range(5):
        p_y = pxy[:, y].sum()
        if p_y > 0:
            cond = pxy[:, y] / p_y
            expected += p_y * scipy.stats.entropy(cond, base=2)
    assert it.conditional_entropy(pxy) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape,zeros", [((2, 2), 0), ((3, 7), 5), ((10, 4), 12), ((1, 5), 0)])
@pytest.mark.parametrize("base", [2, math.e])
def test_identities_6_and_7_and_chain_rule(shape, zeros, base):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        pxy = random_distribution(rng, shape, zeros)
        px, py = it.marginals(pxy)
        mi = it.mutual_information(pxy, base)
        hx, hy = it.entropy(px, base), it.entropy(py, base)
        assert mi == pytest.approx(hx - it.conditional_entropy(pxy, base), abs=1e-12)           # (6)
        assert mi == pytest.approx(hx + hy - it.joint_entropy(pxy, base), abs=1e-12)             # (7)
        assert mi == pytest.approx(hy - it.conditional_entropy(pxy.T, base), abs=1e-12)          # symmetry
        assert it.joint_entropy(pxy, base) == pytest.approx(hy + it.conditional_entropy(pxy, base), abs=1e-12)
        assert mi >= -1e-12


def test_kl_asymmetry_hand_values_and_properties():
    p, q = [0.5, 0.5], [0.25, 0.75]
    assert it.kl_divergence(p, q) == pytest.approx(1 - 0.5 * math.log2(3), abs=1e-14)
    assert it.kl_divergence(q, p) == pytest.approx(-0.25 + 0.75 * math.log2(1.5), abs=1e-14)
    assert it.kl_divergence(p, q) != pytest.approx(it.kl_divergence(q, p), abs=1e-3)
    assert it.kl_divergence(q, q) == 0.0
    # p = 0 where q > 0 is fine: 0 log 0 = 0
    assert it.kl_divergence([0.0, 1.0], [0.5, 0.5]) == pytest.approx(1.0)
    # MI is the KL from the product of marginals to the joint
    pxy = random_distribution(np.random.default_rng(6), (3, 4))
    px, py = it.marginals(pxy)
    assert it.mutual_information(pxy) == pytest.approx(it.kl_divergence(pxy, np.outer(px, py)), rel=1e-12)


def test_torch_and_numpy_inputs_agree():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    pxy32 = torch.softmax(logits.flatten(), 0).reshape(3, 4)  # float32, sums to 1 only to float32 precision
    pxy64 = pxy32.double().numpy()
    for fn in (it.joint_entropy, it.conditional_entropy, it.mutual_information):
        value = fn(pxy32)
        assert isinstance(value, float)
        assert value == pytest.approx(fn(pxy64 / pxy64.sum()), rel=1e-6)
    px, py = it.marginals(pxy32)
    assert isinstance(px, torch.Tensor) and px.shape == (3,) and py.shape == (4,) and px.dtype == torch.float32
    px_np, py_np = it.marginals(pxy64)
    assert isinstance(px_np, np.ndarray)
    np.testing.assert_allclose(px_np, pxy64.sum(1))
    assert it.kl_divergence(torch.tensor([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(1 - 0.5 * math.log2(3))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,message", [
    (lambda: it.entropy([0.5, -0.1, 0.6]), r"p has entries negative, first p\[1\] = -0.1"),
    (lambda: it.entropy([0.5, 0.6]), r"p sums to 1.1, not 1"),
    (lambda: it.entropy([0.2, 0.2]), r"sums to 0.4"),
    (lambda: it.entropy([0.5, float("nan"), 0.5]), r"p has non-finite values .* index \(1,\)"),
    (lambda: it.entropy([0.5, float("inf")]), r"non-finite"),
    (lambda: it.entropy([]), r"p is empty"),
    (lambda: it.entropy(["a", "b"]), r"p must be numeric"),
    (lambda: it.entropy([0.5, 0.5], base=1), r"base must be .* got 1"),
    (lambda: it.entropy([0.5, 0.5], base=0), r"base must be"),
    (lambda: it.entropy([0.5, 0.5], base=-2), r"base must be"),
    (lambda: it.entropy([0.5, 0.5], base=float("nan")), r"base must be"),
    (lambda: it.entropy([0.5, 0.5], base=True), r"base must be"),
    (lambda: it.joint_entropy([0.5, 0.5]), r"pxy must be a 2-D array, got shape \(2,\)"),
    (lambda: it.conditional_entropy(np.full((2, 2), 0.3)), r"pxy sums to 1.2"),
    (lambda: it.mutual_information([[0.5, 0.5, -0.2], [0.1, 0.1, 0.0]]), r"negative, first pxy\[0, 2\]"),
    (lambda: it.marginals(np.ones((2, 2, 2)) / 8), r"2-D"),
    (lambda: it.kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5]), r"p \(2,\) and q \(3,\)"),
    (lambda: it.kl_divergence([0.2, 0.3, 0.5], [0.5, 0.5, 0.0]), r"q is 0 where p > 0 at index \[\(2,\)\]"),
    (lambda: it.kl_divergence([0.5, 0.5], [1.5, -0.5]), r"q has entries negative"),
    (lambda: it.self_information([0.5, 1.5]), r"greater than 1, first p\[1\] = 1.5"),
    (lambda: it.self_information(-0.1), r"negative"),
    (lambda: it.binary_entropy(2.0), r"greater than 1"),
    (lambda: it.joint_distribution([1, 2, 3], [1, 2]), r"x \(3,\) and y \(2,\)"),
])
def test_bad_input_raises_value_error_saying_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_float32_tolerance_does_not_accept_wrong_sums():
    with pytest.raises(ValueError, match="sums to"):
        it.entropy(torch.tensor([0.5, 0.4999], dtype=torch.float32))


# ----------------------------------------------------------------------------- Gaussian bridge

@pytest.mark.parametrize("rho", [-0.9, -0.3, 0.0, 0.5, 0.99])
def test_gaussian_mi_bivariate_closed_form(rho):
    cov = np.array([[2.0, rho * math.sqrt(2 * 0.5)], [rho * math.sqrt(2 * 0.5), 0.5]])  # variances 2 and 0.5
    assert it.gaussian_mutual_information(cov, 1) == pytest.approx(-0.5 * math.log2(1 - rho ** 2), abs=1e-12)
    assert it.gaussian_mutual_information(cov, 1, base=math.e) == pytest.approx(-0.5 * math.log(1 - rho ** 2),
                                                                                 abs=1e-12)


def test_gaussian_mi_matches_scipy_differential_entropies():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + 0.5 * np.eye(5)
    h = lambda c: scipy.stats.multivariate_normal(cov=c).entropy()  # noqa: E731  nats
    expected = h(cov[:2, :2]) + h(cov[2:, 2:]) - h(cov)
    assert it.gaussian_mutual_information(cov, 2, base=math.e) == pytest.approx(expected, rel=1e-10)
    # independent blocks: zero; sum of independent pairs: sum of MIs
    block = np.zeros((5, 5))
    block[:2, :2], block[2:, 2:] = cov[:2, :2], cov[2:, 2:]
    assert abs(it.gaussian_mutual_information(block, 2)) < 1e-12
    pairs = np.array([[1, 0, 0.6, 0], [0, 1, 0, -0.3], [0.6, 0, 1, 0], [0, -0.3, 0, 1]])
    assert it.gaussian_mutual_information(pairs, 2) == pytest.approx(
        -0.5 * math.log2(1 - 0.36) - 0.5 * math.log2(1 - 0.09), abs=1e-12)


@pytest.mark.parametrize("cov,dx,message", [
    (np.eye(3), 0, r"dx must be an integer in \[1, 2\]"),
    (np.eye(3), 3, r"dx must be"),
    (np.eye(3), 1.0, r"dx must be"),
    (np.ones((2, 3)), 1, r"square 2-D matrix, got shape \(2, 3\)"),
    (np.array([[1.0, 0.5], [0.4, 1.0]]), 1, r"not symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), 1, r"cov_joint is not positive definite"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), 1, r"non-finite"),
])
def test_gaussian_mi_bad_input(cov, dx, message):
    with pytest.raises(ValueError, match=message):
        it.gaussian_mutual_information(cov, dx)


def test_neighbourhood_vectors_match_torch_unfold():
    x = np.random.default_rng(8).random((6, 9))
    for radius in (1, 2, 3):
        ours = it.neighbourhood_vectors(x, radius)
        ref = torch.nn.functional.unfold(torch.from_numpy(x)[None, None], radius)[0].numpy()
        assert ours.shape == (radius * radius, (6 - radius + 1) * (9 - radius + 1))
        np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match=r"radius must be an integer in \[1, 6\]"):
        it.neighbourhood_vectors(x, 7)
    with pytest.raises(ValueError, match=r"2-D map"):
        it.neighbourhood_vectors(x[None], 2)


def test_rmi_lower_bound_radius_1_is_scalar_regression_formula():
    rng = np.random.default_rng(9)
    labels = (rng.random((10, 12)) < 0.4).astype(float)
    probs = np.clip(0.6 * labels + 0.4 * rng.random((10, 12)), 0, 1)
    y, p = labels.ravel(), probs.ravel()
    c = np.cov(y, p, bias=True)
    eps = 5e-4
    posterior = c[0, 0] - c[0, 1] ** 2 / (c[1, 1] + eps)
    assert it.rmi_bound_bits(labels, probs, radius=1, eps=eps) == pytest.approx(
        -0.5 * math.log2(posterior + eps), rel=1e-12)


def test_rmi_lower_bound_plus_label_term_is_gaussian_mi_of_region_vectors():
    # With eps = 0: -½ log det Σ_Y|P + ½ log det Σ_Y = ½ log det Σ_Y det Σ_P / det Σ (Schur complement).
    labels = tp.toy_label_map(24)
    probs = tp.noisy_prediction(tp.blurred_prediction(labels, 1.5), 0.7, seed=1)
    radius = 2
    y = torch.nn.functional.unfold(torch.from_numpy(labels)[None, None], radius)[0].numpy()
    p = torch.nn.functional.unfold(torch.from_numpy(probs)[None, None], radius)[0].numpy()
    joint_cov = np.cov(np.vstack([y, p]), bias=True)
    label_term = 0.5 * np.linalg.slogdet(joint_cov[:4, :4])[1] / math.log(2)
    bound = it.rmi_bound_bits(labels, probs, radius=radius, eps=0.0)
    assert bound + label_term == pytest.approx(it.gaussian_mutual_information(joint_cov, 4), rel=1e-9)


def test_rmi_lower_bound_orders_predictions_and_is_invariant_to_flipping_both_maps():
    labels = tp.toy_label_map(32)
    noise = tp.noisy_prediction(labels, 0.0, seed=0)
    blurred = tp.blurred_prediction(labels, 2.0)
    b_noise, b_blur, b_true = (it.rmi_bound_bits(labels, q) for q in (noise, blurred, labels))
    assert b_noise < b_blur < b_true
    assert it.rmi_bound_bits(1 - labels, 1 - blurred) == pytest.approx(b_blur, rel=1e-10)
    torch_bound = it.rmi_bound_bits(torch.from_numpy(labels).float(), torch.from_numpy(blurred).float())
    assert torch_bound == pytest.approx(b_blur, rel=1e-4)


@pytest.mark.parametrize("labels,probs,kwargs,message", [
    (np.zeros((5, 5)), np.zeros((5, 6)), {}, r"labels \(5, 5\) and probs \(5, 6\)"),
    (np.full((5, 5), 2.0), np.zeros((5, 5)), {}, r"binary 0/1 map"),
    (np.zeros((5, 5)), np.full((5, 5), 1.2), {}, r"probs has entries greater than 1"),
    (np.zeros((5, 5)), np.zeros((5, 5)), {"eps": -1.0}, r"eps must be a finite number >= 0"),
    (np.zeros((5, 5)), np.zeros((5, 5)), {"radius": 6}, r"radius must be"),
    (np.zeros((5, 5)), np.zeros((5, 5)), {"eps": 0.0}, r"singular|not positive definite"),
])
def test_rmi_lower_bound_bad_input(labels, probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        it.rmi_bound_bits(labels, probs, **kwargs)


# ----------------------------------------------------------------------------- theory_plots demo inputs

def test_discrete_bump():
    p = tp.discrete_bump(8, 2.0, 1.0)
    assert p.sum() == pytest.approx(1.0) and (p > 0).all() and np.argmax(p) == 2
    np.testing.assert_allclose(tp.discrete_bump(5, 2.0, 0.7), tp.discrete_bump(5, 2.0, 0.7)[::-1])
    with pytest.raises(ValueError, match="width"):
        tp.discrete_bump(5, 2.0, 0.0)


def test_discretized_gaussian_joint_mi_tends_to_closed_form():
    assert abs(it.mutual_information(tp.discretized_gaussian_joint(0.0))) < 1e-12
    for rho in (0.5, -0.8):
        pxy = tp.discretized_gaussian_joint(rho, bins=81, limit=5.0)
        assert it.mutual_information(pxy) == pytest.approx(-0.5 * math.log2(1 - rho ** 2), abs=2e-3)
    pxy = tp.discretized_gaussian_joint(0.6)
    np.testing.assert_allclose(pxy, pxy.T)
    assert pxy[-1, -1] > pxy[-1, 0]   # positive correlation: large x with large y
    with pytest.raises(ValueError, match="rho must lie strictly between -1 and 1"):
        tp.discretized_gaussian_joint(1.0)


def test_blurred_prediction_matches_scipy_gaussian_filter():
    labels = tp.toy_label_map(40)
    np.testing.assert_array_equal(tp.blurred_prediction(labels, 0), labels)
    for sigma in (0.8, 2.0):
        radius = math.ceil(3 * sigma)
        # torch "reflect" padding is scipy's "mirror"
        ref = scipy.ndimage.gaussian_filter(labels, sigma, mode="mirror", truncate=radius / sigma)
        np.testing.assert_allclose(tp.blurred_prediction(labels, sigma), ref, atol=1e-6)
    with pytest.raises(ValueError, match="too large"):
        tp.blurred_prediction(labels, 20.0)


def test_noisy_prediction_and_toy_map():
    labels = tp.toy_label_map(32)
    assert set(np.unique(labels)) == {0.0, 1.0} and 0.2 < labels.mean() < 0.6
    np.testing.assert_array_equal(tp.noisy_prediction(labels, 1.0), labels)
    np.testing.assert_array_equal(tp.noisy_prediction(labels, 0.3, seed=4), tp.noisy_prediction(labels, 0.3, seed=4))
    pure = tp.noisy_prediction(labels, 0.0, seed=4)
    assert abs(np.corrcoef(pure.ravel(), labels.ravel())[0, 1]) < 0.1
    with pytest.raises(ValueError, match="alpha"):
        tp.noisy_prediction(labels, 1.5)


def test_rmi_grows_with_structure():
    labels = tp.toy_label_map(32)
    by_blur = tp.rmi_versus_blur(labels, [6, 3, 1.5, 0.7, 0])
    by_mix = tp.rmi_versus_mixing(labels, [0, 0.25, 0.5, 0.75, 1])
    assert np.all(np.diff(by_blur) > 0) and np.all(np.diff(by_mix) > 0)
    assert by_blur[-1] == pytest.approx(by_mix[-1])   # both end at the perfect prediction


# ----------------------------------------------------------------------------- figures and widgets

def test_plot_functions_draw_the_numbers():
    fig = tp.plot_coin(0.5)
    assert "1.000 bits" in fig.axes[0].get_title()
    x, y = fig.axes[0].lines[0].get_data()
    assert y.max() == pytest.approx(1.0) and x[np.argmax(y)] == pytest.approx(0.5)
    fig = tp.plot_die({"fair": np.full(6, 1 / 6), "loaded": [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "fair: H = 2.585 bits"
    pxy = np.array([[0.25, 0.25], [0.0, 0.5]])
    fig = tp.plot_joint(pxy, ["a", "b"], ["c", "d"])
    heights = [b.get_height() for b in fig.axes[1].patches]
    assert heights[-1] == pytest.approx(it.mutual_information(pxy))
    fig = tp.plot_gaussian_joint(0.6)
    assert "rho = 0.60" in fig.axes[0].get_title()
    fig = tp.plot_kl([0.5, 0.5], [0.25, 0.75])
    legend = " ".join(t.get_text() for t in fig.axes[1].get_legend().get_texts())
    assert "D(P||Q) = 0.208" in legend and "D(Q||P) = 0.189" in legend
    labels_map = tp.toy_label_map(24)
    fig = tp.plot_rmi_maps(labels_map, {"blurred": tp.blurred_prediction(labels_map, 1.0)})
    assert len(fig.axes) == 2 and "RMI bound" in fig.axes[1].get_title()
    fig = tp.plot_rmi_growth([2, 1, 0], [1, 2, 3], [0, 1], [1, 3], 3.0)
    assert fig.axes[0].xaxis_inverted()
    with pytest.raises(ValueError, match="p must lie strictly between 0 and 1"):
        tp.plot_coin(1.0)


def test_widgets_have_sliders_and_redraw(monkeypatch):
    """Each slider move displays a new figure into the widget's output (explicitly: the backend's own flush never
    runs under ``%matplotlib inline``, so a figure left to it is not shown) and closes it."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda fig: shown.append(fig))
    w = tp.coin_widget()
    assert w.kwargs == {"p": 0.3}
    w.children[0].value = 0.5
    assert w.kwargs == {"p": 0.5}
    assert "H(0.50) = 1.000 bits" in shown[-1].axes[0].get_title()
    assert not plt.fignum_exists(shown[-1].number), "closed after display: shown once"
    w = tp.gaussian_joint_widget()
    w.children[0].value = -0.5
    assert "rho = -0.50" in shown[-1].axes[0].get_title()
    w = tp.kl_widget()
    assert set(w.kwargs) == {"p_mean", "p_width", "q_mean", "q_width"}
    w.children[2].value = 2.0   # Q centre onto P's centre
    w.children[3].value = 1.0   # and Q width equal to P's: identical distributions
    legend = " ".join(t.get_text() for t in shown[-1].axes[1].get_legend().get_texts())
    assert "D(P||Q) = 0.000" in legend


def test_widgets_are_not_built_in_the_study_s_headless_runs(monkeypatch):
    monkeypatch.setenv(tp.WIDGETS_ENV, "off")
    assert tp.coin_widget() is None and tp.gaussian_joint_widget() is None and tp.kl_widget() is None
    monkeypatch.setenv(tp.WIDGETS_ENV, "on")
    assert tp.coin_widget().kwargs == {"p": 0.3}


# ----------------------------------------------------------------------------- notebook 01 as committed

def test_notebook_01_is_clean_and_keeps_reference_outputs_for_checked_cells():
    path = Path(__file__).resolve().parents[1] / "notebooks" / "01_information_theory.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {"name": "mistudy", "display_name": "Python (mistudy)", "language": "python"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    checked = [c for c in code if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 4
    for cell in code:
        if cell in checked:
            # nbval compares only cells that carry a reference output and an execution count
            assert cell.execution_count is not None
            assert [o.output_type for o in cell.outputs] == ["stream"], cell.source[:60]
        else:
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_distributions_accept_their_own_rounding_but_not_wrong_values():
    marginal = np.array([1.0000000000000002, 0.0, 0.0])
    assert it.entropy(marginal) == 0.0
    assert it.entropy([0.5 + 1e-13, 0.5 - 1e-13]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="greater than 1"):
        it.entropy([1.01, 0.0])
    with pytest.raises(ValueError, match="negative"):
        it.entropy([1.1, -0.1])
    p = np.array([1.0000000000000002, 0.0])
    it.entropy(p)
    assert p[0] == 1.0000000000000002  # the caller's array is never changed
