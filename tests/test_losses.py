"""mistudy.methods.losses: cross-checked against the straightforward RMI formula (tests/rmi_reference.py),
explicit loops, hand-derived special cases, scipy and torch.autograd.gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import count_calls
from rmi_reference import rmi_loss_reference
from scipy.special import expit, log_softmax, rel_entr, softmax

from mistudy.methods import losses
from mistudy.methods.losses import RMILoss, cross_entropy_loss, mutual_kl, region_covariance, rmi_loss_term

IGNORE = 255


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to other processes' load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(n, c, h, w, seed=0, confident=0.0, ignore_frac=0.1):
    """Random logits and targets; `confident` > 0 pushes logits towards the labels (the trained
    regime, where the covariance algebra cancels most), some pixels set to IGNORE."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, h, w), generator=g)
    logits = torch.randn(n, c, h, w, generator=g)
    if confident:
        onehot = F.one_hot(target, c).permute(0, 3, 1, 2).float()
        logits = logits + confident * (2 * onehot - 1)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = IGNORE
    return logits, target


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a tensor-wide relative difference, robust to tiny entries)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# --------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_ignores_255_and_matches_explicit_formula():
    logits, target = make_batch(2, 5, 6, 7, seed=1, ignore_frac=0.3)
    loss = cross_entropy_loss()(logits, target)

    lp = log_softmax(logits.double().numpy(), axis=1)
    t = target.numpy()
    terms = [-lp[i, t[i, y, x], y, x] for i, y, x in np.ndindex(t.shape) if t[i, y, x] != IGNORE]
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-6)
    torch_ce = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    assert loss.item() == pytest.approx(torch_ce.item(), rel=1e-6)
    # masks often arrive as uint8 (255 = void)
    assert cross_entropy_loss()(logits, target.to(torch.uint8)).item() == loss.item()

    # logits at ignored pixels cannot matter
    changed = logits.clone()
    changed[(target == IGNORE).unsqueeze(1).expand_as(logits)] = 100.0
    assert cross_entropy_loss()(changed, target).item() == pytest.approx(loss.item(), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), IGNORE)
    loss = cross_entropy_loss()(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_bad_ignore_index():
    with pytest.raises(ValueError, match="ignore_index"):
        cross_entropy_loss(ignore_index=2.5)


# --------------------------------------------------------------------------- RMI vs reference

REFERENCE_CASES = [
    # n, c, h, w, radius, pool, pool_size, confident
    (2, 4, 16, 16, 3, "none", 2, 0.0),
    (2, 4, 16, 16, 3, "none", 2, 10.0),  # trained regime: heavy cancellation in appro_var
    (1, 3, 13, 17, 2, "none", 2, 0.0),
    (3, 2, 9, 11, 1, "none", 2, 4.0),
    (2, 3, 20, 18, 3, "max", 2, 0.0),
    (2, 3, 21, 19, 2, "avg", 2, 6.0),
    (1, 5, 24, 24, 3, "avg", 3, 0.0),
    (2, 2, 12, 12, 1, "max", 3, 0.0),
]


@pytest.mark.parametrize("n,c,h,w,radius,pool,pool_size,confident", REFERENCE_CASES)
def test_rmi_matches_reference_values_and_gradients(n, c, h, w, radius, pool, pool_size, confident):
    logits, target = make_batch(n, c, h, w, seed=radius * 7 + h, confident=confident)
    fast_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    kwargs = dict(radius=radius, pool=pool, pool_size=pool_size, bce_weight=0.5, ignore_index=IGNORE)

    fast = RMILoss(c, **kwargs)(fast_in, target)
    ref = rmi_loss_reference(ref_in, target, c, **kwargs)
    fast.backward()
    ref.backward()

    assert fast.dtype == torch.float32 and fast.shape == ()
    assert abs(fast.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert rel_diff(fast_in.grad, ref_in.grad) <= 1e-5


def test_rmi_matches_reference_when_vectors_come_in_several_chunks(monkeypatch):
    """The covariance sums are built a few maps at a time; chunking must not change anything."""
    logits, target = make_batch(2, 3, 14, 15, seed=3)
    results = []
    for budget in (1, 1 << 30):  # one map per chunk, everything in one chunk
        monkeypatch.setitem(losses._CHUNK_BYTES, "cpu", budget)
        x = logits.clone().requires_grad_()
        value = RMILoss(3)(x, target)
        value.backward()
        results.append((value, x.grad))
    (v1, g1), (v2, g2) = results
    assert abs(v1.item() - v2.item()) <= 1e-6 * abs(v2.item())
    assert rel_diff(g1, g2) <= 1e-9


def test_region_covariance_against_explicit_loops():
    g = torch.Generator().manual_seed(5)
    labels = (torch.rand(2, 2, 5, 6, generator=g) > 0.5).float()
    probs = torch.rand(2, 2, 5, 6, generator=g)
    radius = 2
    cov = region_covariance(labels, probs, radius).numpy()

    la, pr = labels.double().numpy(), probs.double().numpy()
    offsets = [(dy, dx) for dy in range(radius) for dx in range(radius)]
    for i in range(2):
        for j in range(2):
            vecs = []
            for y in range(5 - radius + 1):
                for x in range(6 - radius + 1):
                    vecs.append([la[i, j, y + dy, x + dx] for dy, dx in offsets]
                                + [pr[i, j, y + dy, x + dx] for dy, dx in offsets])
            v = np.array(vecs)  # [M, 2d]
            v = v - v.mean(axis=0)
            np.testing.assert_allclose(cov[i, j], v.T @ v, rtol=1e-12, atol=1e-12)


def test_region_covariance_gradcheck():
    g = torch.Generator().manual_seed(6)
    labels = (torch.rand(1, 2, 5, 4, generator=g) > 0.5).double()
    probs = torch.rand(1, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: region_covariance(labels, p, 2), (probs,))


@pytest.mark.parametrize("pool", ["none", "avg", "max"])
def test_rmi_loss_gradcheck_float64(pool):
    logits, target = make_batch(1, 2, 6, 5, seed=11, confident=2.0)
    logits = logits.double().requires_grad_()
    loss_fn = RMILoss(2, radius=2, pool=pool, pool_size=2)
    assert loss_fn(logits, target).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits,))


