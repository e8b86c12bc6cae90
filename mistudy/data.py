"""Datasets, joint image/mask transforms, class palettes and a resized-image cache.

Every dataset yields ``(image, mask)``: image float32 [3, H, W] in [0, 1] (or ImageNet-normalised), mask int64
[H, W] of class ids with ``IGNORE_INDEX`` (255) for pixels that never count.  Three datasets:

* ``"synthetic"`` -- the embedded default, generated on the fly (see ``SyntheticSegmentation``);
* ``"voc"``       -- PASCAL VOC 2012 segmentation (21 classes, 255 = object border);
* ``"cityscapes"``-- Cityscapes fine annotations mapped to the 19 official train ids (everything else 255).

``build_dataset`` is the one entry point the trainer and the notebooks use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mistudy.atomic import atomic_file

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SPLITS = {
    "synthetic": ("train", "val", "test", "select"),
    "voc": ("train", "val", "trainval", "select"),
    "cityscapes": ("train", "val", "select"),
}
PROTOCOLS = ("paper", "full", "random-crop")  # evaluation transforms, see eval_transform


def _check_choice(kind: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(map(repr, valid))}")


# --------------------------------------------------------------------------------------------------------------------
# Class names and palettes
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # eq=False: the ndarray field has no boolean ==
class DatasetInfo:
    """Names and figure colours of a dataset's classes; ``palette`` is uint8 [num_classes, 3] (read-only)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray


SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross", "bar")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# labelId -> trainId, names and colours come from torchvision's copy of the official cityscapesScripts table.
_CITYSCAPES_TRAIN = sorted(
    (c for c in torchvision.datasets.Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX), key=lambda c: c.train_id
)
CITYSCAPES_CLASSES = tuple(c.name for c in _CITYSCAPES_TRAIN)
CITYSCAPES_NUM_LABEL_IDS = 34  # labelIds PNGs hold 0..33
_CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _c in _CITYSCAPES_TRAIN:
    _CITYSCAPES_LUT[_c.id] = _c.train_id


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (the palette of its PNG masks): uint8 [num_colors, 3]."""
    ids = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for bit in range(8):  # the devkit spreads the bits of the class id over the high bits of R, G and B
        for channel in range(3):
            palette[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    array.setflags(write=False)
    return array


_INFOS = {
    "synthetic": DatasetInfo("synthetic", len(SYNTHETIC_CLASSES), SYNTHETIC_CLASSES, _frozen(np.array(
        [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]))),
    "voc": DatasetInfo("voc", len(VOC_CLASSES), VOC_CLASSES, _frozen(voc_palette(len(VOC_CLASSES)))),
    "cityscapes": DatasetInfo("cityscapes", len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES,
                              _frozen(np.array([c.color for c in _CITYSCAPES_TRAIN]))),
}


def dataset_info(name: str) -> DatasetInfo:
    """Class names and palette of ``"synthetic"``, ``"voc"`` or ``"cityscapes"``."""
    _check_choice("dataset", name, tuple(_INFOS))
    return _INFOS[name]


IGNORE_COLOR = (255, 255, 255)


def colorize_mask(mask: np.ndarray | torch.Tensor, name_or_info: str | DatasetInfo) -> np.ndarray:
    """Paint a class-id mask [H, W] with the dataset's palette -> uint8 [H, W, 3].

    Ignored pixels (255) are painted white (``IGNORE_COLOR``); any other id outside [0, num_classes) raises.
    """
    info = name_or_info if isinstance(name_or_info, DatasetInfo) else dataset_info(name_or_info)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be integer class ids [H, W], got {mask.dtype} of shape {mask.shape}")
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= info.num_classes))
    if bad.any():
        raise ValueError(f"mask has ids {np.unique(mask[bad]).tolist()} outside [0, {info.num_classes}) "
                         f"for dataset {info.name!r}")
    lut = np.vstack([info.palette, np.array([IGNORE_COLOR], dtype=np.uint8)])
    return lut[np.where(mask == IGNORE_INDEX, info.num_classes, mask)]


def display_image(image, normalized: bool) -> np.ndarray:
    """A dataset image tensor [3, H, W] (ImageNet-normalised if ``normalized``) -> float array [H, W, 3] in [0, 1]."""
    x = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {x.shape}")
    if normalized:
        mean, std = (np.array(v, dtype=np.float32)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = x * std + mean
    return np.clip(x.transpose(1, 2, 0), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Joint transforms.  Inputs: (tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W]); outputs plain tensors
# (float32 [3, h, w], int64 [h, w]).  tv_tensors let v2 apply the same geometry to both and keep masks nearest.
# --------------------------------------------------------------------------------------------------------------------

class _Resize(v2.Resize):
    """``v2.Resize`` with masks resized by NEAREST_EXACT.

    v2's default NEAREST for masks samples source pixel floor(i * scale), up to a pixel away from where the
    (antialiased bilinear) image samples; NEAREST_EXACT samples at pixel centres, floor((i + 0.5) * scale), as PIL
    does, so mask and image stay aligned.
    """

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, self.size, interpolation=InterpolationMode.NEAREST_EXACT, max_size=self.max_size)
        return super().transform(inpt, params)


class _ResizeImageOnly(v2.Resize):
    """``v2.Resize`` of the image alone: the mask keeps its own resolution (the "full" protocol scores there)."""

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return super().transform(inpt, params)


def _check_size(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _resize_steps(resize_size: int | None, square_resize: bool) -> list:
    """Shorter side -> resize_size (aspect kept), or resize_size x resize_size; None = no resize."""
    _check_size("resize_size", resize_size, allow_none=True)
    if resize_size is None:
        return []
    return [_Resize((resize_size, resize_size) if square_resize else resize_size)]


def _tensor_steps(normalize: bool) -> list:
    steps = [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)]
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return steps + [v2.ToPureTensor()]


def _train_steps(crop_size: int, normalize: bool) -> list:
    _check_size("crop_size", crop_size)
    # Padding only happens when an image is smaller than the crop: padded pixels are black and ignored.
    crop = v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
    return [crop] + _tensor_steps(normalize)


def _eval_steps(protocol: str, resize_size: int | None, crop_size: int, normalize: bool,
                square_resize: bool = False) -> list:
    _check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "full":  # the image at the training scale, the mask as it is
        _check_size("resize_size", resize_size, allow_none=True)
        size = None if resize_size is None else (resize_size, resize_size) if square_resize else resize_size
        return ([_ResizeImageOnly(size)] if size is not None else []) + _tensor_steps(normalize)
    if protocol == "random-crop":
        return _train_steps(crop_size, normalize)
    _check_size("crop_size", crop_size)
    # CenterCrop would pad masks with 0 (= a class), so the resized image must cover the crop.
    if resize_size is None or resize_size < crop_size:
        raise ValueError(f"protocol='paper' needs resize_size >= crop_size, got {resize_size} < {crop_size}")
    return [v2.CenterCrop(crop_size)] + _tensor_steps(normalize)


def train_transform(resize_size: int | None = 234, crop_size: int = 224, square_resize: bool = False,
                    normalize: bool = False) -> v2.Compose:
    """The paper's training transform: resize, then a random ``crop_size`` crop.

    Resize: shorter side to ``resize_size`` (aspect kept; default), or ``square_resize=True`` for the paper's
    literal ``resize_size x resize_size``; None skips it.  Images smaller than the crop are padded (image 0, mask
    255).  ``normalize`` applies ImageNet mean/std.  Call as ``image, mask = t(Image uint8 [3,H,W], Mask [H,W])``.
    """
    return v2.Compose(_resize_steps(resize_size, square_resize) + _train_steps(crop_size, normalize))


def eval_transform(protocol: str = "paper", resize_size: int | None = 234, crop_size: int = 224,
                   square_resize: bool = False, normalize: bool = False) -> v2.Compose:
    """Evaluation transform.

    ``"paper"``: the training resize, then a centre ``crop_size`` crop (what the paper's numbers measure, without
    the noise of a random crop).
    ``"full"``: the whole image, resized as in training (the scale the network learnt), with its mask at the mask's
    own resolution: predictions are resized back to the mask and scored there, never the mask to the prediction
    (the standard benchmark protocol; images differ in size, so batch them one at a time).
    ``"random-crop"``: the training resize and random crop, as the paper's text and the authors' scripts
    evaluate; random, so seed it per sample (the training engine does: the same crops at every validation).
    """
    _check_choice("protocol", protocol, PROTOCOLS)
    resize = _resize_steps(resize_size, square_resize) if protocol != "full" else []
    return v2.Compose(resize + _eval_steps(protocol, resize_size, crop_size, normalize, square_resize))


def _to_tensors() -> v2.Compose:
    return v2.Compose(_tensor_steps(normalize=False))


# --------------------------------------------------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------------------------------------------------

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "select": 3}
SYNTHETIC_DEFAULT_SIZES = {"train": 512, "val": 128, "test": 128, "select": 128}
TEXTURES = ("flat", "stripes", "checks", "speckle", "gradient")


@dataclass(frozen=True)
class SyntheticLevel:
    """The knobs of one difficulty level of the synthetic dataset.

    Every level keeps colour free of class information: background and objects draw their colours from one
    distribution (see ``_region_colours``), so only shape and context tell the classes apart.

    objects: (min, max) objects per image, both inclusive; more objects = more occlusion.
    radius: (min, max) object size as a fraction of the shorter image side.
    background: texture kinds drawn uniformly for the background (``TEXTURES``).
    textures: texture kinds drawn uniformly for each object.  Where they differ from ``background``, texture (not
        colour) tells objects from background locally; where they are the same, only shapes and edges do.
    contrast: 0, or the least per-channel cyclic distance between an object's base colour and the
        background's, which keeps object edges visible against the background.
    amplitude: None (a texture's second colour is independent of its first) or the largest per-channel
        difference between them (a faint texture that does not hide the region's edges).
    noise: (min, max) standard deviation of the Gaussian pixel noise (images in [0, 1]).
    """

    name: str
    objects: tuple[int, int]
    radius: tuple[float, float]
    background: tuple[str, ...]
    textures: tuple[str, ...]
    contrast: float
    amplitude: float | None
    noise: tuple[float, float]
    classes: tuple[int, ...] = (1, 2, 3, 4, 5, 6)  # the shape classes drawn (ids into SYNTHETIC_CLASSES)
    inside: bool = False  # objects lie wholly inside the frame (where they fit)
    rotate: bool = True  # random rotation; False: axis-aligned shapes


# Chosen by measured learning curves of the baseline U-Net (README "The synthetic benchmark").
SYNTHETIC_LEVELS = {
    "easy": SyntheticLevel("easy", objects=(10, 14), radius=(0.07, 0.11), background=("flat", "gradient"),
                           textures=("flat", "gradient"), contrast=0.3, amplitude=0.2, noise=(0.0, 0.02),
                           classes=(1, 4, 6), inside=True),
    "medium": SyntheticLevel("medium", objects=(8, 12), radius=(0.07, 0.11), background=("flat", "gradient", "stripes"),
                             textures=("flat", "gradient", "stripes"), contrast=0.2, amplitude=0.3,
                             noise=(0.02, 0.05), inside=True),
    # The original generator, unchanged: one texture distribution for every region, no contrast, up to 7 objects.
    "hard": SyntheticLevel("hard", objects=(3, 7), radius=(0.1, 0.22), background=TEXTURES, textures=TEXTURES,
                           contrast=0.0, amplitude=None, noise=(0.02, 0.08)),
}
SYNTHETIC_DEFAULT_LEVEL = "easy"


def _reflect(x: np.ndarray) -> np.ndarray:
    """Fold values into [0, 1] by reflection at 0 and 1."""
    x = np.mod(x, 2.0)
    return np.where(x > 1.0, 2.0 - x, x).astype(np.float32)


def _region_colours(rng: np.random.Generator, level: SyntheticLevel,
                    background: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(c0, c1) float32 [3]: a region's base colour and its texture's second colour.

    c0 is uniform on the RGB cube for every region: the background's directly, an object's as the background's
    plus a per-channel offset in [contrast, 1 - contrast] taken modulo 1 (a uniform colour shifted on the circle
    stays uniform, so objects and background share one colour distribution while differing by at least
    ``contrast`` per channel).  c1 follows from c0 by the same rule for every region.
    """
    if background is None or level.contrast == 0:
        c0 = rng.random(3, dtype=np.float32)
    else:
        c0 = np.mod(background + rng.uniform(level.contrast, 1 - level.contrast, 3), 1.0).astype(np.float32)
    if level.amplitude is None:
        c1 = rng.random(3, dtype=np.float32)
    else:
        c1 = _reflect(c0 + rng.uniform(-level.amplitude, level.amplitude, 3))
    return c0, c1


def _texture(rng: np.random.Generator, level: SyntheticLevel, yy: np.ndarray, xx: np.ndarray, scale: float,
             centre: tuple[float, float], background: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One random texture at image coordinates (yy, xx) [h, w] -> (float32 [h, w, 3] in [0, 1], base colour [3]).

    Every class (background included) draws from this one distribution, so a pixel's colour says nothing about
    its class.  Gradients run across ``centre`` (the region's centre).  Per-pixel work is only + - * / floor and
    compares (no sin/exp), so results are bit-identical on any machine.
    """
    kinds = level.background if background is None else level.textures
    kind = kinds[rng.integers(len(kinds))]
    c0, c1 = _region_colours(rng, level, background)
    angle = rng.uniform(0.0, math.pi)
    period = max(2.0, scale * rng.uniform(0.04, 0.15))
    gradient_span = scale * rng.uniform(0.3, 1.0)
    if kind == "flat":
        return np.broadcast_to(c0, yy.shape + (3,)), c0
    if kind == "speckle":
        t = rng.random(yy.shape, dtype=np.float32)
        return c0 + t[..., None] * (c1 - c0), c0
    u = xx * math.cos(angle) + yy * math.sin(angle)  # coordinate along the pattern's direction
    if kind == "stripes":
        t = (np.floor(u / period) % 2).astype(np.float32)
    elif kind == "checks":
        v = yy * math.cos(angle) - xx * math.sin(angle)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        u_centre = centre[1] * math.cos(angle) + centre[0] * math.sin(angle)
        t = np.clip(0.5 + (u - u_centre) / gradient_span, 0.0, 1.0)
    return c0 + t[..., None] * (c1 - c0), c0


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean [H, W] footprint of shape ``cls`` of size ``r`` in its own rotated frame (u, v) centred at 0."""
    d2 = u * u + v * v
    if cls == 1:  # disc
        return d2 <= r * r
    if cls == 2:  # square, half-side 0.85 r
        a = 0.85 * r
        return (np.abs(u) <= a) & (np.abs(v) <= a)
    if cls == 3:  # equilateral triangle, circumradius 1.2 r: three half-planes at 120 degrees
        apothem = 0.6 * r
        inside = u <= apothem
        for k in (1, 2):
            inside &= u * math.cos(2 * math.pi * k / 3) + v * math.sin(2 * math.pi * k / 3) <= apothem
        return inside
    if cls == 4:  # ring: the hole shows whatever lies beneath
        r_in = r * rng.uniform(0.45, 0.7)
        return (d2 <= r * r) & (d2 >= r_in * r_in)
    if cls == 5:  # cross of two arms, length 2r
        w = r * rng.uniform(0.22, 0.35)
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= w)) | ((au <= w) & (av <= r))
    if cls == 6:  # bar: a long thin rectangle
        half_length, w = r * rng.uniform(1.5, 2.5), r * rng.uniform(0.15, 0.3)
        return (np.abs(u) <= half_length) & (np.abs(v) <= w)
    raise ValueError(f"no shape for class {cls}")


def _blur3(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur of [H, W, C] with edge replication (a slight camera blur)."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def _check_synthetic_args(split: str, seed: int, image_size, level: str = SYNTHETIC_DEFAULT_LEVEL) -> None:
    _check_choice("split", split, tuple(_SPLIT_IDS))
    _check_choice("synthetic level", level, tuple(SYNTHETIC_LEVELS))
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    for side in sides:
        _check_size("image_size", side)


def synthetic_sample(seed: int, split: str, index: int, image_size: int | tuple[int, int] = 128,
                     level: str = SYNTHETIC_DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a synthetic split: (image uint8 [H, W, 3], mask uint8 [H, W]).

    A pure function of (seed, split, index, image_size, level): the generator is seeded with
    ``SeedSequence([seed, split_id, index])``, so samples do not depend on generation order and splits never
    share one.  ``level`` is a key of ``SYNTHETIC_LEVELS``.  See ``SyntheticSegmentation`` for the process.
    """
    _check_synthetic_args(split, seed, image_size, level)
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    lv = SYNTHETIC_LEVELS[level]
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index]))
    scale = float(min(height, width))
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")

    background, bg_colour = _texture(rng, lv, yy, xx, scale, (height / 2, width / 2), None)
    image = np.array(background, dtype=np.float32)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(lv.objects[0], lv.objects[1] + 1)):  # painted in order: later ones occlude
        cls = lv.classes[rng.integers(len(lv.classes))]
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        theta, r = rng.uniform(0, 2 * math.pi), scale * rng.uniform(*lv.radius)
        # Work only in the object's bounding box; its farthest point is 2.52 r (bar corner) or 1.2 r away.
        reach = r * (2.55 if cls == 6 else 1.25)
        if not lv.rotate:
            theta = 0.0
        if lv.inside:  # move the centre so that the reach stays in the frame (centred if it cannot)
            cy = min(max(cy, reach), height - reach) if 2 * reach < height else height / 2
            cx = min(max(cx, reach), width - reach) if 2 * reach < width else width / 2
        box = (slice(max(int(cy - reach), 0), min(int(cy + reach) + 2, height)),
               slice(max(int(cx - reach), 0), min(int(cx + reach) + 2, width)))
        ys, xs = yy[box], xx[box]
        dx, dy = xs - cx, ys - cy
        u = dx * math.cos(theta) + dy * math.sin(theta)
        v = dy * math.cos(theta) - dx * math.sin(theta)
        footprint = _shape_mask(cls, u, v, r, rng)
        texture, _ = _texture(rng, lv, ys, xs, scale, (cy, cx), bg_colour)
        image[box][footprint] = texture[footprint]
        mask[box][footprint] = cls

    image = _blur3(image)
    image += rng.uniform(*lv.noise) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), mask


class SyntheticSegmentation(Dataset):
    """Textured shapes whose class only shape and context can tell -- the embedded default dataset.

    Classes (7): 0 background, 1 disc, 2 square, 3 triangle, 4 ring (annulus), 5 cross, 6 bar.

    Generative process, per sample (numpy, seeded by ``SeedSequence([seed, split_id, index])``), with the knobs of
    its level (``SYNTHETIC_LEVELS``: easy, medium, hard):

    1. the background is a random texture; objects follow, each of a class drawn uniformly from the level's
       classes, with a random centre (inside the frame, or anywhere for ``hard``), rotation and size, painted in
       order so later objects occlude earlier ones;
    2. every region -- background and each object -- gets a texture (flat colour, stripes, checkerboard, speckle or
       a linear gradient between two colours) whose colours have one law for every class (``_region_colours``):
       uniform on the RGB cube, objects at least ``contrast`` away from the background per channel at the easier
       levels;
    3. the image is blurred with a [1, 2, 1] kernel and Gaussian noise is added.

    Colour therefore carries no class information (per-pixel classifiers only learn the class frequencies: see
    tests/test_data.py); a model must use shape and context: a ring's hole shows what lies beneath, bars and rings
    are thin structures, squares, triangles and discs differ at their corners.  ``hard`` (the original generator)
    adds textures that hide edges, shapes cut by the frame and heavy occlusion; a from-scratch U-Net learns little
    of it on a CPU budget (README "The synthetic benchmark").

    Items: (image float32 [3, H, W] in [0, 1] -- or whatever ``transform`` makes of it --, mask int64 [H, W]).
    ``transform`` receives (tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W]).
    ``pregenerate=True`` generates every sample once at construction (in memory) instead of per access.
    """

    name = "synthetic"
    num_classes = len(SYNTHETIC_CLASSES)

    def __init__(self, split: str, num_samples: int, image_size: int | tuple[int, int] = 128, seed: int = 0,
                 transform: Callable | None = None, pregenerate: bool = False, level: str = SYNTHETIC_DEFAULT_LEVEL):
        _check_choice("split", split, SPLITS["synthetic"])
        _check_size("num_samples", num_samples)
        _check_synthetic_args(split, seed, image_size, level)
        self.split, self.num_samples, self.image_size, self.seed = split, num_samples, image_size, seed
        self.level = level
        self.transform = transform if transform is not None else _to_tensors()
        self._samples = [synthetic_sample(seed, split, i, image_size, level) for i in range(num_samples)] \
            if pregenerate else None

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed sample: (Image uint8 [3, H, W], Mask uint8 [H, W])."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        image, mask = self._samples[index] if self._samples is not None else \
            synthetic_sample(self.seed, self.split, index, self.image_size, self.level)
        return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int):
        return self.transform(*self.load(index))


# --------------------------------------------------------------------------------------------------------------------
# VOC and Cityscapes: file pairs, checked when read
# --------------------------------------------------------------------------------------------------------------------

def _read_image(path: Path) -> torch.Tensor:
    """Decode an RGB image file -> uint8 [3, H, W]; a corrupt file raises ValueError naming it."""
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable / truncated / corrupt data
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _read_index_png(path: Path) -> np.ndarray:
    """Decode a single-channel index mask (palette 'P' or grayscale 'L' PNG) -> uint8 [H, W]."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise ValueError(f"mask {path} has mode {img.mode!r}; expected a palette ('P') or grayscale ('L') "
                                 "PNG of class indices")
            return np.array(img)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err


def in_selection_split(name: str, fraction: float) -> bool:
    """Whether the training file ``name`` (its stem) is held out for model selection.

    The first 8 hex digits of sha1(stem), read as a number in [0, 1), fall below ``fraction``: a fixed subset of
    about ``fraction`` of the official training list, the same on every machine and in every file order.
    """
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8 < fraction


def _split_for_selection(split: str, samples: list[tuple[Path, Path]], fraction: float, dataset: str):
    """The official train list without (split "train") or with only (split "select") its selection files."""
    if not 0 <= fraction < 1:
        raise ValueError(f"select_fraction must be in [0, 1), got {fraction}")
    if split == "select" and fraction == 0:
        raise ValueError(f"{dataset} split 'select' needs select_fraction > 0 (it is held out of the train list)")
    if split not in ("train", "select") or fraction == 0:
        return samples
    held_out = split == "select"
    kept = [pair for pair in samples if in_selection_split(pair[0].stem, fraction) == held_out]
    if not kept:
        raise ValueError(f"select_fraction={fraction:g} leaves {dataset} split {split!r} empty ({len(samples)} files in "
                         "the official train list); choose another fraction, or 0 for no selection split")
    return kept


class _PairedFiles(Dataset):
    """Image/mask file pairs of one split; subclasses set the layout and decode masks to class ids."""

    name: str
    num_classes: int

    def __init__(self, root, split: str, samples: list[tuple[Path, Path]], transform: Callable | None,
                 num_samples: int | None, select_fraction: float = 0.0):
        if not samples:
            raise FileNotFoundError(f"{self.name} split {split!r} under {root} lists no images")
        if num_samples is not None:
            _check_size("num_samples", num_samples)
            if num_samples > len(samples):
                raise ValueError(f"num_samples={num_samples} but {self.name} {split!r} has {len(samples)} images")
            samples = samples[:num_samples]
        missing = [str(p) for pair in samples for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.name} under {root} is incomplete: {len(missing)} listed files are "
                                    f"missing, e.g. {missing[:3]}")
        self.root, self.split, self.samples, self.num_samples = Path(root), split, samples, num_samples
        self.select_fraction = select_fraction
        self.transform = transform if transform is not None else _to_tensors()

    def __len__(self) -> int:
        return len(self.samples)

    def _decode_mask(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decode and check pair ``index``: (Image uint8 [3, H, W], Mask uint8 [H, W] of class ids / 255)."""
        image_path, mask_path = self.samples[index]
        image = _read_image(image_path)
        mask = self._decode_mask(mask_path)
        if tuple(image.shape[1:]) != mask.shape:
            raise ValueError(f"image {image_path} is {image.shape[2]}x{image.shape[1]} (WxH) but its mask "
                             f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int):
        return self.transform(*self.load(index))


def _check_ids(mask: np.ndarray, num_valid: int, path: Path, allow_ignore: bool = True) -> None:
    bad = mask >= num_valid
    if allow_ignore:
        bad &= mask != IGNORE_INDEX
    if bad.any():
        raise ValueError(f"mask {path} has values {np.unique(mask[bad]).tolist()} outside [0, {num_valid})"
                         + (f" other than {IGNORE_INDEX}" if allow_ignore else ""))


def _require(paths: list[Path], message: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}. {message}")


class VOCSegmentation(_PairedFiles):
    """PASCAL VOC 2012 segmentation: 21 classes, 255 = object borders (ignored).

    ``root`` contains ``VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
    ImageSets/Segmentation/{train,val,trainval}.txt}``; file lists come from torchvision's ``VOCSegmentation``.
    ``download=True`` (never the default) lets torchvision fetch and extract the 2 GB archive into ``root``.
    """

    name = "voc"
    num_classes = len(VOC_CLASSES)

    def __init__(self, root, split: str = "train", transform: Callable | None = None,
                 num_samples: int | None = None, download: bool = False, select_fraction: float = 0.0):
        _check_choice("split", split, SPLITS["voc"])
        base = Path(root) / "VOCdevkit" / "VOC2012"
        image_set = "train" if split == "select" else split
        if not download:
            _require([base / "JPEGImages", base / "SegmentationClass",
                      base / "ImageSets" / "Segmentation" / f"{image_set}.txt"],
                     f"Expected PASCAL VOC 2012 under {root}: <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg, "
                     "<root>/VOCdevkit/VOC2012/SegmentationClass/*.png and "
                     "<root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt; download "
                     "VOCtrainval_11-May-2012.tar from the PASCAL VOC site "
                     "(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and extract it under <root>.")
        tv = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=image_set, download=download)
        samples = [(Path(i), Path(m)) for i, m in zip(tv.images, tv.masks)]
        samples = _split_for_selection(split, samples, select_fraction, self.name)
        super().__init__(root, split, samples, transform, num_samples, select_fraction)

    def _decode_mask(self, path: Path) -> np.ndarray:
        mask = _read_index_png(path)
        _check_ids(mask, self.num_classes, path)
        return mask


class CityscapesSegmentation(_PairedFiles):
    """Cityscapes fine annotations, labelIds mapped to the 19 official trainIds (all other labels -> 255).

    ``root`` contains ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
    ``gtFine/{train,val}/<city>/<...>_gtFine_labelIds.png`` (file lists from torchvision's ``Cityscapes``, which
    also extracts ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` if only those are in ``root``).
    Pairs are sorted by file name so the order (and ``num_samples``) is the same on every file system.
    """

    name = "cityscapes"
    num_classes = len(CITYSCAPES_CLASSES)

    def __init__(self, root, split: str = "train", transform: Callable | None = None,
                 num_samples: int | None = None, select_fraction: float = 0.0):
        _check_choice("split", split, SPLITS["cityscapes"])
        root_path = Path(root)
        official = "train" if split == "select" else split
        zips = [root_path / "leftImg8bit_trainvaltest.zip", root_path / "gtFine_trainvaltest.zip"]
        if not all(z.is_file() for z in zips):
            _require([root_path / "leftImg8bit" / official, root_path / "gtFine" / official],
                     f"Expected Cityscapes under {root}: <root>/leftImg8bit/{official}/<city>/*_leftImg8bit.png and "
                     f"<root>/gtFine/{official}/<city>/*_gtFine_labelIds.png; download leftImg8bit_trainvaltest.zip and "
                     "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com (registration required) and "
                     "extract both under <root>.")
        tv = torchvision.datasets.Cityscapes(str(root), split=official, mode="fine", target_type="semantic")
        samples = sorted((Path(i), Path(t[0])) for i, t in zip(tv.images, tv.targets)
                         if i.endswith("_leftImg8bit.png"))  # skip stray files (.DS_Store, notes) in city folders
        samples = _split_for_selection(split, samples, select_fraction, self.name)
        super().__init__(root, split, samples, transform, num_samples, select_fraction)

    def _decode_mask(self, path: Path) -> np.ndarray:
        label_ids = _read_index_png(path)
        _check_ids(label_ids, CITYSCAPES_NUM_LABEL_IDS, path, allow_ignore=False)
        return _CITYSCAPES_LUT[label_ids]


# --------------------------------------------------------------------------------------------------------------------
# Cache of resized images and masks
# --------------------------------------------------------------------------------------------------------------------

_CACHE_VERSION = 1


class ResizedCache(Dataset):
    """``source`` with its resize step precomputed: uint8 images and masks stored once, cropped per item.

    Items are ``transform(*resize(*source.load(i)))`` -- bit-identical to the uncached pipeline, because the
    stored arrays are exactly what ``resize`` returned -- but an epoch decodes no JPEG/PNG.

    Files in ``cache_dir``, per (dataset, split, resize, subset) ``stem``: ``<stem>-<digest>.images.bin`` and
    ``.masks.bin`` (flat uint8 blobs, memory-mapped, so DataLoader workers share them), ``.index.npy``
    (int64 [N, 2] heights and widths) and ``.json`` (the manifest).  ``digest`` hashes the manifest key: dataset,
    split, resize parameters, torch/torchvision versions and every source file's path, size and mtime -- so a changed
    file gives another digest and the cache is rebuilt (stale files of the same stem are then deleted).  Every
    file is written to a temporary name and renamed; the manifest goes last, so a cache is used only if complete.
    """

    def __init__(self, source: _PairedFiles, resize: Callable, resize_tag: str, cache_dir,
                 transform: Callable):
        self.source, self.transform = source, transform
        self.samples = source.samples  # the (image, mask) source paths, as on the uncached dataset
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        stats = [(p, p.stat()) for pair in source.samples for p in pair]
        key = {  # the resize kernels live in torch and torchvision: a new version may resize differently
            "version": _CACHE_VERSION, "dataset": source.name, "split": source.split, "resize": resize_tag,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "files": [[str(p.relative_to(source.root)), st.st_size, st.st_mtime_ns] for p, st in stats],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        subset = "all" if source.num_samples is None else f"first{source.num_samples}"
        if source.split in ("train", "select") and source.select_fraction:
            subset += f"-select{source.select_fraction:g}"
        self.stem = f"{source.name}-{source.split}-{resize_tag}-{subset}"
        self.prefix = self.cache_dir / f"{self.stem}-{digest}"
        self.built = not self._is_complete(key)
        if self.built:
            self._build(key, resize)
        self.shapes = np.load(self._path(".index.npy"))
        sizes = self.shapes[:, 0] * self.shapes[:, 1]
        self._mask_offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._image_offsets = 3 * self._mask_offsets
        self._blobs = None

    def _path(self, suffix: str) -> Path:
        return self.prefix.with_name(self.prefix.name + suffix)

    def _is_complete(self, key: dict) -> bool:
        try:
            manifest = json.loads(self._path(".json").read_text())
            return (manifest["key"] == key and self._path(".index.npy").is_file()
                    and self._path(".images.bin").stat().st_size == manifest["image_bytes"]
                    and self._path(".masks.bin").stat().st_size == manifest["mask_bytes"])
        except (OSError, ValueError, KeyError):
            return False

    def _build(self, key: dict, resize: Callable) -> None:
        shapes = []
        images_path, masks_path = self._path(".images.bin"), self._path(".masks.bin")
        with atomic_file(images_path) as image_file, atomic_file(masks_path) as mask_file:
            for i in range(len(self.source)):  # streamed: memory stays at one image
                image, mask = resize(*self.source.load(i))
                shapes.append(mask.shape)
                image_file.write(image.numpy().tobytes())
                mask_file.write(mask.numpy().tobytes())
        with atomic_file(self._path(".index.npy")) as f:
            np.save(f, np.array(shapes, dtype=np.int64).reshape(-1, 2))
        manifest = {"key": key, "count": len(shapes), "image_bytes": images_path.stat().st_size,
                    "mask_bytes": masks_path.stat().st_size}
        with atomic_file(self._path(".json")) as f:  # last: it marks the cache complete
            f.write(json.dumps(manifest).encode())
        for old in self.cache_dir.glob(f"{self.stem}-*"):  # caches of older versions of the same files
            if not old.name.startswith(self.prefix.name):
                old.unlink(missing_ok=True)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_blobs"] = None  # memmaps would be pickled as full copies; each worker maps the files itself
        return state

    def __len__(self) -> int:
        return len(self.shapes)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The stored resized pair: (Image uint8 [3, h, w], Mask uint8 [h, w])."""
        if self._blobs is None:
            self._blobs = (np.memmap(self._path(".images.bin"), dtype=np.uint8, mode="r"),
                           np.memmap(self._path(".masks.bin"), dtype=np.uint8, mode="r"))
        images, masks = self._blobs
        h, w = (int(s) for s in self.shapes[index])
        image = np.array(images[self._image_offsets[index]:self._image_offsets[index + 1]]).reshape(3, h, w)
        mask = np.array(masks[self._mask_offsets[index]:self._mask_offsets[index + 1]]).reshape(h, w)
        return tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy(mask))

    def __getitem__(self, index: int):
        return self.transform(*self.load(index))


# --------------------------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------------------------

def build_dataset(name: str, split: str, root=None, *, train: bool, protocol: str = "paper",
                  resize_size: int | None = 234, crop_size: int = 224, square_resize: bool = False,
                  normalize: bool = False, num_samples: int | None = None, cache_dir=None, seed: int = 0,
                  synthetic_size: int | None = None, synthetic_level: str = SYNTHETIC_DEFAULT_LEVEL,
                  select_fraction: float = 0.0) -> Dataset:
    """A split of ``"synthetic"``, ``"voc"`` or ``"cityscapes"`` with the paper's transforms.

    Items: (image float32 [3, H, W] in [0, 1], or ImageNet-normalised if ``normalize``; mask int64 [H, W],
    255 = ignore).  ``train=True``: resize + random crop (``train_transform``); ``train=False``: ``protocol``
    ``"paper"`` (resize + centre crop), ``"full"`` (whole image) or ``"random-crop"`` (resize + random crop, the
    authors' evaluation); see ``eval_transform``.

    root: directory holding the dataset (see ``VOCSegmentation``, ``CityscapesSegmentation``); ignored for
        synthetic, whose images are generated at ``resize_size`` x ``resize_size`` (so the resize is a no-op;
        ``seed`` selects the data, ``synthetic_size`` the split's size, default train 512 / val 128 / test 128).
    num_samples: keep the first n samples (deterministic, for quick runs); None = all.
    select_fraction: VOC/Cityscapes: the share of the official train list held out as split ``"select"`` (model
        selection), chosen by a hash of each file name (``in_selection_split``); split ``"train"`` is the rest.
        Synthetic: ignored ("select" is a generated split of its own, sized by ``synthetic_size``).
    cache_dir: store the resized uint8 images/masks once and crop from them (``ResizedCache``); True means
        ``<root>/.mistudy_cache``.  Same items as without it.  For synthetic any truthy value pre-generates the
        split in memory instead (nothing is written).
    """
    _check_choice("dataset", name, tuple(SPLITS))
    _check_choice("split", split, SPLITS[name])
    _check_choice("protocol", protocol, PROTOCOLS)
    if train and protocol != "paper":
        raise ValueError(f"protocol={protocol!r} is for evaluation; training always uses the paper's "
                         "resize + random crop")
    resize = _resize_steps(resize_size if protocol != "full" else None, square_resize)
    rest = _train_steps(crop_size, normalize) if train else \
        _eval_steps(protocol, resize_size, crop_size, normalize, square_resize)

    if name == "synthetic":
        if synthetic_size is None:
            synthetic_size = SYNTHETIC_DEFAULT_SIZES[split]
        _check_size("synthetic_size", synthetic_size)
        if num_samples is not None:
            _check_size("num_samples", num_samples)
            if num_samples > synthetic_size:
                raise ValueError(f"num_samples={num_samples} > synthetic_size={synthetic_size}")
        side = resize_size if resize_size is not None else crop_size
        return SyntheticSegmentation(split, num_samples or synthetic_size, image_size=side, seed=seed,
                                     transform=v2.Compose(resize + rest), pregenerate=bool(cache_dir),
                                     level=synthetic_level)

    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (the directory holding its files)")
    if cache_dir is True:
        cache_dir = Path(root) / ".mistudy_cache"
    source_cls = VOCSegmentation if name == "voc" else CityscapesSegmentation
    kw = dict(num_samples=num_samples, select_fraction=select_fraction)
    if not cache_dir:
        return source_cls(root, split, transform=v2.Compose(resize + rest), **kw)
    source = source_cls(root, split, **kw)
    resize_tag = "orig" if not resize else f"{'square' if square_resize else 'short'}{resize_size}"
    return ResizedCache(source, v2.Compose(resize or [v2.Identity()]), resize_tag, cache_dir,
                        transform=v2.Compose(rest))
