"""`build_dataset`: the one entry point the trainer, the notebooks and the benchmarks use."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision.transforms import v2

from mistudy.data.cache import ResizedCache
from mistudy.data.classes import SPLITS, check_choice, check_size
from mistudy.data.files import CityscapesSegmentation, VOCAugSegmentation, VOCSegmentation
from mistudy.data.synthetic import SYNTHETIC_DEFAULT_LEVEL, SYNTHETIC_DEFAULT_SIZES, SyntheticSegmentation
from mistudy.data.transforms import transform_steps


def build_dataset(name: str, split: str, root=None, *, train: bool, protocol: str = "paper",
                  resize_size: int | None = 234, crop_size: int = 224, square_resize: bool = False,
                  normalize: bool = False, num_samples: int | None = None, cache_dir=None, seed: int = 0,
                  synthetic_level: str = SYNTHETIC_DEFAULT_LEVEL, select_fraction: float = 0.0) -> Dataset:
    """A split of ``"synthetic"``, ``"voc"``, ``"voc_aug"`` or ``"cityscapes"`` with its transform (`transform_steps`).

    Items: (image float32 [3, H, W] in [0, 1], or ImageNet-normalised if ``normalize``; mask int64 [H, W],
    255 = ignore).  ``train=True``: resize + random crop; ``train=False``: the evaluation ``protocol``.

    root: directory holding the dataset (see ``VOCSegmentation``, ``CityscapesSegmentation``); ignored for
        synthetic, whose images are generated at ``resize_size`` x ``resize_size`` (so the resize is a no-op) from
        ``seed``.
    num_samples: the split's size: synthetic, how many samples to generate (default ``SYNTHETIC_DEFAULT_SIZES``);
        VOC/Cityscapes, keep the first n files (deterministic, for quick runs), None = all.
    select_fraction: VOC/Cityscapes: the share of the official train list held out as split ``"select"`` (model
        selection), chosen by a hash of each file name (``in_selection_split``); split ``"train"`` is the rest.
        Synthetic: ignored ("select" is a generated split of its own).
    cache_dir: store the resized uint8 images/masks once and crop from them (``ResizedCache``); True means
        ``<root>/.mistudy_cache``.  Same items as without it.  Ignored for synthetic, whose samples are kept in
        memory once generated.
    """
    check_choice("dataset", name, tuple(SPLITS))
    check_choice("split", split, SPLITS[name])
    resize, rest = transform_steps(train, protocol, resize_size, crop_size, square_resize, normalize)
    if name == "synthetic":
        size = SYNTHETIC_DEFAULT_SIZES[split] if num_samples is None else num_samples
        check_size("num_samples", size)
        side = resize_size if resize_size is not None else crop_size
        return SyntheticSegmentation(split, size, image_size=side, seed=seed, transform=v2.Compose(resize + rest),
                                     level=synthetic_level)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (the directory holding its files)")
    if cache_dir is True:
        cache_dir = Path(root) / ".mistudy_cache"
    source_cls = {"voc": VOCSegmentation, "voc_aug": VOCAugSegmentation, "cityscapes": CityscapesSegmentation}[name]
    kw = dict(num_samples=num_samples, select_fraction=select_fraction)
    if not cache_dir:
        return source_cls(root, split, transform=v2.Compose(resize + rest), **kw)
    source = source_cls(root, split, **kw)
    resize_tag = "orig" if not resize else f"{'square' if square_resize else 'short'}{resize_size}"
    return ResizedCache(source, v2.Compose(resize or [v2.Identity()]), resize_tag, cache_dir,
                        transform=v2.Compose(rest))
