import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score

from mistudy.methods.metrics import SegmentationMetrics


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


def _thick_void_by_loops(t, k):
    """Void pixels inside a k x k square of void (windows clipped at the border), grown back by the same square: the
    morphological opening, by hand."""
    h, w, r = *t.shape, k // 2
    window = lambda a, y, x: a[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1]  # noqa: E731
    core = np.array([[(window(t, y, x) == 255).all() for x in range(w)] for y in range(h)])
    return np.array([[window(core, y, x).any() for x in range(w)] for y in range(h)])


def _fill_void_band_by_loops(t, num_classes, width=3):
    """The truth's void band labelled by hand: ``width`` rounds, each giving every void pixel with a labelled
    8-neighbour the label most such neighbours have (lowest class id on ties); void regions 2 x width + 3 thick
    stay void."""
    t = t.copy()
    h, w = t.shape
    thick = _thick_void_by_loops(t, 2 * width + 3)
    for _ in range(width):
        new = t.copy()
        for y in range(h):
            for x in range(w):
                if t[y, x] != 255 or thick[y, x]:
                    continue
                votes = np.zeros(num_classes, int)
                for yy in range(max(y - 1, 0), min(y + 2, h)):
                    for xx in range(max(x - 1, 0), min(x + 2, w)):
                        if t[yy, xx] != 255:
                            votes[t[yy, xx]] += 1
                if votes.any():
                    new[y, x] = int(np.argmax(votes))
        t = new
    return t


def _per_class_boundary_matches(p, t, c, tol, num_classes=4):
    """(matched predicted, predicted, matched true, true) boundary pixels of class c in one image, by brute force:
    the truth's void band filled, the void left made void in the prediction, then every pairwise distance."""
    t = _fill_void_band_by_loops(t, num_classes)
    p = np.where(t == 255, 255, p)
    bp, bt = _boundaries_by_definition(p, c), _boundaries_by_definition(t, c)
    ps, ts = np.argwhere(bp), np.argwhere(bt)
    if len(ps) and len(ts):
        d = np.sqrt(((ps[:, None, :] - ts[None, :, :]) ** 2).sum(-1))
        return int((d.min(axis=1) <= tol).sum()), len(ps), int((d.min(axis=0) <= tol).sum()), len(ts)
    return 0, len(ps), 0, len(ts)


def _f(mp, n_p, mt, n_t):
    precision = mp / n_p if n_p else 0.0
    recall = mt / n_t if n_t else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _boundary_f_by_definition(pred, target, num_classes, tol):
    """Csurka et al. 2013 from the definition: per image, F over the classes with a boundary in either map, then the
    mean over images; and the pooled form (counts summed over images, mean over classes)."""
    per_image, pooled = [], np.zeros((num_classes, 4))
    for p, t in zip(pred, target):
        scores = []
        for c in range(num_classes):
            counts = _per_class_boundary_matches(p, t, c, tol, num_classes)
            pooled[c] += counts
            if counts[1] + counts[3]:
                scores.append(_f(*counts))
        if scores:
            per_image.append(np.mean(scores))
    pooled_f = [_f(*row) for row in pooled if row[1] + row[3]]
    return np.mean(per_image), np.mean(pooled_f)


@pytest.mark.parametrize("tol", [0, 1, 2, 3, 1.5])
def test_boundary_f_matches_the_definition(tol):
    rng = np.random.default_rng(int(tol * 2))
    target = np.kron(rng.integers(0, 4, (3, 4, 5)), np.ones((1, 4, 4), int))  # blocky maps, 16 x 20
    target[0, 5:7, 3:12] = 255  # an ignored stripe (a band, filled)
    target[1, 2:16, 4:14] = 255  # a void region wider than the band (its middle stays void)
    pred = target.copy()
    pred[pred == 255] = 1
    shift = np.roll(pred, 1, axis=2)  # predictions off by a pixel here and there, plus noise
    pred = np.where(rng.random(pred.shape) < 0.5, shift, pred)
    pred[rng.random(pred.shape) < 0.03] = 2
    m = SegmentationMetrics(4, boundary_tolerance=tol)
    m.update(torch.as_tensor(pred[:1]), torch.as_tensor(target[:1]))
    m.update(torch.as_tensor(pred[1:]), torch.as_tensor(target[1:]))  # images of several batches
    out = m.compute()
    per_image, pooled = _boundary_f_by_definition(pred, target, 4, tol)
    assert out["boundary_f"] == pytest.approx(per_image)
    assert out["boundary_f_pooled"] == pytest.approx(pooled)
    assert out["boundary_f"] != pytest.approx(out["boundary_f_pooled"])  # two scores, named apart


