"""The two networks of the study: Buda et al.'s U-Net and torchvision's DeepLabV3-ResNet50.

Both map images [N, 3, H, W] to logits [N, num_classes, H, W] (no final activation).  DeepLabV3 starts from random
weights unless a weights file is given: a local file, or a torchvision weights name (`weights_file`) resolved to its
file in torch's hub cache, fetched only on request (`fetch_weights`).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights, get_weight
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from mistudy.io import safeload


def _block(in_channels: int, features: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU (bias-free convs, as in Buda et al.)."""
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, features, kernel_size=3, padding=1, bias=False)),
        ("norm1", nn.BatchNorm2d(features)),
        ("relu1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)),
        ("norm2", nn.BatchNorm2d(features)),
        ("relu2", nn.ReLU(inplace=True)),
    ]))


class UNet(nn.Module):
    """U-Net of Buda et al. (the brain-segmentation U-Net the paper used), without the final sigmoid.

    Four levels (max-pool down, transposed-conv up, skip concatenation) and a 1x1 head.
    Input [N, in_channels, H, W] -> logits [N, out_channels, H, W]. Sides that are not multiples of
    16 are zero-padded on the bottom/right and the logits cropped back.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, init_features: int = 32):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("init_features", init_features)):
            if int(v) < 1:
                raise ValueError(f"UNet {name} must be >= 1, got {v}")
        f = init_features
        self.encoder1 = _block(in_channels, f)
        self.encoder2 = _block(f, f * 2)
        self.encoder3 = _block(f * 2, f * 4)
        self.encoder4 = _block(f * 4, f * 8)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = _block(f * 8, f * 16)
        self.upconv4 = nn.ConvTranspose2d(f * 16, f * 8, kernel_size=2, stride=2)
        self.decoder4 = _block(f * 16, f * 8)
        self.upconv3 = nn.ConvTranspose2d(f * 8, f * 4, kernel_size=2, stride=2)
        self.decoder3 = _block(f * 8, f * 4)
        self.upconv2 = nn.ConvTranspose2d(f * 4, f * 2, kernel_size=2, stride=2)
        self.decoder2 = _block(f * 4, f * 2)
        self.upconv1 = nn.ConvTranspose2d(f * 2, f, kernel_size=2, stride=2)
        self.decoder1 = _block(f * 2, f)
        self.head = nn.Conv2d(f, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 16, (-w) % 16
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(self.pool(enc1))
        enc3 = self.encoder3(self.pool(enc2))
        enc4 = self.encoder4(self.pool(enc3))
        bottleneck = self.bottleneck(self.pool(enc4))
        dec4 = self.decoder4(torch.cat((self.upconv4(bottleneck), enc4), dim=1))
        dec3 = self.decoder3(torch.cat((self.upconv3(dec4), enc3), dim=1))
        dec2 = self.decoder2(torch.cat((self.upconv2(dec3), enc2), dim=1))
        dec1 = self.decoder1(torch.cat((self.upconv1(dec2), enc1), dim=1))
        return self.head(dec1)[..., :h, :w]


class DilatedConv2d(nn.Conv2d):
    """A 3x3 convolution with dilation d and padding d that skips the taps which can only ever see zero padding.

    On a map no larger than d along an axis, every off-centre tap along that axis lands in the padding for every
    output pixel, so the convolution equals the same one restricted to the centre row (column) of its kernel, with
    no padding along that axis: the same outputs (up to the order of float summation) and the same gradients (the
    skipped taps' gradients are zero either way).  This happens in DeepLabV3's ASPP at small inputs: at 64x64 the
    output-stride-8 features are 8x8 and the rates 12, 24 and 36 see only their centre tap -- a third of the
    network's forward FLOPs computed on zeros.  The parameters and state dict are those of the nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (dh, dw), (h, w) = self.dilation, x.shape[-2:]
        rows, cols = dh >= h, dw >= w
        if not (rows or cols):
            return super().forward(x)
        weight = self.weight[:, :, 1:2 if rows else slice(None), 1:2 if cols else slice(None)]
        return F.conv2d(x, weight, self.bias, self.stride, (0 if rows else self.padding[0], 0 if cols else
                        self.padding[1]), self.dilation, self.groups)


def _skip_padding_taps(module: nn.Module) -> None:
    """Replace every 3x3 stride-1 convolution with padding = dilation > 1 by a `DilatedConv2d` (same parameters)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.stride == (1, 1) \
                and child.dilation[0] > 1 and child.padding == child.dilation and child.padding_mode == "zeros":
            conv = DilatedConv2d(child.in_channels, child.out_channels, 3, 1, child.padding, child.dilation,
                                 child.groups, child.bias is not None)
            conv.weight, conv.bias = child.weight, child.bias
            setattr(module, name, conv)
        else:
            _skip_padding_taps(child)


class DeepLabV3(nn.Module):
    """torchvision's DeepLabV3-ResNet50 returning the logits tensor instead of a dict.

    Input [N, 3, H, W] -> logits [N, num_classes, H, W]. Random init unless a local file is given:

    * ``weights_path``: a full DeepLabV3-ResNet50 state dict, e.g. torchvision's COCO checkpoint saved locally.
      ``head="replace"`` (default) loads the backbone only and keeps a new, randomly initialised DeepLabHead
      (ASPP, 3x3 conv, BatchNorm and the 1x1 classifier), as the authors did (``classifier = DeepLabHead(2048,
      num_classes)`` after loading the COCO weights); ``head="keep"`` also loads the head's ASPP and convs and
      replaces only the last 1x1 layer when its class count differs.  The auxiliary classifier is never used.
    * ``backbone_weights_path``: an ImageNet ResNet-50 state dict for the backbone.
    """

    def __init__(self, num_classes: int, weights_path: str | os.PathLike | None = None,
                 backbone_weights_path: str | os.PathLike | None = None, head: str = "replace"):
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"DeepLabV3 num_classes must be >= 1, got {num_classes}")
        if head not in ("replace", "keep"):
            raise ValueError(f"head must be 'replace' or 'keep', got {head!r}")
        # weights=None and weights_backbone=None: never download anything.
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        _skip_padding_taps(self.net)
        if backbone_weights_path is not None:
            state = _load_state_dict(backbone_weights_path)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            _load_into(self.net.backbone, state, backbone_weights_path, "ResNet-50 backbone")
        if weights_path is not None:
            state = _load_state_dict(weights_path)
            state = {k.removeprefix("net."): v for k, v in state.items() if not k.startswith("aux_classifier.")}
            own = self.net.state_dict()
            if head == "replace":  # the whole DeepLabHead new: its keys are neither loaded nor required
                fresh = {k for k in own if k.startswith("classifier.")}
                state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            else:  # a last layer trained for another number of classes stays random
                fresh = {k for k in own if k.startswith("classifier.4.") and k in state
                         and state[k].shape != own[k].shape}
            _load_into(self.net, state, weights_path, "DeepLabV3-ResNet50", fresh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _load_into(module: nn.Module, state: dict, path, what: str, fresh: set[str] = frozenset()) -> None:
    """Load ``state`` into ``module`` except the keys in ``fresh`` (left as initialised); a file of another
    architecture raises ValueError naming the file and listing the missing, unexpected and mismatched keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in fresh]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})" for k in own
                  if k in state and k not in fresh and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{name} {keys[:6]}{' ...' if len(keys) > 6 else ''} ({len(keys)})"
                 for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("mismatched shapes", mismatched)) if keys]
        raise ValueError(f"weights file {path} does not fit a {what}: " + "; ".join(parts))
    module.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)


