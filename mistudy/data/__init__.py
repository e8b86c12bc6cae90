"""Datasets, joint image/mask transforms, class palettes and a resized-image cache.

Every dataset yields ``(image, mask)``: image float32 [3, H, W] in [0, 1] (or ImageNet-normalised), mask int64
[H, W] of class ids with ``IGNORE_INDEX`` (255) for pixels that never count.  Three datasets:

* ``"synthetic"`` -- the embedded default, generated deterministically (`synthetic.py`);
* ``"voc"``       -- PASCAL VOC 2012 segmentation (21 classes, 255 = object border; `files.py`);
* ``"voc_aug"``   -- VOC 2012 with the SBD annotations: 10,582 training images, VOC 2012 val;
* ``"cityscapes"``-- Cityscapes fine annotations mapped to the 19 official train ids (everything else 255).

The package's files say its jobs: `classes` (names, palettes, display helpers), `transforms` (the one transform
builder), `synthetic`, `files` (VOC and Cityscapes), `cache` (resized images), `build` (`build_dataset`, the one
entry point the trainer and the notebooks use).
"""

from mistudy.data.build import build_dataset
from mistudy.data.cache import ResizedCache
from mistudy.data.classes import (
                                  CITYSCAPES_CLASSES,
                                  DATASETS,
                                  IGNORE_COLOR,
                                  IGNORE_INDEX,
                                  IMAGENET_MEAN,
                                  IMAGENET_STD,
                                  SPLITS,
                                  SYNTHETIC_CLASSES,
                                  VOC_CLASSES,
                                  DatasetInfo,
                                  colorize_mask,
                                  dataset_info,
                                  display_image,
                                  voc_palette,
)
from mistudy.data.files import (
                                  CityscapesSegmentation,
                                  VOCAugSegmentation,
                                  VOCSegmentation,
                                  check_files,
                                  download,
                                  in_selection_split,
)
from mistudy.data.synthetic import (
                                  SYNTHETIC_DEFAULT_LEVEL,
                                  SYNTHETIC_DEFAULT_SIZES,
                                  SYNTHETIC_LEVELS,
                                  SyntheticSegmentation,
                                  synthetic_sample,
)
from mistudy.data.transforms import PROTOCOLS, build_transform, transform_steps

__all__ = [
    "CITYSCAPES_CLASSES", "DATASETS", "IGNORE_COLOR", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "PROTOCOLS",
    "SPLITS", "SYNTHETIC_CLASSES", "SYNTHETIC_DEFAULT_LEVEL", "SYNTHETIC_DEFAULT_SIZES", "SYNTHETIC_LEVELS",
    "VOC_CLASSES", "CityscapesSegmentation", "DatasetInfo", "ResizedCache", "SyntheticSegmentation",
    "VOCAugSegmentation", "VOCSegmentation", "build_dataset", "build_transform", "check_files", "colorize_mask",
    "dataset_info", "download", "display_image", "in_selection_split", "synthetic_sample", "transform_steps", "voc_palette",
]