def test_boundary_f_against_scipy_distance_transform_without_void():
    from scipy.ndimage import binary_erosion, distance_transform_edt

    rng = np.random.default_rng(7)
    target = np.kron(rng.integers(0, 3, (2, 6, 6)), np.ones((1, 5, 5), int))  # 30 x 30, no void
    pred = np.where(rng.random(target.shape) < 0.1, rng.integers(0, 3, target.shape), np.roll(target, 2, axis=1))
    tol = 2
    expected = []
    for p, t in zip(pred, target):
        scores = []
        for c in range(3):
            # inner boundary: class pixels that a 3x3 erosion (border counted as inside) removes
            bp = (p == c) & ~binary_erosion(p == c, np.ones((3, 3)), border_value=1)
            bt = (t == c) & ~binary_erosion(t == c, np.ones((3, 3)), border_value=1)
            if not (bp.any() or bt.any()):
                continue
            # distance of every pixel to the nearest boundary pixel of the other map
            dist_to_t = distance_transform_edt(~bt) if bt.any() else np.full(bt.shape, np.inf)
            dist_to_p = distance_transform_edt(~bp) if bp.any() else np.full(bp.shape, np.inf)
            scores.append(_f((dist_to_t[bp] <= tol).sum(), bp.sum(), (dist_to_p[bt] <= tol).sum(), bt.sum()))
        expected.append(np.mean(scores))
    m = SegmentationMetrics(3, boundary_tolerance=tol)
    m.update(torch.as_tensor(pred), torch.as_tensor(target))
    assert m.compute()["boundary_f"] == pytest.approx(np.mean(expected))


