"""Tiny PASCAL VOC 2012 (+ SBD) and Cityscapes trees in their real layouts and file formats (fixtures in conftest.py).

A module of its own, not conftest.py: tests import its constants, and `conftest` is not a unique module name
(notebooks/ has one too)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from mistudy.data import voc_palette

VOC_SPLITS = {"train": ["2007_000032", "2007_000039", "2008_000123"], "val": ["2007_000033", "2009_000456"]}
VOC_SIZES = [(60, 45), (45, 61), (52, 40)]  # (width, height), cycled; portrait and landscape like VOC's

CITYSCAPES_CITIES = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
CITYSCAPES_SIZE = (64, 32)  # (width, height): Cityscapes' 2:1 aspect
# labelIds written into the first four 8x8 blocks of every Cityscapes mask, with their official trainIds.
CITYSCAPES_KNOWN = {7: 0, 26: 13, 0: 255, 33: 18}


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB picture (JPEG-friendly, like a photograph)."""
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


def _blocks(rng: np.random.Generator, width: int, height: int, values: np.ndarray, block: int = 8) -> np.ndarray:
    """A [height, width] uint8 label map of block x block squares with values drawn from ``values``."""
    grid = rng.choice(values, size=(height // block + 1, width // block + 1)).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), dtype=np.uint8))[:height, :width]


def write_voc_mask(path: Path, labels: np.ndarray) -> None:
    """Save class ids as VOC does: a mode 'P' PNG carrying the VOC palette."""
    png = Image.fromarray(labels.astype(np.uint8))  # mode 'L'; putpalette turns it into 'P', indices kept
    png.putpalette(voc_palette(256).ravel().tolist())
    png.save(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """<root>/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/*.txt}.

    Masks hold class blocks 0..20 separated by 255 borders (like VOC's object outlines).
    """
    rng = np.random.default_rng(0)
    base = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    k = 0
    for split, ids in VOC_SPLITS.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            width, height = VOC_SIZES[k % len(VOC_SIZES)]
            k += 1
            _photo(rng, width, height).save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
            labels = _blocks(rng, width, height, np.arange(21))
            labels[::8, :] = 255  # borders between the blocks
            labels[:, ::8] = 255
            write_voc_mask(base / "SegmentationClass" / f"{image_id}.png", labels)
    return tmp_path / "voc"


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_{labelIds,
    instanceIds,color}.png + *_gtFine_polygons.json, as in the official archives.

    labelIds masks are 8x8 blocks of ids 0..33; the first four blocks of the top row are CITYSCAPES_KNOWN's keys.
    """
    rng = np.random.default_rng(1)
    root = tmp_path / "cityscapes"
    width, height = CITYSCAPES_SIZE
    for split, cities in CITYSCAPES_CITIES.items():
        for city, frames in cities.items():
            images = root / "leftImg8bit" / split / city
            labels_dir = root / "gtFine" / split / city
            images.mkdir(parents=True)
            labels_dir.mkdir(parents=True)
            for frame in range(frames):
                stem = f"{city}_{frame:06d}_000019"
                _photo(rng, width, height).save(images / f"{stem}_leftImg8bit.png")
                label_ids = _blocks(rng, width, height, np.arange(34))
                for b, label_id in enumerate(CITYSCAPES_KNOWN):
                    label_ids[:8, 8 * b:8 * b + 8] = label_id
                Image.fromarray(label_ids).save(labels_dir / f"{stem}_gtFine_labelIds.png")
                instance_ids = label_ids.astype(np.uint16) * 1000  # 16-bit PNG like the real instanceIds
                Image.fromarray(instance_ids).save(labels_dir / f"{stem}_gtFine_instanceIds.png")
                Image.new("RGBA", (width, height)).save(labels_dir / f"{stem}_gtFine_color.png")
                (labels_dir / f"{stem}_gtFine_polygons.json").write_text(
                    json.dumps({"imgHeight": height, "imgWidth": width, "objects": []}))
    return root


SBD_SPLITS = {"train": ["2007_000032", "2008_100001", "2007_000033"], "val": ["2009_200002"]}


def write_sbd(root, splits=SBD_SPLITS, value: int = 7) -> None:
    """<root>/SBD/{img/*.jpg, cls/*.mat, train.txt, val.txt} as the SBD release (a GTcls struct per mask)."""
    sbd = root / "SBD"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    for split, ids in splits.items():
        (sbd / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(sbd / "img" / f"{i}.jpg")
            savemat(sbd / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": np.full((30, 40), value, np.uint8)}})
