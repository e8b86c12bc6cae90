"""The resized-image cache of VOC and Cityscapes: every image and mask resized once, then memory-mapped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mistudy.data.files import _PairedFiles
from mistudy.io.atomic import atomic_file
from mistudy.io.atomic import write_text as atomic_write_text

_CACHE_VERSION = 2  # 2: keyed on file contents
DIGESTS_FILE = "file-digests.cache"


def file_digests(paths: list[Path], cache_dir: Path) -> list[str]:
    """A content digest (BLAKE2b, 128 bits) of every file, each computed once.

    The digests are remembered in ``<cache_dir>/file-digests.cache`` (JSON) with each file's size, mtime, ctime and inode;
    a file whose four values are unchanged keeps its digest, any other is read and digested again.  A rewrite that
    keeps the size and the mtime (``touch -d``, ``cp -p`` over the file) still changes the ctime, which no tool can
    set, so it is noticed: the cache never serves stale content.
    """
    book_path = cache_dir / DIGESTS_FILE
    try:
        book = json.loads(book_path.read_text())
    except (OSError, ValueError):
        book = {}
    out, changed = [], False
    for path in paths:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        name = str(path.resolve())
        entry = book.get(name)
        if entry is None or entry["stat"] != stamp:
            h = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            entry = book[name] = {"stat": stamp, "digest": h.hexdigest()}
            changed = True
        out.append(entry["digest"])
    if changed:
        atomic_write_text(book_path, json.dumps(book))
    return out


class ResizedCache(Dataset):
    """``source`` with its resize step precomputed: uint8 images and masks stored once, cropped per item.

    Items are ``transform(*resize(*source.load(i)))`` -- bit-identical to the uncached pipeline, because the
    stored arrays are exactly what ``resize`` returned -- but an epoch decodes no JPEG/PNG.

    Files in ``cache_dir``, per (dataset, split, resize, subset) ``stem``: ``<stem>-<digest>.images.bin`` and
    ``.masks.bin`` (flat uint8 blobs, memory-mapped, so DataLoader workers share them), ``.index.npy``
    (int64 [N, 2] heights and widths) and ``.json`` (the manifest).  ``digest`` hashes the manifest key: dataset,
    split, resize parameters, torch/torchvision versions and every source file's path and content digest
    (`file_digests`) -- so a changed file gives another digest and the cache is rebuilt (stale files of the same
    stem are then deleted).  Every
    file is written to a temporary name and renamed; the manifest goes last, so a cache is used only if complete.
    """

    def __init__(self, source: _PairedFiles, resize: Callable, resize_tag: str, cache_dir,
                 transform: Callable):
        self.source, self.transform = source, transform
        self.samples = source.samples  # the (image, mask) source paths, as on the uncached dataset
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        paths = [p for pair in source.samples for p in pair]
        digests = file_digests(paths, self.cache_dir)
        key = {  # the resize kernels live in torch and torchvision: a new version may resize differently
            "version": _CACHE_VERSION, "dataset": source.name, "split": source.split, "resize": resize_tag,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "files": [[str(p.relative_to(source.root)), d] for p, d in zip(paths, digests)],
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
