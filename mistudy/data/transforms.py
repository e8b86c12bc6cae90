"""Joint image/mask transforms: one builder, `transform_steps`, for training and every evaluation protocol.

Inputs: (tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W]); outputs plain tensors (float32 [3, h, w],
int64 [h, w]).  tv_tensors let v2 apply the same geometry to both and keep masks nearest-neighbour.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from mistudy.data.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, check_choice, check_size

PROTOCOLS = ("paper", "full", "random-crop")  # evaluation transforms, see transform_steps


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


def _resize_steps(resize_size: int | None, square_resize: bool) -> list:
    """Shorter side -> resize_size (aspect kept), or resize_size x resize_size; None = no resize."""
    check_size("resize_size", resize_size, allow_none=True)
    if resize_size is None:
        return []
    return [_Resize((resize_size, resize_size) if square_resize else resize_size)]


def _tensor_steps(normalize: bool) -> list:
    steps = [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)]
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return steps + [v2.ToPureTensor()]


def _train_steps(crop_size: int, normalize: bool) -> list:
    check_size("crop_size", crop_size)
    # Padding only happens when an image is smaller than the crop: padded pixels are black and ignored.
    crop = v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
    return [crop] + _tensor_steps(normalize)


def _eval_steps(protocol: str, resize_size: int | None, crop_size: int, normalize: bool,
                square_resize: bool = False) -> list:
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "full":  # the image at the training scale, the mask as it is
        check_size("resize_size", resize_size, allow_none=True)
        size = None if resize_size is None else (resize_size, resize_size) if square_resize else resize_size
        return ([_ResizeImageOnly(size)] if size is not None else []) + _tensor_steps(normalize)
    if protocol == "random-crop":
        return _train_steps(crop_size, normalize)
    check_size("crop_size", crop_size)
    # CenterCrop would pad masks with 0 (= a class), so the resized image must cover the crop.
    if resize_size is None or resize_size < crop_size:
        raise ValueError(f"protocol='paper' needs resize_size >= crop_size, got {resize_size} < {crop_size}")
    return [v2.CenterCrop(crop_size)] + _tensor_steps(normalize)


def transform_steps(train: bool, protocol: str = "paper", resize_size: int | None = 234, crop_size: int = 224,
                    square_resize: bool = False, normalize: bool = False) -> tuple[list, list]:
    """(resize steps, the rest): the transform of a training or evaluation item, split where the resized-image cache
    stores its arrays.  `build_transform` composes them.

    Training: the shorter side to ``resize_size`` (aspect kept; ``square_resize`` for the paper's literal
    ``resize_size`` x ``resize_size``; None: no resize), then a random ``crop_size`` crop (images smaller than the
    crop are padded: image 0, mask 255).  Evaluation ``protocol``:

    * ``"paper"``: the training resize, then a centre ``crop_size`` crop (what the paper's numbers measure, without
      the noise of a random crop);
    * ``"full"``: the whole image resized as in training (the scale the network learnt), its mask at the mask's own
      resolution: predictions are resized back to the mask and scored there, never the mask to the prediction (the
      standard benchmark protocol; images differ in size, so batch them one at a time);
    * ``"random-crop"``: the training resize and random crop, as the paper's text and the authors' scripts evaluate;
      random, so seed it per sample (the training engine does: the same crops at every validation).

    ``normalize`` applies ImageNet mean/std.
    """
    check_choice("protocol", protocol, PROTOCOLS)
    if train and protocol != "paper":
        raise ValueError(f"protocol={protocol!r} is for evaluation; training always uses the paper's "
                         "resize + random crop")
    if train:
        return _resize_steps(resize_size, square_resize), _train_steps(crop_size, normalize)
    resize = _resize_steps(resize_size if protocol != "full" else None, square_resize)  # full: see _eval_steps
    return resize, _eval_steps(protocol, resize_size, crop_size, normalize, square_resize)


def build_transform(train: bool, protocol: str = "paper", resize_size: int | None = 234, crop_size: int = 224,
                    square_resize: bool = False, normalize: bool = False) -> v2.Compose:
    """The composed transform of `transform_steps`: call as ``image, mask = t(Image uint8 [3,H,W], Mask [H,W])``."""
    resize, rest = transform_steps(train, protocol, resize_size, crop_size, square_resize, normalize)
    return v2.Compose(resize + rest)


def to_tensors() -> v2.Compose:
    """uint8 (Image, Mask) -> (float32 [3, H, W] in [0, 1], int64 [H, W]), nothing else."""
    return v2.Compose(_tensor_steps(normalize=False))
