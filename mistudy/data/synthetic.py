"""The embedded default dataset: textured shapes generated deterministically from (seed, split, index) at three
difficulty levels (README "The synthetic benchmark")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mistudy.data.classes import SPLITS, SYNTHETIC_CLASSES, check_choice, check_size
from mistudy.data.transforms import to_tensors

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
    check_choice("split", split, tuple(_SPLIT_IDS))
    check_choice("synthetic level", level, tuple(SYNTHETIC_LEVELS))
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    for side in sides:
        check_size("image_size", side)


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
    return _generate(seed, split, index, image_size, level)


def _generate(seed: int, split: str, index: int, image_size, level: str) -> tuple[np.ndarray, np.ndarray]:
    """`synthetic_sample` without its argument checks (the dataset checks them once)."""
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
    Each sample is generated once, on first access, and kept in memory (an epoch crops what earlier epochs
    generated: the same items, without regenerating them); ``pregenerate=True`` generates them all at construction.
    """

    name = "synthetic"
    num_classes = len(SYNTHETIC_CLASSES)

    def __init__(self, split: str, num_samples: int, image_size: int | tuple[int, int] = 128, seed: int = 0,
                 transform: Callable | None = None, pregenerate: bool = False, level: str = SYNTHETIC_DEFAULT_LEVEL):
        check_choice("split", split, SPLITS["synthetic"])
        check_size("num_samples", num_samples)
        _check_synthetic_args(split, seed, image_size, level)
        self.split, self.num_samples, self.image_size, self.seed = split, num_samples, image_size, seed
        self.level = level
        self.transform = transform if transform is not None else to_tensors()
        self._samples: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if pregenerate:
            for i in range(num_samples):
                self._generated(i)

    def __len__(self) -> int:
        return self.num_samples

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The untransformed sample: (Image uint8 [3, H, W], Mask uint8 [H, W])."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        image, mask = self._generated(index)
        return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))

    def _generated(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._samples:
            self._samples[index] = _generate(self.seed, self.split, index, self.image_size, self.level)
        return self._samples[index]

    def __getitem__(self, index: int):
        return self.transform(*self.load(index))
