"""PASCAL VOC 2012 and Cityscapes: image/mask file pairs in the official layouts, checked before training and when
read; the selection split held out of the official training list."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mistudy.data.classes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LUT,
    CITYSCAPES_NUM_LABEL_IDS,
    IGNORE_INDEX,
    SPLITS,
    VOC_CLASSES,
    check_choice,
    check_size,
)
from mistudy.data.transforms import to_tensors


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
            check_size("num_samples", num_samples)
            if num_samples > len(samples):
                raise ValueError(f"num_samples={num_samples} but {self.name} {split!r} has {len(samples)} images")
            samples = samples[:num_samples]
        missing = [str(p) for pair in samples for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.name} under {root} is incomplete: {len(missing)} listed files are "
                                    f"missing, e.g. {missing[:3]}")
        self.root, self.split, self.samples, self.num_samples = Path(root), split, samples, num_samples
        self.select_fraction = select_fraction
        self.transform = transform if transform is not None else to_tensors()

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


VOC_ARCHIVE = torchvision.datasets.voc.DATASET_YEAR_DICT["2012"]  # url, filename, md5 of torchvision's download
SBD_ARCHIVE = torchvision.datasets.SBDataset.url


def _voc_complete(root) -> bool:
    base = Path(root) / "VOCdevkit" / "VOC2012"
    return all((base / p).exists() for p in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                                             "ImageSets/Segmentation/val.txt"))


def download(dataset: str, root) -> None:
    """Fetch ``dataset`` into ``root`` where it is not there yet: PASCAL VOC 2012 with torchvision's
    ``VOCSegmentation(download=True)`` (its archive, md5-checked, extracted under ``root``); Cityscapes has no public
    download.  Failures raise one line: FileNotFoundError naming the URL and where to put the archive, ValueError
    naming a root that cannot be written."""
    check_choice("dataset", dataset, ("voc", "voc_aug", "cityscapes"))
    if dataset == "cityscapes":
        raise FileNotFoundError("Cityscapes cannot be downloaded without an account. " + cityscapes_layout(root))
    root = Path(root)
    sbd = root / SBD_ROOT
    fetches = [] if _voc_complete(root) else [(
        "PASCAL VOC 2012", VOC_ARCHIVE["url"], root / VOC_ARCHIVE["filename"],
        lambda: torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set="train", download=True))]
    if dataset == "voc_aug" and not all((sbd / p).exists() for p in ("img", "cls", "train.txt", "val.txt")):
        fetches.append(("SBD", SBD_ARCHIVE, sbd / torchvision.datasets.SBDataset.filename,
                        lambda: torchvision.datasets.SBDataset(str(sbd), mode="segmentation", download=True)))
    for what, url, archive, fetch in fetches:
        try:
            archive.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--download: cannot create {archive.parent} ({e.strerror})") from None
        if not os.access(archive.parent, os.W_OK):
            raise ValueError(f"--download: the data root {archive.parent} is not writable; choose a writable "
                             "--data-root")
        try:
            fetch()
        except PermissionError:
            raise ValueError(f"--download: the data root {archive.parent} is not writable; choose a writable "
                             "--data-root") from None
        except (OSError, RuntimeError) as e:  # no network (URLError), a full disk, an md5 mismatch
            reason = " ".join(str(getattr(e, "reason", e)).split())
            raise FileNotFoundError(f"cannot download {what} from {url} ({reason}): put {archive.name} at {archive} "
                                    "(e.g. fetched on a machine with network) and run again with --download to "
                                    "extract it") from None


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
        check_choice("split", split, SPLITS["voc"])
        base = Path(root) / "VOCdevkit" / "VOC2012"
        image_set = "train" if split == "select" else split
        if not download:
            _require([base / "JPEGImages", base / "SegmentationClass",
                      base / "ImageSets" / "Segmentation" / f"{image_set}.txt"],
                     f"Expected PASCAL VOC 2012 under {root}: <root>/VOCdevkit/VOC2012/JPEGImages/*.jpg, "
                     "<root>/VOCdevkit/VOC2012/SegmentationClass/*.png and "
                     "<root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt; pass --download to fetch "
                     f"{VOC_ARCHIVE['url']} there, or extract that archive under <root>.")
        try:
            tv = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=image_set, download=download)
        except UnicodeDecodeError as e:
            raise ValueError(f"{base / 'ImageSets' / 'Segmentation' / f'{image_set}.txt'} is not UTF-8 text (byte "
                             f"{e.object[e.start:e.start + 1]!r} at offset {e.start}); it lists image names, one a "
                             "line") from None
        samples = [(Path(i), Path(m)) for i, m in zip(tv.images, tv.masks)]
        samples = _split_for_selection(split, samples, select_fraction, self.name)
        super().__init__(root, split, samples, transform, num_samples, select_fraction)

    def _decode_mask(self, path: Path) -> np.ndarray:
        mask = _read_index_png(path)
        _check_ids(mask, self.num_classes, path)
        return mask


def cityscapes_layout(root, split: str = "train") -> str:
    """Where Cityscapes must be put, and where to get it (it has no public download)."""
    return (f"Expected Cityscapes under {root}: <root>/leftImg8bit/{split}/<city>/*_leftImg8bit.png and "
            f"<root>/gtFine/{split}/<city>/*_gtFine_labelIds.png; download leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com (registration required, no public "
            "download) and extract both under <root>.")


SBD_ROOT = "SBD"  # <root>/SBD: torchvision's SBDataset root (img/*.jpg, cls/*.mat, train.txt, val.txt)


class VOCAugSegmentation(VOCSegmentation):
    """VOC 2012 with the SBD annotations (Hariharan et al. 2011), the training set the RMI authors used: split
    "train" is VOC 2012 train, SBD train and SBD val less VOC 2012 val (10,582 images; a VOC train image keeps its
    VOC mask), "val" is VOC 2012 val.  ``root`` holds ``VOCdevkit/`` (as `VOCSegmentation`) and ``SBD/``
    (torchvision's ``SBDataset`` layout: ``img/*.jpg``, ``cls/*.mat``, ``train.txt``, ``val.txt``)."""

    name = "voc_aug"

    def __init__(self, root, split: str = "train", transform: Callable | None = None,
                 num_samples: int | None = None, select_fraction: float = 0.0):
        check_choice("split", split, SPLITS["voc_aug"])
        val = VOCSegmentation(root, "val").samples
        samples = val
        if split != "val":
            sbd = Path(root) / SBD_ROOT
            _require([sbd / "img", sbd / "cls", sbd / "train.txt", sbd / "val.txt"],
                     f"Expected SBD under {root}: <root>/{SBD_ROOT}/img/*.jpg, <root>/{SBD_ROOT}/cls/*.mat and "
                     f"<root>/{SBD_ROOT}/{{train,val}}.txt; pass --download to fetch {SBD_ARCHIVE} there.")
            pairs = {p[0].stem: p for p in VOCSegmentation(root, "train").samples}
            for image_set in ("train", "val"):
                tv = torchvision.datasets.SBDataset(str(sbd), image_set=image_set, mode="segmentation")
                for image, mask in zip(tv.images, tv.masks):
                    pairs.setdefault(Path(image).stem, (Path(image), Path(mask)))
            held_out = {p[0].stem for p in val}
            samples = _split_for_selection(split, [pairs[k] for k in sorted(pairs) if k not in held_out],
                                           select_fraction, self.name)
        _PairedFiles.__init__(self, root, split, samples, transform, num_samples, select_fraction)

    def _decode_mask(self, path: Path) -> np.ndarray:
        if path.suffix != ".mat":
            return super()._decode_mask(path)
        from scipy.io import loadmat

        try:
            mask = np.ascontiguousarray(loadmat(path)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise ValueError(f"cannot read mask {path}: {err}") from err
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
        check_choice("split", split, SPLITS["cityscapes"])
        root_path = Path(root)
        official = "train" if split == "select" else split
        zips = [root_path / "leftImg8bit_trainvaltest.zip", root_path / "gtFine_trainvaltest.zip"]
        if not all(z.is_file() for z in zips):
            _require([root_path / "leftImg8bit" / official, root_path / "gtFine" / official],
                     cityscapes_layout(root, official))
        tv = torchvision.datasets.Cityscapes(str(root), split=official, mode="fine", target_type="semantic")
        other = [i for i in tv.images if "_leftImg8bit." in Path(i).name and not i.endswith("_leftImg8bit.png")]
        if other:  # an image in another format would be skipped below, silently
            raise ValueError(f"cityscapes image {other[0]} is not a PNG ({len(other)} such file(s)): the Cityscapes "
                             "images are <city>_<seq>_<frame>_leftImg8bit.png; convert or remove it")
        samples = sorted((Path(i), Path(t[0])) for i, t in zip(tv.images, tv.targets)
                         if i.endswith("_leftImg8bit.png"))  # skip stray files (.DS_Store, notes) in city folders
        samples = _split_for_selection(split, samples, select_fraction, self.name)
        super().__init__(root, split, samples, transform, num_samples, select_fraction)

    def _decode_mask(self, path: Path) -> np.ndarray:
        label_ids = _read_index_png(path)
        _check_ids(label_ids, CITYSCAPES_NUM_LABEL_IDS, path, allow_ignore=False)
        return CITYSCAPES_LUT[label_ids]


# The last bytes of complete files: a JPEG ends with its EOI marker, a PNG with its IEND chunk (by the format the
# file's content has, whatever its name says: a PNG named .jpg is read as the PNG it is).
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _check_header(path: Path, kind: str) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header, after checking that it is complete; ValueError names it."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{kind} {path} is empty (0 bytes)")
    try:
        with Image.open(path) as img:  # reads the header only
            width, height, mode, image_format = img.width, img.height, img.mode, img.format
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {kind} {path}: {err}") from err
    marker = _END_MARKERS.get(image_format)
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(0, size - 64))
            tail = f.read()
        if marker not in tail:  # JPEG writers may append a few padding bytes after EOI
            raise ValueError(f"{kind} {path} is truncated ({size} bytes; its {image_format} end marker is missing)")
    return width, height, mode


def check_files(dataset: "_PairedFiles", decode_masks: bool = False) -> None:
    """Check every pair of a split before training starts: both files complete (header and end marker), image and
    mask of one size, masks of a single channel; with ``decode_masks`` also every mask's values (what an epoch would
    find only when it reads the file).  The first problem raises ValueError naming the file."""
    for image_path, mask_path in dataset.samples:
        iw, ih, _ = _check_header(image_path, "image")
        if mask_path.suffix == ".mat":  # SBD's MATLAB masks have no image header: their size is checked when read
            if decode_masks:
                dataset._decode_mask(mask_path)
            continue
        mw, mh, mode = _check_header(mask_path, "mask")
        if mode not in ("P", "L"):
            raise ValueError(f"mask {mask_path} has mode {mode!r}; expected a palette ('P') or grayscale ('L') PNG of "
                             "class indices")
        if (iw, ih) != (mw, mh):
            raise ValueError(f"image {image_path} is {iw}x{ih} (WxH) but its mask {mask_path} is {mw}x{mh}")
        if decode_masks:
            dataset._decode_mask(mask_path)
