"""mistudy.data: palettes, joint transforms, the synthetic dataset, VOC/Cityscapes readers and the resized cache."""

from __future__ import annotations

import hashlib
import math
import os
import pickle

import numpy as np
import pytest
import torch
from datatrees import CITYSCAPES_KNOWN, VOC_SPLITS, write_sbd, write_voc_mask
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from mistudy import data
from mistudy.data import (
    IGNORE_INDEX,
    ResizedCache,
    SyntheticSegmentation,
    build_dataset,
    build_transform,
    colorize_mask,
    dataset_info,
    files,
    synthetic,
    synthetic_sample,
)

# The official Cityscapes labelId -> trainId table (cityscapesScripts labels.py), written out independently.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _pair(mask: np.ndarray, image: np.ndarray | None = None):
    """tv_tensors inputs from a uint8 mask [H, W]; by default the image's red channel encodes the mask (x10)."""
    if image is None:
        image = np.stack([mask * 10, mask * 0 + 77, mask * 0 + 3], axis=-1).astype(np.uint8)
    return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()), tv_tensors.Mask(
        torch.from_numpy(mask))


def _items(dataset, indices=None):
    return [dataset[i] for i in (range(len(dataset)) if indices is None else indices)]


def _assert_same_items(a, b):
    assert len(a) == len(b)
    for (ia, ma), (ib, mb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ma, mb)


# ---------------------------------------------------------------------------------------------- info and palettes

def test_dataset_info_sizes_names_and_known_colours():
    expected = {"synthetic": 7, "voc": 21, "cityscapes": 19}
    for name, k in expected.items():
        info = dataset_info(name)
        assert info.num_classes == k == len(info.class_names)
        assert info.palette.shape == (k, 3) and info.palette.dtype == np.uint8
        assert len({tuple(c) for c in info.palette}) == k, "palette colours must be distinct"
        assert not info.palette.flags.writeable
    voc = dataset_info("voc")
    # The VOC devkit colour map: background, aeroplane, bicycle, person, tvmonitor.
    assert voc.palette[[0, 1, 2, 15, 20]].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [192, 128, 128],
                                                       [0, 64, 128]]
    assert voc.class_names[15] == "person"
    city = dataset_info("cityscapes")
    assert city.class_names[0] == "road" and city.class_names[13] == "car" and city.class_names[18] == "bicycle"
    assert city.palette[0].tolist() == [128, 64, 128] and city.palette[13].tolist() == [0, 0, 142]


def test_dataset_info_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="'synthetic'.*'voc'.*'cityscapes'"):
        dataset_info("coco")


def test_colorize_mask_maps_ids_and_paints_ignore_white():
    mask = np.array([[0, 1, 255], [20, 15, 0]])
    rgb = colorize_mask(torch.from_numpy(mask), "voc")
    pal = dataset_info("voc").palette
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == pal[0].tolist() and rgb[1, 1].tolist() == pal[15].tolist()
    assert rgb[0, 2].tolist() == [255, 255, 255]
    assert np.array_equal(colorize_mask(mask, dataset_info("voc")), rgb)
    with pytest.raises(ValueError, match=r"\[21\]"):
        colorize_mask(np.array([[21, 0]]), "voc")
    with pytest.raises(ValueError, match="shape"):
        colorize_mask(np.zeros((1, 2, 2), dtype=np.int64), "voc")
    with pytest.raises(ValueError, match="float"):
        colorize_mask(np.zeros((2, 2)), "voc")


# ---------------------------------------------------------------------------------------------- transforms

def test_train_transform_keeps_image_and_mask_aligned_and_masks_categorical():
    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 21, (8, 10)), np.ones((6, 6), dtype=np.int64)).astype(np.uint8)  # 48 x 60
    torch.manual_seed(0)
    # No resize: the crop alone must take the same window of both.
    for _ in range(5):
        image, out = build_transform(True, resize_size=None, crop_size=32)(*_pair(mask))
        assert image.dtype == torch.float32 and out.dtype == torch.int64 and out.shape == (32, 32)
        assert torch.equal(torch.round(image[0] * 255).long(), out * 10)
    # With a resize: masks stay categorical (nearest) and agree with the image inside constant regions.
    image, out = build_transform(True, resize_size=100, crop_size=90)(*_pair(mask))
    assert set(out.unique().tolist()) <= set(mask.ravel().tolist())
    # Away from block edges (where bilinear blends neighbours) the image's red channel still encodes the mask.
    # (5x5 mask neighbourhood = +-1 source pixel at this 2x scale, the reach of the bilinear kernel.)
    neighbours = torch.nn.functional.unfold(out[None, None].float(), 5).reshape(25, 86, 86)
    interior = (neighbours == neighbours[12]).all(0)
    red = torch.round(image[0] * 255).long()[2:-2, 2:-2]
    assert interior.float().mean() > 0.4
    assert (red - out[2:-2, 2:-2] * 10)[interior].abs().max() <= 1


