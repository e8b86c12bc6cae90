"""The two networks of the study: Buda et al.'s U-Net and torchvision's DeepLabV3-ResNet50.

Both map images [N, 3, H, W] to logits [N, num_classes, H, W] (no final activation). Nothing is
downloaded: DeepLabV3 starts from random weights unless a local weights file is given.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50


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
        if backbone_weights_path is not None:
            state = _load_state_dict(backbone_weights_path)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = self.net.backbone.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{backbone_weights_path} is not a ResNet-50 state dict: missing keys "
                                 f"{missing[:5]}, unexpected keys {unexpected[:5]}")
        if weights_path is not None:
            state = _load_state_dict(weights_path)
            state = {k.removeprefix("net."): v for k, v in state.items() if not k.startswith("aux_classifier.")}
            own = self.net.state_dict()
            if head == "replace":
                fresh = [k for k in own if k.startswith("classifier.")]
            else:  # a last layer trained for another number of classes stays random
                fresh = [k for k in state if k.startswith("classifier.4.") and state[k].shape != own.get(k, state[k]).shape]
            state = {k: v for k, v in state.items() if k not in fresh and not (head == "replace" and k.startswith("classifier."))}
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            missing = [k for k in missing if k not in fresh]
            if missing or unexpected:
                raise ValueError(f"{weights_path} is not a DeepLabV3-ResNet50 state dict: missing keys "
                                 f"{missing[:5]}, unexpected keys {unexpected[:5]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (weights are only loaded from a local path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
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
