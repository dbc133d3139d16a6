"""FCN on ResNet-18 as in "Dive into Deep Learning" (seed 002).

ResNet-18 without its global average pool and fc layer (output stride 32, 512 channels), a 1x1 convolution
to the classes (``final_conv``) and a transposed convolution with kernel 64, stride 32, padding 16
(``transpose_conv``) initialised as bilinear upsampling. The layer names are d2l's; the ResNet body keeps
torchvision's names under ``backbone.`` (``backbone.conv1.weight``, ``backbone.layer4.1.bn2.bias`` ...).

Input sizes. With k=64, s=32, p=16 the transposed convolution returns exactly ``32 * h`` rows for ``h`` feature
rows, and the ResNet body gives ``h = ceil(H / 32)`` rows (every stride-2 layer rounds up). So the output is
``32 * ceil(H / 32) >= H`` rows: equal to H when H is a multiple of 32 (d2l's 320x480 crops), larger
otherwise. The output is cropped to its top-left ``H x W``. This keeps d2l's alignment exactly: every strided
layer starts at the image's top-left pixel, and the transposed convolution writes feature row j to output rows
``32 j - 16 .. 32 j + 47`` whatever H is, so output row y lines up with input row y just as for multiples of
32, and the surplus rows lie past the bottom/right edge. Resizing the output instead would stretch the grid
(a misalignment of up to 31 pixels); padding the input to a multiple of 32 would cost compute and change
only the values next to the padded edge.

Options: ``learn_upsampling`` (True, as d2l trains every parameter; False keeps the bilinear kernel fixed),
``head_lr_mult`` (10.0). ``param_groups()``: ``backbone`` = the ResNet body (lr x1), ``head`` = final_conv +
transpose_conv (lr x ``head_lr_mult``). ``normalization = "imagenet"`` (torchvision's ResNet-18 weights).
``semiseg.models.weights.convert_d2l_fcn`` maps a state dict of d2l's ``nn.Sequential`` model to this layout.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from semiseg.models.layers import UpsamplingConvTranspose2d, init_bilinear_


# Key prefixes of the classifier; everything else is the ResNet body (what pretrained_backbone loads).
HEAD_PREFIXES = ("final_conv.", "transpose_conv.")


class FCNResNet18(nn.Module):
    """d2l's FCN on ResNet-18; ``forward(x)`` returns logits ``(N, num_classes, H, W)`` for any ``H, W``."""

    normalization = "imagenet"

    def __init__(self, num_classes: int, *, learn_upsampling: bool = True, head_lr_mult: float = 10.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        body = resnet18(weights=None)
        self.backbone = nn.Sequential(
            OrderedDict(
                (name, getattr(body, name))
                for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
            )
        )
        self.final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        # kernel = 2 * stride and padding = stride / 2 make the output exactly 32x the input (see layers.py).
        self.transpose_conv = UpsamplingConvTranspose2d(num_classes, num_classes, kernel_size=64, stride=32, padding=16)
        # d2l keeps PyTorch's default init for final_conv; the seed's write-up uses Xavier, which we follow.
        nn.init.xavier_uniform_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)
        init_bilinear_(self.transpose_conv)  # also zeroes its bias, so it starts as exact bilinear upsampling
        self.transpose_conv.requires_grad_(learn_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        h = self.transpose_conv(self.final_conv(self.backbone(x)))
        # 32 * ceil(H / 32) >= H rows, aligned at the top-left: see the module docstring.
        return h[:, :, :height, :width]

    def param_groups(self) -> list[dict[str, Any]]:
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for m in (self.final_conv, self.transpose_conv) for p in m.parameters() if p.requires_grad]
        return [
            {"name": "backbone", "params": backbone, "lr_mult": 1.0},
            {"name": "head", "params": head, "lr_mult": self.head_lr_mult},
        ]


def fcn_resnet18(num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options: Any) -> FCNResNet18:
    """FCN on ResNet-18 (d2l). ``pretrained_backbone``: True for torchvision's ResNet18_Weights.IMAGENET1K_V1
    (cache or download) or the path of a torchvision resnet18 state dict. Options: ``learn_upsampling`` (True),
    ``head_lr_mult`` (10.0)."""
    model = FCNResNet18(num_classes, **options)
    if pretrained_backbone:
        from semiseg.models.weights import load_pretrained_backbone

        # a torchvision resnet18 state dict (its fc.* is ignored) into the body
        load_pretrained_backbone(model, pretrained_backbone, ResNet18_Weights.IMAGENET1K_V1, HEAD_PREFIXES,
                                 layout="torchvision_resnet", expected="torchvision resnet18")
    return model


__all__ = ["FCNResNet18", "fcn_resnet18", "HEAD_PREFIXES"]