def test_resize_matches_pil_nearest_masks_and_bilinear_images():
    # Sizes with no output pixel centre exactly on a source pixel boundary (ties PIL and torch break differently).
    rng = np.random.default_rng(1)
    for width, height, square in [(45, 61, False), (45, 61, True), (13, 7, False), (13, 7, True)]:
        mask = rng.integers(0, 21, (height, width)).astype(np.uint8)
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        out_image, out_mask = build_transform(False, "paper", resize_size=234, crop_size=234, square_resize=square)(
            *_pair(mask, image))
        if square:
            new_w, new_h = 234, 234
        else:  # shorter side -> 234, the other side int(234 * long / short), as torchvision and the paper's code do
            short, long = min(width, height), max(width, height)
            new_long = int(234 * long / short)
            new_w, new_h = (234, new_long) if width < height else (new_long, 234)
        pil_mask = np.array(Image.fromarray(mask).resize((new_w, new_h), Image.NEAREST))
        pil_image = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)).astype(int)
        top, left = int(round((new_h - 234) / 2)), int(round((new_w - 234) / 2))
        pil_mask, pil_image = pil_mask[top:top + 234, left:left + 234], pil_image[top:top + 234, left:left + 234]
        assert np.array_equal(out_mask.numpy(), pil_mask)
        ours = torch.round(out_image * 255).long().permute(1, 2, 0).numpy()
        assert np.abs(ours - pil_image).max() <= 1


def test_random_crop_pads_small_images_with_ignore():
    mask = np.ones((20, 30), dtype=np.uint8)
    image, out = build_transform(True, resize_size=None, crop_size=32)(*_pair(mask))
    padded = out == IGNORE_INDEX
    assert padded.sum() == 32 * 32 - 20 * 30
    assert torch.all(image[:, padded] == 0) and torch.all(out[~padded] == 1)


def test_eval_paper_is_a_deterministic_centre_crop_and_full_resizes_only_the_image():
    mask = np.random.default_rng(2).integers(0, 21, (45, 60)).astype(np.uint8)
    t = build_transform(False, "paper", resize_size=45, crop_size=40)  # 45 is already the shorter side: no resize
    a, b = t(*_pair(mask)), t(*_pair(mask))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    top, left = round((45 - 40) / 2), round((60 - 40) / 2)
    assert np.array_equal(a[1].numpy(), mask[top:top + 40, left:left + 40])
    image, out = build_transform(False, "full", resize_size=45)(*_pair(mask))
    assert image.shape == (3, 45, 60) and np.array_equal(out.numpy(), mask)
    # the network sees the image at the training scale; the mask is never resized (scores at its resolution)
    image, out = build_transform(False, "full", resize_size=30)(*_pair(mask))
    assert image.shape == (3, 30, 40) and np.array_equal(out.numpy(), mask)
    image, out = build_transform(False, "full", resize_size=30, square_resize=True)(*_pair(mask))
    assert image.shape == (3, 30, 30) and np.array_equal(out.numpy(), mask)