def _disc_with_void_band(size=41, radius=12, band=3, shrink=0):
    """A VOC-like object: a disc of class 1 whose outline is covered by a void band of ``band`` pixels centred on it
    (as VOC draws it); and a prediction of the disc with its radius changed by -``shrink`` pixels (background
    elsewhere, never void)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size // 2, xx - size // 2)
    target = np.where(r <= radius, 1, 0)
    target[np.abs(r - radius) <= band / 2] = 255
    pred = np.where(r <= radius - shrink, 1, 0)
    return torch.as_tensor(pred[None]), torch.as_tensor(target[None])


@pytest.mark.parametrize("band", [3, 5])
def test_boundary_f_with_void_bands_rewards_the_right_answer(band):
    scores = {}
    for name, shrink in (("perfect", 0), ("shrunk", 4), ("grown", -4)):
        pred, target = _disc_with_void_band(band=band, shrink=shrink)
        m = SegmentationMetrics(2, boundary_tolerance=1)
        m.update(pred, target)
        scores[name] = m.compute()["boundary_f"]
    assert scores["perfect"] == 1.0
    assert scores["shrunk"] < scores["perfect"] and scores["grown"] < scores["perfect"]


def test_boundary_f_orders_missing_too_small_exact_on_voc_sized_masks():
    """A 500 x 375 VOC-like mask (a person, outlined by VOC's 5-pixel void band) at the default tolerance: a
    prediction that misses the object scores below one that finds it too small, which scores below the exact one.
    Before the band was filled, the miss scored 0.34 and a disc of half the radius 0.29: the background's boundary
    along the band's inner side was rewarded."""
    h, w, cy, cx, radius = 375, 500, 180, 250, 90
    yy, xx = np.mgrid[:h, :w]
    target = np.where(np.hypot(yy - cy, xx - cx) <= radius, 15, 0)
    target[np.abs(np.hypot(yy - cy, xx - cx) - radius) <= 2.5] = 255

    def score(mask):
        m = SegmentationMetrics(21)
        m.update(torch.as_tensor(np.where(mask, 15, 0)[None]), torch.as_tensor(target[None]))
        return m.compute()["boundary_f"]

    exact = score(np.hypot(yy - cy, xx - cx) <= radius)
    missing = score(np.zeros((h, w), bool))
    # too small: a disc of 0.6 the radius touching the object's top (part of the outline found), and a concentric
    # disc of half the radius (none of it)
    touching = score(np.hypot(yy - (cy - 0.4 * radius), xx - cx) <= 0.6 * radius)
    concentric = score(np.hypot(yy - cy, xx - cx) <= radius / 2)
    assert exact == 1.0
    assert missing == 0.0
    assert missing < touching < exact
    assert missing <= concentric < exact


def test_a_large_void_region_stays_void_whatever_is_predicted_under_it():
    """Cityscapes' ego vehicle, a VOC object marked void: what lies under it is unknown, so a prediction right on every
    labelled pixel scores 1 whatever it says there (filling the region's edge with its neighbours' labels gave 0.5)."""
    target = torch.zeros(1, 40, 40, dtype=torch.long)
    target[0, :, 20:] = 1
    target[0, 5:25, 5:35] = 255
    for under in (0, 2):
        pred = torch.where(target == 255, torch.full_like(target, under), target)
        m = SegmentationMetrics(3, boundary_tolerance=1)
        m.update(pred, target)
        assert m.compute()["boundary_f"] == 1.0


def test_boundary_f_at_the_studys_64_pixel_crops_matches_within_one_pixel():
    """0.75 % of a 64 x 64 crop's diagonal is 0.68 px: without the 1-pixel floor only exact pixels matched and a
    disc shifted by one pixel scored 0.5."""
    from mistudy.methods.metrics import boundary_tolerance_text, tolerance_pixels

    assert tolerance_pixels(64, 64, None) == 1.0
    assert tolerance_pixels(375, 500, None) == pytest.approx(0.0075 * 625)
    assert boundary_tolerance_text(None, (64, 64)).startswith("1 px at 64x64")
    assert boundary_tolerance_text(0.5, (64, 64)) == "0.5 px"
    yy, xx = np.mgrid[:64, :64]
    target = torch.as_tensor(np.where(np.hypot(yy - 32, xx - 30) <= 12, 1, 0)[None])
    m = SegmentationMetrics(2)
    m.update(torch.roll(target, 1, dims=2), target)
    assert m.compute()["boundary_f"] == 1.0
    far = SegmentationMetrics(2)
    far.update(torch.roll(target, 3, dims=2), target)
    assert far.compute()["boundary_f"] < 0.6


def test_boundary_tolerance_defaults_to_a_fraction_of_the_diagonal():
    from mistudy.methods.metrics import BOUNDARY_TOLERANCE_FRACTION, tolerance_pixels

    assert BOUNDARY_TOLERANCE_FRACTION == 0.0075  # Csurka et al.'s 0.75 %
    assert tolerance_pixels(300, 400, None) == pytest.approx(3.75)
    assert tolerance_pixels(48, 64, None) == 1.0  # 0.6 px by the fraction: never less than a pixel
    assert tolerance_pixels(300, 400, 2) == 2.0
    # a 300 x 400 image: the diagonal rule matches within 3.75 px, exactly as an explicit 3.75 px tolerance
    target = torch.zeros(1, 300, 400, dtype=torch.long)
    target[0, 100:200, 100:300] = 1
    pred = torch.roll(target, 3, dims=2)
    pred[0, 150:160, :] = 2
    by_fraction, by_pixels, strict = (SegmentationMetrics(3, boundary_tolerance=t) for t in (None, 3.75, 2))
    for m in (by_fraction, by_pixels, strict):
        m.update(pred, target)
    assert by_fraction.compute()["boundary_f"] == by_pixels.compute()["boundary_f"]
    assert strict.compute()["boundary_f"] < by_fraction.compute()["boundary_f"]
    assert by_fraction.compute()["boundary_tolerance"] is None


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


def test_a_sigmoid_network_is_scored_by_its_own_probabilities_beside_the_softmax_reading():
    """Logits (0, -4, -4) at every pixel, all predicting class 0 correctly: the network's own sigmoid says 0.5, the
    softmax of the same logits 0.965.  Read through the softmax, a BCE-trained network looked well calibrated."""
    from scipy.special import expit
    from scipy.stats import entropy

    logits = torch.tensor([0.0, -4.0, -4.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    own = SegmentationMetrics(3, probabilities="sigmoid")
    own.update(logits, target)
    out = own.compute()
    sig = expit(np.array([0.0, -4.0, -4.0]))
    soft = np.exp([0.0, -4.0, -4.0]) / np.exp([0.0, -4.0, -4.0]).sum()
    assert out["probabilities"] == "sigmoid"
    assert out["ece"] == pytest.approx(1 - 0.5)  # every pixel right at confidence 0.5
    assert out["ece_softmax"] == pytest.approx(1 - soft[0], rel=1e-5)  # 0.035 (float32 softmax)
    assert out["mean_entropy_bits"] == pytest.approx(entropy(sig / sig.sum(), base=2), rel=1e-5)
    assert out["mean_entropy_bits_softmax"] == pytest.approx(entropy(soft, base=2), rel=1e-5)
    assert out["mean_entropy_bits"] > out["mean_entropy_bits_softmax"]
    # a softmax network's two readings are one
    plain = SegmentationMetrics(3)
    plain.update(logits, target)
    p = plain.compute()
    assert p["ece"] == p["ece_softmax"] == pytest.approx(1 - soft[0], rel=1e-5) and p["probabilities"] == "softmax"
    # the rmi use-case's BCE networks are read through sigmoids; its softmax-CE control and the others through softmax
    from mistudy.training.config import TrainConfig

    assert TrainConfig(use_case="rmi").probabilities == "sigmoid"
    assert TrainConfig(use_case="rmi", rmi_base="ce").probabilities == "softmax"
    assert TrainConfig(use_case="baseline").probabilities == TrainConfig(use_case="mutual").probabilities == "softmax"
    with pytest.raises(ValueError, match="probabilities"):
        SegmentationMetrics(3, probabilities="probit")
    # far below zero every float32 sigmoid is 0: the entropy is still that of the (equal) normalised sigmoids
    low = SegmentationMetrics(3, probabilities="sigmoid")
    low.update(torch.full((1, 3, 2, 2), -105.0), torch.zeros(1, 2, 2, dtype=torch.long))
    assert low.compute()["mean_entropy_bits"] == pytest.approx(np.log2(3))


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


# ------------------------------------------------- degenerate confusion matrices (a crash on real data, issue 21)

def test_information_scores_accept_their_own_rounding_on_single_class_predictions():
    """A network that predicts one class everywhere gives a single-column confusion matrix whose marginal summed in
    float64 can read 1.0000000000000002; that once raised inside training. Every such matrix now scores, with
    I(Y; Ŷ) = 0 (a constant prediction carries no information)."""
    from sklearn.metrics import mutual_info_score

    from mistudy.methods.metrics import information_from_confmat

    def information_scores(cm):
        mi, nmi = information_from_confmat(cm)
        return {"mutual_information_bits": float(mi), "normalized_mutual_information": float(nmi)}

    rng = np.random.default_rng(0)
    for _ in range(200):
        cm = np.zeros((19, 19))
        cm[:, rng.integers(19)] = rng.integers(0, 100_000, 19)
        out = information_scores(cm)
        assert out["mutual_information_bits"] == 0.0
        assert out["normalized_mutual_information"] == 0.0
    # near-degenerate: one huge class and a single pixel of another, against scikit-learn on the same labels
    t = np.repeat([0, 1], [10 ** 6, 1])
    p = t.copy()
    p[:3] = 2
    near = np.zeros((4, 4))
    np.add.at(near, (t, p), 1)
    assert information_scores(near)["mutual_information_bits"] == pytest.approx(mutual_info_score(t, p) / math.log(2))
    empty = information_scores(np.zeros((4, 4)))
    assert math.isnan(empty["mutual_information_bits"]) and math.isnan(empty["normalized_mutual_information"])


def test_metrics_of_a_single_class_prediction_on_real_sized_masks():
    gen = torch.Generator().manual_seed(11)
    target = torch.randint(0, 19, (2, 64, 128), generator=gen)
    target[:, :8] = 255
    pred = torch.full_like(target, 4)
    m = SegmentationMetrics(19)
    m.update(pred, target)
    out = m.compute()
    assert out["mutual_information_bits"] == 0.0
    assert 0.0 < out["miou"] < 0.1 and not math.isnan(out["boundary_f"])
    only_void = SegmentationMetrics(19)
    only_void.update(pred, torch.full_like(target, 255))
    out = only_void.compute()
    assert out["labelled_pixels"] == 0 and math.isnan(out["miou"]) and math.isnan(out["mutual_information_bits"])
