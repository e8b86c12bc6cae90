"""Class names, palettes and display helpers of the three datasets; the label conventions every module shares.

Masks hold class ids with ``IGNORE_INDEX`` (255) for pixels that never count (VOC object borders, Cityscapes void).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATASETS = ("synthetic", "voc", "voc_aug", "cityscapes")
SPLITS = {
    "synthetic": ("train", "val", "test", "select"),
    "voc": ("train", "val", "trainval", "select"),
    "voc_aug": ("train", "val", "select"),
    "cityscapes": ("train", "val", "select"),
}


def check_choice(kind: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(map(repr, valid))}")


def check_size(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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
CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _c in _CITYSCAPES_TRAIN:
    CITYSCAPES_LUT[_c.id] = _c.train_id


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
    "voc_aug": DatasetInfo("voc_aug", len(VOC_CLASSES), VOC_CLASSES, _frozen(voc_palette(len(VOC_CLASSES)))),
    "cityscapes": DatasetInfo("cityscapes", len(CITYSCAPES_CLASSES), CITYSCAPES_CLASSES,
                              _frozen(np.array([c.color for c in _CITYSCAPES_TRAIN]))),
}


def dataset_info(name: str) -> DatasetInfo:
    """Class names and palette of a dataset of ``DATASETS``."""
    check_choice("dataset", name, tuple(_INFOS))
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