def test_normalize_applies_imagenet_statistics():
    mask = np.random.default_rng(3).integers(0, 21, (16, 16)).astype(np.uint8)
    raw, _ = build_transform(False, "full", resize_size=None)(*_pair(mask))
    norm, _ = build_transform(False, "full", resize_size=None, normalize=True)(*_pair(mask))
    mean, std = torch.tensor(data.IMAGENET_MEAN)[:, None, None], torch.tensor(data.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(norm, (raw - mean) / std)


def test_transform_arguments_are_checked():
    with pytest.raises(ValueError, match="resize_size >= crop_size"):
        build_transform(False, "paper", resize_size=100, crop_size=224)
    with pytest.raises(ValueError, match="'paper', 'full'"):
        build_transform(False, "center")
    with pytest.raises(ValueError, match="crop_size"):
        build_transform(True, crop_size=0)


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_a_pure_function_of_seed_split_index():
    first = synthetic_sample(0, "train", 7, 48)
    for i in range(3):  # other samples in between change nothing
        synthetic_sample(0, "train", i, 48)
    again = synthetic_sample(0, "train", 7, 48)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    ds_a = SyntheticSegmentation("train", 10, image_size=48)
    ds_b = SyntheticSegmentation("train", 10, image_size=48, pregenerate=True)
    _assert_same_items([ds_a[9], ds_a[2]], [ds_b[9], ds_b[2]])
    assert np.array_equal(ds_a[7][1].numpy(), first[1])
    assert not np.array_equal(synthetic_sample(1, "train", 7, 48)[0], first[0]), "the seed must matter"


def test_synthetic_splits_never_share_samples():
    def digests(split):
        return {hashlib.sha1(synthetic_sample(0, split, i, 32)[0].tobytes()).hexdigest() for i in range(64)}
    train, val, test = digests("train"), digests("val"), digests("test")
    assert len(train) == len(val) == len(test) == 64
    assert not (train & val) and not (train & test) and not (val & test)


def test_synthetic_sample_types_sizes_and_classes():
    image, mask = synthetic_sample(3, "val", 0, (40, 72))
    assert image.shape == (40, 72, 3) and image.dtype == np.uint8 and mask.shape == (40, 72)
    seen = set()
    for i in range(20):
        seen |= set(np.unique(synthetic_sample(0, "train", i, 64, "hard")[1]).tolist())
    assert seen == set(range(7))
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        synthetic_sample(0, "holdout", 0)
    with pytest.raises(ValueError, match="seed"):
        synthetic_sample(-1, "train", 0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticSegmentation("train", 4, image_size=(0, 8))


@pytest.mark.parametrize("cls", range(1, 7))
def test_synthetic_shape_areas_match_geometry(cls):
    r, n = 60.0, 401
    coords = np.arange(n, dtype=np.float32) - n // 2
    v, u = np.meshgrid(coords, coords, indexing="ij")
    area = synthetic._shape_mask(cls, u, v, r, np.random.default_rng(5)).sum()
    draws = np.random.default_rng(5)  # the same random proportions, drawn again
    if cls == 1:
        expected = math.pi * r * r
    elif cls == 2:
        expected = (1.7 * r) ** 2
    elif cls == 3:
        expected = 3 * math.sqrt(3) / 4 * (1.2 * r) ** 2
    elif cls == 4:
        r_in = r * draws.uniform(0.45, 0.7)
        expected = math.pi * (r * r - r_in * r_in)
        assert not synthetic._shape_mask(cls, u, v, r, np.random.default_rng(5))[n // 2, n // 2], "ring needs a hole"
    elif cls == 5:
        w = r * draws.uniform(0.22, 0.35)
        expected = 2 * (2 * r) * (2 * w) - (2 * w) ** 2
    else:
        half_length, w = r * draws.uniform(1.5, 2.5), r * draws.uniform(0.15, 0.3)
        expected = 4 * half_length * w
    assert abs(area - expected) / expected < 0.02


@pytest.mark.parametrize("level", list(data.SYNTHETIC_LEVELS))
def test_synthetic_colour_alone_cannot_segment(level):
    """At every level, no per-pixel function of RGB beats the class frequencies: neither logistic regression nor a
    random forest (nonlinear) predicts better than the majority class on held-out images."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    def pixels(split, count):
        pairs = [synthetic_sample(0, split, i, 64, level) for i in range(count)]
        return (np.concatenate([p[0].reshape(-1, 3) for p in pairs]) / 255.0,
                np.concatenate([p[1].ravel() for p in pairs]))

    x_train, y_train = pixels("train", 24)
    x_val, y_val = pixels("val", 12)
    pick = np.random.default_rng(0).choice(len(y_train), 20000, replace=False)
    majority = np.bincount(y_val).max() / len(y_val)
    linear = LogisticRegression(max_iter=300).fit(x_train[pick], y_train[pick]).predict(x_val)
    assert (linear == y_val).mean() <= majority + 0.01
    ious = [((linear == c) & (y_val == c)).sum() / max(((linear == c) | (y_val == c)).sum(), 1) for c in range(1, 7)]
    assert max(ious) < 0.05, f"a shape class is separable by colour alone: IoUs {ious}"
    forest = RandomForestClassifier(50, min_samples_leaf=20, random_state=0).fit(x_train[pick], y_train[pick])
    assert (forest.predict(x_val) == y_val).mean() <= majority + 0.01


@pytest.mark.parametrize("level", list(data.SYNTHETIC_LEVELS))
def test_synthetic_classes_share_one_colour_distribution(level):
    """Every region's painted colours come from one distribution: the base colour is uniform on the RGB cube for the
    background and for objects (Kolmogorov-Smirnov against the uniform law), whatever the background is; rendered
    pixels of every class have the same mean colour.  (The camera blur mixes colours along edges, so pixels of thin
    classes are slightly less extreme; test_synthetic_colour_alone_cannot_segment shows no classifier gains from it.)"""
    from scipy import stats as sps

    lv = data.SYNTHETIC_LEVELS[level]
    rng = np.random.default_rng(1)
    backgrounds = np.array([synthetic._region_colours(rng, lv, None) for _ in range(3000)])
    objects = np.array([synthetic._region_colours(rng, lv, bg[0]) for bg in backgrounds])
    for colours in (backgrounds, objects):
        for channel in range(3):
            assert sps.kstest(colours[:, 0, channel], "uniform").pvalue > 0.001  # base colour
            assert sps.kstest(colours[:, 1, channel], "uniform").pvalue > 0.001  # the texture's second colour
    pairs = [synthetic_sample(0, "train", i, 32, level) for i in range(200)]
    rgb = np.concatenate([p[0].reshape(-1, 3) for p in pairs]) / 255.0
    labels = np.concatenate([p[1].ravel() for p in pairs])
    present = [c for c in range(7) if (labels == c).sum() > 1000]
    assert present == [0, *lv.classes]
    means = np.array([rgb[labels == c].mean(0) for c in present])
    assert np.abs(means - 0.5).max() < 0.05  # ~100-300 objects per class: means of uniform colours scatter ~0.02


def test_hard_level_is_the_original_generator():
    # sha1 of samples 0-19 (64x64) as the generator made them before levels existed (commit b463377)
    digest = hashlib.sha1()
    for i in range(20):
        image, mask = synthetic_sample(0, "train", i, 64, "hard")
        digest.update(image.tobytes())
        digest.update(mask.tobytes())
    assert digest.hexdigest() == "8a58e4d794c4a355bfb3a1cd54086728342090a5"


@pytest.mark.parametrize("level", list(data.SYNTHETIC_LEVELS))
def test_every_level_is_deterministic_and_its_splits_disjoint(level):
    first = synthetic_sample(5, "select", 3, 40, level)
    assert all(np.array_equal(a, b) for a, b in zip(first, synthetic_sample(5, "select", 3, 40, level)))
    digests = {split: {hashlib.sha1(synthetic_sample(0, split, i, 32, level)[0].tobytes()).hexdigest()
                       for i in range(40)} for split in ("train", "val", "test", "select")}
    assert all(len(d) == 40 for d in digests.values())
    splits = list(digests)
    assert all(not digests[a] & digests[b] for i, a in enumerate(splits) for b in splits[i + 1:])


def test_levels_differ_and_unknown_levels_are_named():
    masks = {lv: synthetic_sample(0, "train", 0, 48, lv)[1] for lv in data.SYNTHETIC_LEVELS}
    assert not np.array_equal(masks["easy"], masks["hard"])
    easy_ids = set(np.unique(np.concatenate([synthetic_sample(0, "train", i, 48, "easy")[1].ravel()
                                             for i in range(20)])).tolist())
    assert easy_ids == {0, 1, 4, 6}  # background, disc, ring, bar
    with pytest.raises(ValueError, match="synthetic level 'extreme'"):
        synthetic_sample(0, "train", 0, 32, "extreme")
    with pytest.raises(ValueError, match="synthetic level"):
        build_dataset("synthetic", "train", train=True, synthetic_level="extreme", resize_size=36, crop_size=32)


def test_objects_keep_their_least_contrast_with_the_background():
    # easy: flat objects on a flat or gradient background whose base colour differs by >= 0.3 per channel (mod 1)
    rng = np.random.default_rng(0)
    level = data.SYNTHETIC_LEVELS["easy"]
    for _ in range(200):
        background = rng.random(3).astype(np.float32)
        c0, _ = synthetic._region_colours(rng, level, background)
        cyclic = np.minimum(np.abs(c0 - background), 1 - np.abs(c0 - background))
        assert cyclic.min() >= 0.3 - 1e-6


def test_build_synthetic_dataset_items():
    ds = build_dataset("synthetic", "train", train=True, resize_size=40, crop_size=32, num_samples=6)
    assert len(ds) == 6
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert mask.shape == (32, 32) and mask.dtype == torch.int64 and int(mask.max()) < 7
    assert len(build_dataset("synthetic", "val", train=False, num_samples=3, resize_size=40, crop_size=32)) == 3
    full = build_dataset("synthetic", "val", train=False, protocol="full", resize_size=40, num_samples=2)
    assert full[1][1].shape == (40, 40)
    assert np.array_equal(full[1][1].numpy(), synthetic_sample(0, "val", 1, 40)[1])
    torch.manual_seed(0)
    plain = _items(ds)
    torch.manual_seed(0)
    cached = _items(build_dataset("synthetic", "train", train=True, resize_size=40, crop_size=32, num_samples=6,
                                  cache_dir=True))
    _assert_same_items(plain, cached)
    assert len(build_dataset("synthetic", "val", train=False, num_samples=200)) == 200  # one count: how many
    with pytest.raises(ValueError, match="num_samples"):
        build_dataset("synthetic", "val", train=False, num_samples=0)


def test_random_crop_protocol_crops_windows_of_the_resized_image():
    # The authors' evaluation: resize + a random crop. Synthetic images are generated at resize_size, so each
    # item must be some 32x32 window of the whole 40x40 sample, and the windows must vary.
    kw = dict(resize_size=40, crop_size=32, num_samples=8)
    full = _items(build_dataset("synthetic", "val", train=False, protocol="full", **kw))
    torch.manual_seed(0)
    crops = _items(build_dataset("synthetic", "val", train=False, protocol="random-crop", **kw))
    offsets = set()
    for (image, mask), (whole_image, whole_mask) in zip(crops, full):
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
        found = [(y, x) for y in range(9) for x in range(9)
                 if torch.equal(whole_mask[y:y + 32, x:x + 32], mask)
                 and torch.equal(whole_image[:, y:y + 32, x:x + 32], image)]
        assert found, "a random-crop item is not a window of the resized image"
        offsets.add(found[0])
    assert len(offsets) > 1, "every crop at the same place: not random"


# ---------------------------------------------------------------------------------------------- VOC

def test_voc_full_protocol_returns_the_files_exactly(voc_root):
    ds = build_dataset("voc", "train", voc_root, train=False, protocol="full", resize_size=None)
    assert len(ds) == len(VOC_SPLITS["train"])
    base = voc_root / "VOCdevkit" / "VOC2012"
    for (image, mask), image_id in zip(_items(ds), VOC_SPLITS["train"]):
        jpeg = np.array(Image.open(base / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        png = Image.open(base / "SegmentationClass" / f"{image_id}.png")
        assert png.mode == "P"
        assert torch.equal(torch.round(image * 255).to(torch.uint8), torch.from_numpy(jpeg).permute(2, 0, 1))
        assert np.array_equal(mask.numpy(), np.asarray(png))
        assert IGNORE_INDEX in mask and int(mask[mask != IGNORE_INDEX].max()) <= 20


def test_voc_train_items_and_loader(voc_root):
    ds = build_dataset("voc", "train", voc_root, train=True, normalize=True)
    images, masks = next(iter(DataLoader(ds, batch_size=2)))
    assert images.shape == (2, 3, 224, 224) and masks.shape == (2, 224, 224) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(21)) | {IGNORE_INDEX}
    assert images.min() < 0, "ImageNet normalisation shifts the values"
    small = build_dataset("voc", "val", voc_root, train=False, num_samples=1)
    assert len(small) == 1 and small.samples[0][0].stem == VOC_SPLITS["val"][0]


def test_voc_missing_root_names_the_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012/JPEGImages.*--download.*VOCtrainval_11-May-2012"):
        build_dataset("voc", "train", tmp_path, train=True)


def test_voc_missing_split_file_or_listed_image(voc_root):
    base = voc_root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val.txt"):
        build_dataset("voc", "val", voc_root, train=False)
    missing = base / "JPEGImages" / f"{VOC_SPLITS['train'][1]}.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_dataset("voc", "train", voc_root, train=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_voc_corrupt_image_names_the_file(voc_root, damage):
    path = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_SPLITS['train'][0]}.jpg"
    content = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else content[: len(content) // 2])
    ds = build_dataset("voc", "train", voc_root, train=True)  # construction is cheap and does not decode
    with pytest.raises(ValueError, match=f"cannot read image {path}"):
        ds[0]
    ds[1]  # the other items still load


def test_voc_mask_with_values_out_of_range_names_file_and_values(voc_root):
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_SPLITS['val'][1]}.png"
    labels = np.asarray(Image.open(path)).copy()
    labels[0, :3] = [42, 21, 21]
    write_voc_mask(path, labels)
    ds = build_dataset("voc", "val", voc_root, train=False)
    with pytest.raises(ValueError, match=rf"{path} has values \[21, 42\]"):
        ds[1]


def test_voc_rgb_mask_is_rejected(voc_root):
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_SPLITS['val'][0]}.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ValueError, match=f"{path} has mode 'RGB'"):
        build_dataset("voc", "val", voc_root, train=False)[0]


def test_voc_image_and_mask_sizes_must_match(voc_root):
    image_id = VOC_SPLITS["train"][2]
    path = voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png"
    write_voc_mask(path, np.zeros((10, 12), dtype=np.uint8))
    ds = build_dataset("voc", "train", voc_root, train=True)
    with pytest.raises(ValueError, match=rf"{image_id}.jpg is \d+x\d+ .* mask {path} is 12x10"):
        ds[2]


def test_bad_names_and_arguments(voc_root):
    with pytest.raises(ValueError, match="'synthetic', 'voc', 'voc_aug', 'cityscapes'"):
        build_dataset("ade20k", "train", train=True)
    with pytest.raises(ValueError, match="'train', 'val', 'trainval'"):
        build_dataset("voc", "test", voc_root, train=False)
    with pytest.raises(ValueError, match="root"):
        build_dataset("voc", "train", train=True)
    with pytest.raises(ValueError, match="evaluation"):
        build_dataset("voc", "train", voc_root, train=True, protocol="full")
    with pytest.raises(ValueError, match="num_samples=9"):
        build_dataset("voc", "train", voc_root, train=True, num_samples=9)
    with pytest.raises(ValueError, match="num_samples"):
        build_dataset("voc", "train", voc_root, train=True, num_samples=0)


# ---------------------------------------------------------------------------------------------- Cityscapes

def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root):
    ds = build_dataset("cityscapes", "train", cityscapes_root, train=False, protocol="full", resize_size=None)
    assert len(ds) == 3
    names = [p[0].name for p in ds.samples]
    assert names == sorted(names) and names[0] == "aachen_000000_000019_leftImg8bit.png"
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    for (image, mask), (image_path, label_path) in zip(_items(ds), ds.samples):
        label_ids = np.asarray(Image.open(label_path))
        assert image.shape == (3, 32, 64)
        for block, (label_id, train_id) in enumerate(CITYSCAPES_KNOWN.items()):  # road, car, unlabeled, bicycle
            assert label_ids[0, 8 * block] == label_id and mask[0, 8 * block] == train_id
        assert np.array_equal(mask.numpy(), lut[label_ids])
    val = build_dataset("cityscapes", "val", cityscapes_root, train=True, resize_size=40, crop_size=32)
    assert len(val) == 2 and val[0][0].shape == (3, 32, 32)


def test_cityscapes_missing_root_names_archives(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/train.*gtFine_trainvaltest\.zip.*cityscapes-dataset"):
        build_dataset("cityscapes", "train", tmp_path, train=True)
    with pytest.raises(ValueError, match="'train', 'val'"):
        build_dataset("cityscapes", "test", tmp_path, train=False)


def test_cityscapes_bad_label_ids_and_missing_labels(cityscapes_root):
    ds = build_dataset("cityscapes", "val", cityscapes_root, train=False, protocol="full")
    label_path = ds.samples[0][1]
    label_ids = np.asarray(Image.open(label_path)).copy()
    label_ids[5, 5] = 40
    Image.fromarray(label_ids).save(label_path)
    with pytest.raises(ValueError, match=rf"{label_path} has values \[40\] outside \[0, 34\)"):
        ds[0]
    ds.samples[1][1].unlink()
    with pytest.raises(FileNotFoundError, match="gtFine_labelIds.png"):
        build_dataset("cityscapes", "val", cityscapes_root, train=False)


# ---------------------------------------------------------------------------------------------- cache

@pytest.mark.parametrize("name", ["voc", "cityscapes"])
@pytest.mark.parametrize("kwargs", [dict(train=True), dict(train=True, square_resize=True, normalize=True),
                                    dict(train=False), dict(train=False, protocol="full"),
                                    dict(train=False, protocol="random-crop")])
def test_cache_gives_identical_items(request, tmp_path, name, kwargs):
    root = request.getfixturevalue(f"{name}_root")
    kwargs = dict(resize_size=40, crop_size=32, **kwargs)
    torch.manual_seed(0)
    plain = _items(build_dataset(name, "train", root, **kwargs))
    torch.manual_seed(0)
    cached_ds = build_dataset(name, "train", root, cache_dir=tmp_path / "cache", **kwargs)
    assert isinstance(cached_ds, ResizedCache) and cached_ds.built
    _assert_same_items(plain, _items(cached_ds))
    torch.manual_seed(0)
    reloaded = build_dataset(name, "train", root, cache_dir=tmp_path / "cache", **kwargs)
    assert not reloaded.built
    _assert_same_items(plain, _items(reloaded))


def test_cache_decodes_nothing_and_stores_resized_arrays(voc_root, monkeypatch):
    ds = build_dataset("voc", "train", voc_root, train=True, cache_dir=True)
    cache_dir = voc_root / ".mistudy_cache"
    assert ds.cache_dir == cache_dir and len(list(cache_dir.glob("*.json"))) == 1
    assert not list(cache_dir.glob(".*tmp*")), "temporary files must be renamed or removed"
    # Shorter side -> 234: 60x45 -> 312x234, 45x61 -> 234x317, 52x40 -> 304x234 (height, width listed).
    assert ds.shapes.tolist() == [[234, 312], [317, 234], [234, 304]]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached path must not decode files")

    monkeypatch.setattr(files.Image, "open", no_decoding)
    again = build_dataset("voc", "train", voc_root, train=True, cache_dir=True)
    assert not again.built
    image, mask = again[2]
    assert image.shape == (3, 224, 224) and mask.shape == (224, 224)


def test_cache_is_rebuilt_when_a_source_file_changes(voc_root, tmp_path):
    cache = tmp_path / "cache"
    kwargs = dict(train=False, protocol="full", cache_dir=cache)
    first = build_dataset("voc", "val", voc_root, **kwargs)
    assert first.built
    assert not build_dataset("voc", "val", voc_root, **kwargs).built
    jpeg = first.samples[0][0]
    os.utime(jpeg, ns=(jpeg.stat().st_atime_ns, jpeg.stat().st_mtime_ns + 10**9))  # `touch`: the content is the same
    assert not build_dataset("voc", "val", voc_root, **kwargs).built
    png = first.samples[1][1]
    labels = np.asarray(Image.open(png)).copy()
    labels[labels != IGNORE_INDEX] = 7
    write_voc_mask(png, labels)
    rebuilt = build_dataset("voc", "val", voc_root, **kwargs)
    assert rebuilt.built and np.array_equal(rebuilt[1][1].numpy(), labels)
    assert len(list(cache.glob("*.json"))) == 1, "the stale cache's files are deleted"
    assert len(list(cache.iterdir())) == 5  # images, masks, index, manifest, and the file digests


def test_cache_notices_a_rewrite_that_keeps_size_and_mtime(voc_root, tmp_path):
    """A mask rewritten with other labels, its size and mtime put back as they were: the cache is keyed on content,
    so the new labels are served, not the stale ones (issue 21)."""
    kwargs = dict(train=False, protocol="full", cache_dir=tmp_path / "cache")
    first = build_dataset("voc", "val", voc_root, **kwargs)
    png = first.samples[0][1]
    before = png.stat()
    labels = np.asarray(Image.open(png)).copy()
    flipped = np.where(labels == 0, 1, np.where(labels == 1, 0, labels)).astype(np.uint8)
    write_voc_mask(png, flipped)
    data_bytes = png.read_bytes()
    if len(data_bytes) != before.st_size:  # keep the size: pad the PNG (bytes after IEND are ignored by readers)
        assert len(data_bytes) < before.st_size, "the rewritten mask must not be larger for this test"
        png.write_bytes(data_bytes + b"\0" * (before.st_size - len(data_bytes)))
    os.utime(png, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (png.stat().st_size, png.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = build_dataset("voc", "val", voc_root, **kwargs)
    assert again.built and np.array_equal(again[0][1].numpy(), flipped)


def test_incomplete_cache_is_rebuilt(voc_root, tmp_path):
    ds = build_dataset("voc", "train", voc_root, train=True, cache_dir=tmp_path)
    blob = ds._path(".images.bin")
    blob.write_bytes(blob.read_bytes()[:-10])
    assert build_dataset("voc", "train", voc_root, train=True, cache_dir=tmp_path).built
    subset = build_dataset("voc", "train", voc_root, train=True, cache_dir=tmp_path, num_samples=2)
    assert subset.built and len(subset) == 2
    assert len(list(tmp_path.glob("*.json"))) == 2, "a subset's cache does not replace the full split's"


def test_cached_dataset_works_in_worker_processes(voc_root, tmp_path):
    ds = build_dataset("voc", "train", voc_root, train=False, cache_dir=tmp_path, resize_size=40, crop_size=32)
    ds[0]  # maps the blobs in this process
    assert len(pickle.dumps(ds)) < ds._path(".images.bin").stat().st_size, "memmaps must not be pickled"
    serial = list(DataLoader(ds, batch_size=2))
    parallel = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert all(torch.equal(a, b) for s, p in zip(serial, parallel) for a, b in zip(s, p))


def test_cache_build_stops_at_a_corrupt_file_and_leaves_nothing_behind(voc_root, tmp_path):
    path = voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{VOC_SPLITS['train'][1]}.jpg"
    path.write_bytes(b"broken")
    with pytest.raises(ValueError, match=f"cannot read image {path}"):
        build_dataset("voc", "train", voc_root, train=True, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["file-digests.cache"]  # no partial cache


def test_cityscapes_selection_split_is_held_out_of_train(cityscapes_root):
    train_all = build_dataset("cityscapes", "train", cityscapes_root, train=False, protocol="full", resize_size=None)
    select = build_dataset("cityscapes", "select", cityscapes_root, train=False, select_fraction=0.5, resize_size=None,
                           protocol="full")
    rest = build_dataset("cityscapes", "train", cityscapes_root, train=False, select_fraction=0.5, resize_size=None,
                         protocol="full")
    names = lambda ds: [p[0].name for p in ds.samples]  # noqa: E731
    assert sorted(names(select) + names(rest)) == names(train_all) and not set(names(select)) & set(names(rest))
    assert all(data.in_selection_split(p[0].stem, 0.5) for p in select.samples)
    with pytest.raises(ValueError, match="needs select_fraction > 0"):
        build_dataset("cityscapes", "select", cityscapes_root, train=False)


# ----------------------------------------------------------------------------- data on request (--download)

def test_voc_is_fetched_by_torchvisions_download_into_the_root_once(voc_root, tmp_path, monkeypatch):
    import shutil

    import torchvision.datasets.voc as tv_voc

    calls = []

    def extract(url, download_root, filename=None, md5=None):  # what torchvision's download leaves in the root
        calls.append((url, download_root, filename))
        shutil.copytree(voc_root / "VOCdevkit", os.path.join(download_root, "VOCdevkit"))

    monkeypatch.setattr(tv_voc, "download_and_extract_archive", extract)
    from mistudy.training.config import TrainConfig

    root = tmp_path / "new" / "voc"
    TrainConfig(dataset="voc", data_root=str(root), download=True).check_paths()  # what a run does first
    assert calls == [("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", str(root),
                      "VOCtrainval_11-May-2012.tar")]
    assert len(build_dataset("voc", "val", root, train=False)) == len(VOC_SPLITS["val"])
    data.download("voc", root)
    assert len(calls) == 1  # complete: the 2 GB archive is not fetched nor extracted again


def test_voc_download_without_network_names_the_url_and_where_to_put_the_archive(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def refused(*args, **kwargs):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", refused)
    with pytest.raises(FileNotFoundError) as e:
        data.download("voc", tmp_path / "voc")
    message = str(e.value)
    assert "\n" not in message
    assert "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar" in message
    assert "Connection refused" in message and f"put VOCtrainval_11-May-2012.tar at " \
        f"{tmp_path / 'voc' / 'VOCtrainval_11-May-2012.tar'}" in message


def test_voc_download_into_a_read_only_root_names_it(tmp_path, monkeypatch):
    import torchvision.datasets.voc as tv_voc

    root = tmp_path / "readonly"
    root.mkdir()
    root.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: the refusal an ordinary user's write meets
            def refuse(url, download_root, filename=None, md5=None):
                raise PermissionError(13, "Permission denied", os.path.join(download_root, filename))
            monkeypatch.setattr(tv_voc, "download_and_extract_archive", refuse)
        with pytest.raises(ValueError, match=rf"^--download: the data root {root} is not writable"):
            data.download("voc", root)
    finally:
        root.chmod(0o755)


def test_cityscapes_download_names_the_archives_the_site_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.download("cityscapes", tmp_path)
    message = str(e.value)
    for part in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip", "https://www.cityscapes-dataset.com",
                 "<root>/leftImg8bit/train/<city>/*_leftImg8bit.png",
                 "<root>/gtFine/train/<city>/*_gtFine_labelIds.png"):
        assert part in message
    assert "\n" not in message


def test_nothing_is_fetched_without_download(tmp_path, monkeypatch):
    from mistudy.training.config import TrainConfig

    monkeypatch.setattr(data, "download", lambda *a: pytest.fail("fetched without --download"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        TrainConfig(dataset="voc", data_root=str(tmp_path / "none")).check_paths()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"pass --download to fetch https://thor\.robots\.ox\.ac\.uk/.*\.tar"):
        build_dataset("voc", "train", tmp_path / "empty", train=True)


# ------------------------------------------------------------------- voc_aug: VOC 2012 + SBD (torchvision's SBDataset)

def test_voc_aug_trains_on_voc_and_sbd_less_voc_val(voc_root):
    write_sbd(voc_root)
    train = build_dataset("voc_aug", "train", voc_root, train=False)
    stems = [image.stem for image, _ in train.samples]
    # VOC train and SBD train + val, without VOC val's 2007_000033; sorted, each image once
    assert stems == sorted(set(VOC_SPLITS["train"]) | {"2008_100001", "2009_200002"})
    masks = {image.stem: mask for image, mask in train.samples}
    assert masks["2007_000032"].suffix == ".png" and masks["2008_100001"].suffix == ".mat"  # VOC's own mask kept
    files.check_files(train, decode_masks=True)
    _, mask = train[stems.index("2008_100001")]
    assert mask.shape == (224, 224) and set(mask.unique().tolist()) == {7}
    val = build_dataset("voc_aug", "val", voc_root, train=False)
    assert [i.stem for i, _ in val.samples] == VOC_SPLITS["val"]  # scored on VOC 2012 val
    assert data.dataset_info("voc_aug").class_names == data.dataset_info("voc").class_names


def test_voc_aug_names_a_bad_sbd_mask_and_a_missing_sbd(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Expected SBD under .*SBD/cls/\*\.mat.*--download.*benchmark\.tgz"):
        build_dataset("voc_aug", "train", voc_root, train=True)
    write_sbd(voc_root, value=30)
    train = build_dataset("voc_aug", "train", voc_root, train=True)
    with pytest.raises(ValueError, match=r"2008_100001\.mat has values \[30\] outside \[0, 21\)"):
        files.check_files(train, decode_masks=True)


def test_voc_aug_download_fetches_sbd_with_torchvision_and_names_the_url_without_network(voc_root, monkeypatch):
    import urllib.error

    import torchvision.datasets.sbd as tv_sbd

    def refused(url, download_root, filename=None, md5=None):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(tv_sbd, "download_and_extract_archive", refused)
    with pytest.raises(FileNotFoundError) as e:
        data.download("voc_aug", voc_root)  # VOC is there: only SBD is fetched
    message = str(e.value)
    assert message.startswith("cannot download SBD from https://www2.eecs.berkeley.edu/") and "\n" not in message
    assert f"put benchmark.tgz at {voc_root / 'SBD' / 'benchmark.tgz'}" in message
