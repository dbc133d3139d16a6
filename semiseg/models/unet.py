"""A small U-Net (Ronneberger et al., MICCAI 2015, shrunk) for training from scratch on a CPU.

Not one of the seed papers' models: the zoo's other models are built around ImageNet backbones and, from
scratch on a few thousand small images, learn slowly. This one is the learner of the synthetic data study
(benchmarks/synthetic_label_fraction.py: 0.74 val mIoU with all 1,000 scenes, 0.54 with 1/8, 2,000 steps),
where the few-label teacher has to be good enough for its pseudo labels to teach anything.

* encoder (``backbone``): a stride-2 stem, then max-pool + two 3x3 conv-BN-ReLU blocks per level; the deepest
  level (stride 8) adds dilation 2 and 4 for context. It returns the features of every level (finest first),
  so UniMatch's feature perturbation (a hook on ``model.backbone``) perturbs all the skips.
* decoder: bilinear upsampling of the coarser map, concatenation with the skip, one 3x3 conv-BN-ReLU per level,
  a 1x1 classifier at stride 2 and bilinear upsampling to the input size. No dropout.

``width`` sets the channels (stem ``width``, levels 2/3/4 x ``width``); the default 16 has 0.25M parameters.
Inputs use ImageNet mean/std normalisation (there are no pretrained weights; any fixed normalisation works).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_ch: int, out_ch: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class UNetEncoder(nn.Module):
    """Returns (stride-2, stride-4, stride-8) features with (2, 3, 4) x ``width`` channels."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1), nn.ReLU(inplace=True), _block(w, 2 * w))
        self.level2 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), _block(2 * w, 3 * w), _block(3 * w, 3 * w))
        self.level3 = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), _block(3 * w, 4 * w), _block(4 * w, 4 * w, 2),
                                    _block(4 * w, 4 * w, 4))
        self.channels = (2 * w, 3 * w, 4 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.stem(x)
        f2 = self.level2(f1)
        return f1, f2, self.level3(f2)


class SmallUNet(nn.Module):
    normalization = "imagenet"
    min_train_batch = 1  # no layer needs more than one image for its batch statistics

    def __init__(self, num_classes: int, *, width: int = 16, head_lr_mult: float = 1.0) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"U-Net width must be >= 1, got {width}")
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        self.backbone = UNetEncoder(width)
        c1, c2, c3 = self.backbone.channels
        self.decode2 = _block(c3 + c2, c2)
        self.decode1 = _block(c2 + c1, c1)
        self.classifier = nn.Conv2d(c1, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = self.backbone(x)
        y = self.decode2(torch.cat([_up(f3, f2), f2], dim=1))
        y = self.decode1(torch.cat([_up(y, f1), f1], dim=1))
        return _up(self.classifier(y), x)

    def param_groups(self) -> list[dict]:
        """Encoder at 1x, decoder + classifier at ``head_lr_mult`` (1 by default: nothing is pretrained)."""
        head = [self.decode2, self.decode1, self.classifier]
        return [
            {"name": "backbone", "params": list(self.backbone.parameters()), "lr_mult": 1.0},
            {"name": "head", "params": [p for m in head for p in m.parameters()], "lr_mult": self.head_lr_mult},
        ]


def unet_small(num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options) -> SmallUNet:
    """Small U-Net from scratch (0.25M parameters at the default ``width=16``). ``options``: ``width``,
    ``head_lr_mult``. It has no pretrained weights: ``pretrained_backbone`` must stay false."""
    if pretrained_backbone:
        raise ValueError("unet_small has no pretrained backbone (it is trained from scratch); "
                         "set model.pretrained_backbone=false")
    return SmallUNet(num_classes, **options)
