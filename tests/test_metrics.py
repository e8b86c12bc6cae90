import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

from mistudy.metrics import SegmentationMetrics


def _random_batch(gen, n=3, c=5, h=17, w=13, ignore_frac=0.1):
    target = torch.randint(0, c, (n, h, w), generator=gen)
    pred = torch.where(torch.rand(n, h, w, generator=gen) < 0.6, target, torch.randint(0, c, (n, h, w), generator=gen))
    target[torch.rand(n, h, w, generator=gen) < ignore_frac] = 255
    return pred, target


def test_against_sklearn_over_several_batches():
    gen = torch.Generator().manual_seed(0)
    c = 5
    m = SegmentationMetrics(c)
    preds, targets = [], []
    for _ in range(4):
        p, t = _random_batch(gen, c=c)
        m.update(p, t)
        preds.append(p.flatten())
        targets.append(t.flatten())
    p = torch.cat(preds).numpy()
    t = torch.cat(targets).numpy()
    keep = t != 255
    p, t = p[keep], t[keep]
    out = m.compute()
    np.testing.assert_array_equal(m.confmat.numpy(), confusion_matrix(t, p, labels=list(range(c))))
    assert out["pixel_accuracy"] == pytest.approx(np.mean(p == t))
    assert out["iou_micro"] == pytest.approx(jaccard_score(t, p, average="micro"))
    per_class = jaccard_score(t, p, average=None, labels=list(range(c)))
    np.testing.assert_allclose(out["iou_per_class"], per_class)
    assert out["miou"] == pytest.approx(per_class.mean())
    assert out["labelled_pixels"] == keep.sum()


def test_logits_are_argmaxed_and_ignore_never_counts():
    target = torch.tensor([[[0, 1], [255, 2]]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = 5  # correct
    logits[0, 2, 0, 1] = 5  # wrong: predicts 2 for a 1
    logits[0, 1, 1, 0] = 5  # ignored pixel: must not count
    logits[0, 2, 1, 1] = 5  # correct
    m = SegmentationMetrics(3)
    m.update(logits, target)
    out = m.compute()
    assert out["labelled_pixels"] == 3
    assert out["pixel_accuracy"] == pytest.approx(2 / 3)
    # class 0: 1/1, class 1: 0/1 (FN only), class 2: 1/2 (TP + FP)
    assert out["iou_per_class"] == pytest.approx([1.0, 0.0, 0.5])
    assert out["miou"] == pytest.approx(0.5)
    # micro: TP 2 / (TP 2 + FP 1 + FN 1)
    assert out["iou_micro"] == pytest.approx(0.5)


def test_absent_classes_are_nan_and_excluded_from_miou():
    m = SegmentationMetrics(4)
    m.update(torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 1]]))
    out = m.compute()
    assert math.isnan(out["iou_per_class"][2]) and math.isnan(out["iou_per_class"][3])
    assert out["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_micro_iou_is_a_function_of_accuracy():
    # Each wrong pixel is one FP and one FN, so the paper's text-defined IoU is acc / (2 - acc):
    # the IoU column of its tables (far below that) cannot be this quantity.
    gen = torch.Generator().manual_seed(1)
    m = SegmentationMetrics(6)
    m.update(*_random_batch(gen, c=6))
    out = m.compute()
    acc = out["pixel_accuracy"]
    assert out["iou_micro"] == pytest.approx(acc / (2 - acc))


def test_empty_and_reset():
    m = SegmentationMetrics(3)
    assert math.isnan(m.compute()["miou"])
    m.update(torch.tensor([[1]]), torch.tensor([[1]]))
    m.reset()
    assert m.compute()["labelled_pixels"] == 0


@pytest.mark.parametrize(
    "pred,target,match",
    [
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), "does not match"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), r"values \[7\]"),
        (torch.full((1, 2, 2), 4), torch.zeros(1, 2, 2, dtype=torch.long), r"class ids \[4\]"),
        (torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "5 channels"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "integer"),
    ],
)
def test_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        SegmentationMetrics(3).update(pred, target)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationMetrics(0)


# --------------------------------------------------------------- boundaries, calibration, entropy, information

def _boundaries_by_definition(ids: np.ndarray, c: int) -> np.ndarray:
    """Pixels of class c with an 8-neighbour (inside the image) of another label."""
    h, w = ids.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if ids[y, x] != c:
                continue
            out[y, x] = any(ids[yy, xx] != c for yy in range(max(y - 1, 0), min(y + 2, h))
                            for xx in range(max(x - 1, 0), min(x + 2, w)))
    return out