# --------------------------------------------------------------------------- RMI by hand


def test_bce_part_against_explicit_loops():
    logits, target = make_batch(2, 3, 4, 5, seed=12, ignore_frac=0.25)
    loss = RMILoss(3, radius=2, bce_weight=1.0)(logits, target).item()

    x = logits.double().numpy()
    t = target.numpy()
    total, valid = 0.0, 0
    for i, y, xx in np.ndindex(t.shape):
        if t[i, y, xx] == IGNORE:
            continue
        valid += 1
        for k in range(3):
            p = expit(x[i, k, y, xx])
            total -= math.log(p) if t[i, y, xx] == k else math.log(1 - p)
    assert loss == pytest.approx(total / (valid + 1), rel=1e-6)


def test_rmi_radius1_reduces_to_scalar_formula():
    """radius 1: vectors are single pixels, so appro_var = var_l - cov_lp^2 / (var_p + alpha)."""
    logits, target = make_batch(2, 3, 6, 7, seed=13, confident=1.5, ignore_frac=0.2)
    loss = RMILoss(3, radius=1, bce_weight=0.0)(logits.double(), target).item()

    valid = (target != IGNORE).numpy()
    probs = expit(logits.double().numpy()) * valid[:, None] + 1e-6
    alpha = 5e-4
    expected = 0.0
    for k in range(3):
        per_image = []
        for i in range(2):
            lab = ((target[i].numpy() == k) & valid[i]).astype(float).ravel()
            p = probs[i, k].ravel()
            lc, pc = lab - lab.mean(), p - p.mean()
            appro = lc @ lc - (lc @ pc) ** 2 / (pc @ pc + alpha)
            per_image.append(math.log(math.sqrt(appro + alpha) + 1e-8))  # 0.5 * log det, 1x1
        expected += np.mean(per_image)
    assert loss == pytest.approx(expected, rel=1e-10)


def test_rmi_lower_bound_rewards_better_predictions():
    _, target = make_batch(2, 3, 16, 16, seed=14, ignore_frac=0.0)
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    noise = torch.rand(onehot.shape, generator=torch.Generator().manual_seed(0))
    values = [rmi_loss_term(onehot, (1 - a) * noise + a * onehot + 1e-6).item() for a in (0.0, 0.5, 0.99)]
    assert values[0] > values[1] > values[2]


def test_rmi_ignored_pixels_get_no_gradient():
    logits, target = make_batch(2, 3, 10, 10, seed=15, ignore_frac=0.3)
    logits.requires_grad_()
    RMILoss(3, radius=3).forward(logits, target).backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)