def load_unet_weights(net: "UNet", path: str | os.PathLike, head: str = "keep") -> None:
    """Start a U-Net from a local weights file (a state dict, or a run's best_*.pt).

    head: "keep" loads every layer, except that the last 1x1 layer stays new when the file was trained for another
    number of classes (as the authors replaced DeepLabV3's head); "replace" always keeps the last layer new.
    """
    if head not in ("keep", "replace"):
        raise ValueError(f"head must be 'keep' or 'replace', got {head!r}")
    state = _load_state_dict(path)
    own = net.state_dict()
    last = {"head.weight", "head.bias"}
    fresh = last if head == "replace" else {k for k in last if k in state and state[k].shape != own[k].shape
                                            and state[k].shape[1:] == own[k].shape[1:]}
    _load_into(net, state, path, f"U-Net of width {net.encoder1.conv1.out_channels}", fresh)


def _load_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a local file: a plain state dict, or a checkpoint holding one under "model" (a
    best_*.pt of a run).  Weights are only ever loaded from a local path; a bad file raises naming it."""
    state = safeload.load(path, "weights file")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (a dict of tensors)")
    return state


MODELS = {
    "unet": lambda num_classes, **kw: UNet(in_channels=kw.pop("in_channels", 3), out_channels=num_classes, **kw),
    "deeplabv3_resnet50": lambda num_classes, **kw: DeepLabV3(num_classes, **kw),
}
ALIASES = {"deeplabv3": "deeplabv3_resnet50", "u-net": "unet"}


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name ("unet" or "deeplabv3_resnet50"); kwargs go to its constructor."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {sorted(MODELS)} (aliases {sorted(ALIASES)})")
    return MODELS[key](num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The weights options that accept a torchvision weights name besides a local file, and the enum of their names.
NAMED_WEIGHTS = {"deeplab_weights": DeepLabV3_ResNet50_Weights, "deeplab_backbone_weights": ResNet50_Weights}


def named_weights(option: str, value: str):
    """The torchvision weights a weights option's value names (``COCO_WITH_VOC_LABELS_V1`` or
    ``DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1``), else None (a local path).  A value spelt like a name
    (capitals, digits, underscores) that names none of the option's weights, and is no file, raises ValueError
    listing the valid names."""
    enum = NAMED_WEIGHTS.get(option)
    if enum is None:
        return None
    name = value.removeprefix(enum.__name__ + ".")
    if name in enum.__members__:
        return get_weight(f"{enum.__name__}.{name}")
    if re.fullmatch(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*", value) and not Path(value).exists():
        raise ValueError(f"unknown {option} weights name {value!r}; valid: {', '.join(enum.__members__)} "
                         "(or a local state dict file)")
    return None


def weights_file(option: str, value: str) -> Path:
    """The local file of a weights option's value: the path as given, or for a torchvision weights name its file in
    torch's hub cache (<TORCH_HOME>/hub/checkpoints/<the URL's file name>, where torchvision keeps it)."""
    weights = named_weights(option, value)
    if weights is None:
        return Path(value)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def fetch_weights(option: str, value: str, download: bool) -> Path:
    """``weights_file``, downloaded first when it is a missing named file and ``download`` is set (torchvision's
    ``get_state_dict`` with its hash check, into torch's hub cache).  A missing file raises FileNotFoundError in one
    line naming the file, the URL and how to run without it."""
    path, weights = weights_file(option, value), named_weights(option, value)
    if weights is None or path.is_file():
        return path
    flag = "--" + option.replace("_", "-")
    without = f"or pass {flag} none to start without it"
    if not download:
        raise FileNotFoundError(f"{option} {value} is not in torch's hub cache ({path}): pass --download to fetch "
                                f"it from {weights.url}, put the file there, {without}")
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as e:  # no network (URLError), a refused write, a hash mismatch
        reason = " ".join(str(getattr(e, "reason", e)).split())
        raise FileNotFoundError(f"cannot download {option} {value} from {weights.url} ({reason}): put the file at "
                                f"{path} (e.g. fetched on a machine with network), {without}") from None
    return path
