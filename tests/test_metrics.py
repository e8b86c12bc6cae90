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