def test_rmi_under_bf16_autocast_is_finite_float32():
    logits, target = make_batch(2, 4, 16, 16, seed=16)
    conv = torch.nn.Conv2d(4, 4, 1)
    loss_fn = RMILoss(4, radius=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(logits)
        assert out.dtype == torch.bfloat16
        loss = loss_fn(out, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    # autocast only changes the logits' precision: same value as float32 on the bf16 logits
    assert loss.item() == pytest.approx(loss_fn(out.detach().float(), target).item(), rel=1e-6)


BAD_CONSTRUCTOR_ARGS = [
    (dict(num_classes=0), "num_classes"),
    (dict(radius=0), "radius"),
    (dict(radius=2.0), "radius"),
    (dict(pool="mean"), "pool"),
    (dict(pool="avg", pool_size=0), "pool_size"),
    (dict(bce_weight=1.5), "bce_weight"),
    (dict(bce_weight=-0.1), "bce_weight"),
    (dict(ignore_index=None), "ignore_index"),
]


@pytest.mark.parametrize("kwargs,name", BAD_CONSTRUCTOR_ARGS)
def test_rmi_bad_constructor_arguments(kwargs, name):
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=name):
        RMILoss(**args)


def test_rmi_bad_inputs():
    loss_fn = RMILoss(3, radius=3)
    logits, target = make_batch(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        loss_fn(logits[:, :2], target)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        loss_fn(logits[0], target)
    with pytest.raises(ValueError, match="target must have shape"):
        loss_fn(logits, target[:, :7])
    with pytest.raises(ValueError, match="integer"):
        loss_fn(logits, target.float())
    bad = target.clone()
    bad[0, 0, 0], bad[0, 1, 1] = 7, -1
    with pytest.raises(ValueError, match=r"\[-1, 7\]"):
        loss_fn(logits, bad)
    with pytest.raises(ValueError, match="smaller than radius=3"):
        loss_fn(logits[..., :2, :], target[..., :2, :])
    # 8x8 max-pooled with size 4 (padding 2) is 3x3: fine for radius 3, not for radius 4
    RMILoss(3, radius=3, pool="max", pool_size=4)(logits, target)
    with pytest.raises(ValueError, match="3x3 after pool='max'"):
        RMILoss(3, radius=4, pool="max", pool_size=4)(logits, target)


def test_rmi_check_target_false_skips_only_the_value_check(monkeypatch):
    logits, target = make_batch(2, 3, 8, 8)
    expected = RMILoss(3, radius=2)(logits, target)
    unchecked = RMILoss(3, radius=2, check_target=False)
    with pytest.raises(ValueError, match="target must have shape"):
        unchecked(logits, target[:, :7])  # shapes are still checked: they cost no read-back
    # the value check is the loss's one device read-back (Tensor.any); it must not run
    monkeypatch.setattr(torch.Tensor, "any", lambda *a, **k: pytest.fail("target values were read back"))
    assert unchecked(logits, target).item() == expected.item()


# --------------------------------------------------------------------------- mutual learning


def scipy_mutual_kl(logits, other, target, temperature=1.0):
    p_self = softmax(logits.double().numpy() / temperature, axis=1)
    p_other = softmax(other.double().numpy() / temperature, axis=1)
    per_pixel = rel_entr(p_other, p_self).sum(axis=1)  # KL(p_other || p_self), [N, H, W]
    return per_pixel[target.numpy() != IGNORE].mean() * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_mutual_kl_matches_scipy(temperature):
    logits, target = make_batch(2, 5, 6, 7, seed=20, ignore_frac=0.3)
    other, _ = make_batch(2, 5, 6, 7, seed=21)
    value = mutual_kl(logits, other, target, temperature=temperature)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(scipy_mutual_kl(logits, other, target, temperature), rel=1e-5)


def test_mutual_kl_zero_when_equal_and_never_negative():
    logits, target = make_batch(2, 4, 5, 5, seed=22)
    assert mutual_kl(logits, logits.clone(), target).item() == pytest.approx(0.0, abs=1e-7)
    # a constant shift of the logits gives the same distribution
    shifted = mutual_kl(logits, logits + 3.0, target).item()
    assert 0.0 <= shifted <= 1e-6
    for seed in range(5):
        other, _ = make_batch(2, 4, 5, 5, seed=100 + seed)
        assert mutual_kl(logits * seed, other, target).item() >= 0.0


def test_mutual_kl_gradient_only_into_logits():
    logits, target = make_batch(1, 3, 4, 4, seed=23)
    other, _ = make_batch(1, 3, 4, 4, seed=24)
    logits.requires_grad_()
    other.requires_grad_()
    mutual_kl(logits, other, target).backward()
    assert other.grad is None
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # d/dz KL(q || softmax(z)) = softmax(z) - q per labelled pixel, / number of labelled pixels
    labelled = (target != IGNORE).unsqueeze(1)
    expected = (torch.softmax(logits, 1) - torch.softmax(other, 1)) * labelled / labelled.sum()
    torch.testing.assert_close(logits.grad, expected.detach(), rtol=1e-5, atol=1e-7)


def test_mutual_kl_respects_ignore_index():
    logits, target = make_batch(2, 3, 5, 5, seed=25, ignore_frac=0.4)
    other, _ = make_batch(2, 3, 5, 5, seed=26)
    value = mutual_kl(logits, other, target)
    changed = other.clone()
    changed[(target == IGNORE).unsqueeze(1).expand_as(other)] = 50.0
    assert mutual_kl(logits, changed, target).item() == pytest.approx(value.item(), rel=1e-6)
    # a different ignore value makes those pixels count again
    assert mutual_kl(logits, changed, target, ignore_index=-1).item() != pytest.approx(value.item(), rel=1e-3)


def test_mutual_kl_nothing_labelled_is_zero_and_connected():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = mutual_kl(logits, torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), IGNORE))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_mutual_kl_gradcheck_float64():
    logits, target = make_batch(1, 3, 3, 4, seed=27)
    other, _ = make_batch(1, 3, 3, 4, seed=28)
    x = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: mutual_kl(z, other.double(), target, temperature=2.0), (x,))


