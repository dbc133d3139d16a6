"""AdvSemiSeg's fully convolutional discriminator (seed 000).

Five 4x4 convolutions with stride 2 and padding 1 (64-128-256-512-1 channels), LeakyReLU(0.2) after all but
the last. Input: class probabilities (N, num_classes, H, W), e.g. ``softmax(logits)`` or one-hot labels.
Output: one confidence logit per location at 1/32 of the input (each conv maps n to floor(n / 2)).

The paper describes an upsampling layer back to the input size; the released code comments it out and
upsamples in the training script instead (``nn.Upsample(mode='bilinear', align_corners=True)``). Both are
offered: ``upsample=False`` (default, the released module) or ``upsample=True`` (the paper's module, with the
training script's ``align_corners=True``). There is no sigmoid: the losses take logits.

Key names (``conv1`` .. ``conv4``, ``classifier``) are the original ones, so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FCDiscriminator(nn.Module):
    def __init__(self, num_classes: int, ndf: int = 64, *, upsample: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.upsample = upsample
        self.conv1 = nn.Conv2d(num_classes, ndf, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, kernel_size=4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(ndf * 2, ndf * 4, kernel_size=4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=2, padding=1)
        self.classifier = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"FCDiscriminator expects (N, {self.num_classes}, H, W) class probabilities, got {tuple(x.shape)}"
            )
        size = x.shape[-2:]
        if min(size) < 32:
            raise ValueError(f"FCDiscriminator needs inputs of at least 32x32 (five stride-2 convs), got {tuple(size)}")
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.leaky_relu(conv(x))
        x = self.classifier(x)
        if self.upsample:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return x