def _boundary_f_by_definition(pred, target, num_classes, tol):
    """Csurka et al.'s boundary F-score, pooled over images, from the definition: brute-force distances."""
    scores = []
    for c in range(num_classes):
        matched_p = n_p = matched_t = n_t = 0
        for p, t in zip(pred, target):
            bp = _boundaries_by_definition(p, c) & (t != 255)
            bt = _boundaries_by_definition(t, c)
            ps, ts = np.argwhere(bp), np.argwhere(bt)
            n_p, n_t = n_p + len(ps), n_t + len(ts)
            if len(ps) and len(ts):
                d = np.sqrt(((ps[:, None, :] - ts[None, :, :]) ** 2).sum(-1))
                matched_p += int((d.min(axis=1) <= tol).sum())
                matched_t += int((d.min(axis=0) <= tol).sum())
        if n_p + n_t == 0:
            continue
        precision = matched_p / n_p if n_p else 0.0
        recall = matched_t / n_t if n_t else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return np.mean(scores)


@pytest.mark.parametrize("tol", [0, 1, 2, 3])
def test_boundary_f_matches_the_definition(tol):
    rng = np.random.default_rng(tol)
    target = np.kron(rng.integers(0, 4, (2, 4, 5)), np.ones((1, 4, 4), int))  # blocky maps, 16 x 20
    target[0, 5:7, 3:12] = 255  # an ignored stripe
    pred = target.copy()
    pred[pred == 255] = 1
    shift = np.roll(pred, 1, axis=2)  # predictions off by a pixel here and there, plus noise
    pred = np.where(rng.random(pred.shape) < 0.5, shift, pred)
    pred[rng.random(pred.shape) < 0.03] = 2
    m = SegmentationMetrics(4, boundary_tolerance=tol)
    m.update(torch.as_tensor(pred[:1]), torch.as_tensor(target[:1]))
    m.update(torch.as_tensor(pred[1:]), torch.as_tensor(target[1:]))  # pooled over batches
    assert m.compute()["boundary_f"] == pytest.approx(_boundary_f_by_definition(pred, target, 4, tol))


def test_boundary_f_of_a_perfect_and_of_a_shifted_prediction():
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 3:9, 3:9] = 1
    perfect = SegmentationMetrics(2, boundary_tolerance=0)
    perfect.update(target.clone(), target)
    assert perfect.compute()["boundary_f"] == 1.0
    shifted = torch.roll(target, 2, dims=2)
    for tol, expected_below_one in ((1, True), (2, False)):
        m = SegmentationMetrics(2, boundary_tolerance=tol)
        m.update(shifted, target)
        assert (m.compute()["boundary_f"] < 1.0) == expected_below_one
    with pytest.raises(ValueError, match="boundary_tolerance"):
        SegmentationMetrics(2, boundary_tolerance=-1)


def test_calibration_and_entropy_by_hand_and_scipy():
    from scipy.stats import entropy

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 4, 6, 5, generator=gen) * 2
    target = torch.randint(0, 4, (3, 6, 5), generator=gen)
    target[0, 0] = 255
    m = SegmentationMetrics(4, calibration_bins=10)
    m.update(logits, target)
    out = m.compute()
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    t = target.reshape(-1).numpy()
    keep = t != 255
    probs, t = probs[keep], t[keep]
    conf, correct = probs.max(1), (probs.argmax(1) == t).astype(float)
    counts, edges = np.histogram(conf, bins=10, range=(0, 1))
    ece = 0.0
    for b in range(10):
        inside = (conf >= edges[b]) & ((conf < edges[b + 1]) if b < 9 else (conf <= 1))
        if inside.any():
            ece += inside.sum() / len(conf) * abs(conf[inside].mean() - correct[inside].mean())
    assert out["ece"] == pytest.approx(ece)
    assert out["reliability"]["count"] == counts.tolist()
    assert out["mean_entropy_bits"] == pytest.approx(np.mean(entropy(probs, base=2, axis=1)))
    assert out["pixel_accuracy"] == pytest.approx(correct.mean())


def test_mutual_information_between_prediction_and_truth_matches_sklearn():
    from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

    gen = torch.Generator().manual_seed(5)
    pred, target = _random_batch(gen, c=5)
    m = SegmentationMetrics(5)
    m.update(pred, target)
    out = m.compute()
    keep = target != 255
    t, p = target[keep].numpy(), pred[keep].numpy()
    assert out["mutual_information_bits"] == pytest.approx(mutual_info_score(t, p) / math.log(2))
    assert out["normalized_mutual_information"] == pytest.approx(normalized_mutual_info_score(t, p))
    perfect = SegmentationMetrics(5)
    perfect.update(target.clamp(max=4), target)
    assert perfect.compute()["normalized_mutual_information"] == pytest.approx(1.0)