def test_mutual_kl_bad_arguments():
    logits, target = make_batch(1, 3, 4, 4)
    with pytest.raises(ValueError, match="other_logits"):
        mutual_kl(logits, logits[:, :2], target)
    with pytest.raises(ValueError, match="target must have shape"):
        mutual_kl(logits, logits, target[:, :3])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        mutual_kl(logits[0], logits[0], target)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            mutual_kl(logits, logits, target, temperature=bad)


# --------------------------------------------------------------------------- controls of the RMI use-case

def _softmax_ce_by_hand(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over labelled pixels of -log softmax(logits)[target], with scipy."""
    z = logits.double().permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).numpy()
    t = target.reshape(-1).numpy()
    keep = t != IGNORE
    return float(-log_softmax(z[keep], axis=1)[np.arange(keep.sum()), t[keep]].mean())


@pytest.mark.parametrize("bce_weight", [0.5, 0.25])
def test_rmi_added_to_softmax_cross_entropy_matches_an_independent_computation(bce_weight):
    logits, target = make_batch(2, 4, 12, 11, seed=3, confident=1.0)
    loss = RMILoss(4, radius=3, bce_weight=bce_weight, base="ce")
    parts = loss.parts(logits, target)
    assert set(parts) == {"ce", "rmi"}
    assert parts["ce"].item() == pytest.approx(_softmax_ce_by_hand(logits, target), rel=1e-5)
    ref_rmi = rmi_loss_reference(logits, target, 4, radius=3, probabilities="softmax")
    assert parts["rmi"].item() == pytest.approx(ref_rmi.item(), rel=1e-5)
    a = logits.clone().requires_grad_()
    loss(a, target).backward()
    b = logits.clone().requires_grad_()
    (bce_weight * F.cross_entropy(b, target, ignore_index=IGNORE)
     + (1 - bce_weight) * rmi_loss_reference(b, target, 4, radius=3, probabilities="softmax")).backward()
    assert rel_diff(a.grad, b.grad) < 1e-4


def test_bce_alone_is_lambda_one_and_skips_the_rmi_term(monkeypatch):
    logits, target = make_batch(2, 3, 9, 9, seed=4)
    called = count_calls(monkeypatch, losses, "rmi_loss_term")
    value = RMILoss(3, bce_weight=1.0)(logits, target)
    assert called["n"] == 0
    z, t = logits.double().numpy(), target.numpy()
    keep = t != IGNORE
    onehot = np.eye(3)[np.where(keep, t, 0)].transpose(0, 3, 1, 2)
    p = expit(z)
    bce = -(onehot * np.log(p) + (1 - onehot) * np.log(1 - p)) * keep[:, None]
    assert value.item() == pytest.approx(bce.sum() / (keep.sum() + 1), rel=1e-5)
    with pytest.raises(ValueError, match="base"):
        RMILoss(3, base="focal")


@pytest.mark.parametrize("base", ["bce", "ce"])
def test_the_training_objective_is_the_losss_own_mix(base):
    """engine.Objective's RMI loss is RMILoss's λ·BCE + (1 − λ)·RMI (`RMILoss.combine`), not a second spelling."""
    from mistudy.training.config import TrainConfig
    from mistudy.training.engine import Objective

    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 9, 9), torch.randint(0, 4, (2, 9, 9))
    cfg = TrainConfig(use_case="rmi", rmi_bce_weight=0.3, rmi_base=base)
    loss, parts = Objective(cfg, 4)(logits, target)
    rmi = RMILoss(4, bce_weight=0.3, base=base)
    assert torch.allclose(loss, rmi(logits, target)) and set(parts) == {base, "rmi"}
    assert torch.allclose(loss, 0.3 * parts[base] + 0.7 * parts["rmi"])
    only_base = Objective(TrainConfig(use_case="rmi", rmi_bce_weight=1.0, rmi_base=base), 4)(logits, target)[0]
    assert torch.allclose(only_base, parts[base])
