"""DeepLabV3+ (Chen et al., ECCV 2018) on MobileNetV2 (seed 003) and, as extras, ResNet-50/101.

The MobileNetV2 variant follows bubbliiiing/deeplabv3-plus-pytorch closely enough that its released
checkpoints give the same logits after :func:`semiseg.models.load_weights` converts them:

* backbone: torchvision's MobileNetV2 ``features[:-1]`` (the final 1x1 conv to 1280 channels is unused).
  Low-level features are ``features[:4]`` (24 channels, 1/4), high-level ``features[4:]`` (320 channels).
  Output stride 16 turns the stride of block 14 into stride 1 and dilates the later 3x3 convolutions by 2;
  output stride 8 also does it from block 7 (dilation 2, then 4). This is exactly bubbliiiing's
  ``_nostride_dilate``.
* ASPP: 1x1 branch, three 3x3 branches with dilation (6, 12, 18) * 16 / output_stride, image pooling
  (global mean -> 1x1 conv -> BN -> ReLU -> broadcast), concatenation -> 1x1 conv to 256. All convs with bias.
* decoder: low-level 1x1 conv to 48, high-level features upsampled to 1/4 (bilinear, ``align_corners=True``),
  two 3x3 convs (dropout 0.5 and 0.1 as in bubbliiiing), 1x1 classifier, bilinear (``align_corners=True``)
  upsampling to the input size.

Module names (``aspp.branch1`` .. ``aspp.branch5_conv``, ``aspp.conv_cat``, ``shortcut_conv``, ``cat_conv``,
``cls_conv``) are bubbliiiing's, so the head keys need no renaming; the backbone uses torchvision's names,
so ``pretrained_backbone=True`` loads torchvision's ImageNet weights directly, and bubbliiiing's backbone keys
are renamed by the converter (same tensors, different nesting of torchvision's ``Conv2dNormActivation``).

Inputs: ``normalization = "imagenet"`` (what torchvision's pretrained backbone expects). bubbliiiing trained
its released weights on RGB / 255 *without* mean/std; feed such inputs to reproduce its outputs (load_weights
warns about it).

Batch size 1 in training mode is refused with a clear error: the image-pooling branch has one value per
channel per image, so its BatchNorm cannot compute batch statistics from a single image.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Blocks of torchvision's mobilenet_v2().features where the resolution halves (the stride-2 blocks).
_MOBILENET_DOWN_IDX = (2, 4, 7, 14)
ASPP_RATES_OS16 = (6, 12, 18)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel_size == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=True),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _nostride_dilate(module: nn.Module, dilate: int) -> None:
    """Turn a strided conv into a stride-1 conv and dilate 3x3 convs, keeping the receptive field.

    The first conv of a stage (the one that had stride 2) gets half the stage's dilation, the others all of it:
    the same rule as bubbliiiing's and the CSAIL semantic-segmentation code's MobileNetV2 dilation.
    """
    if not isinstance(module, nn.Conv2d):
        return
    if module.stride == (2, 2):
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            module.dilation = module.padding = (dilate // 2, dilate // 2)
    elif module.kernel_size == (3, 3):
        module.dilation = module.padding = (dilate, dilate)


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 features without the last 1x1 conv; returns (low_level, high_level)."""

    low_level_channels = 24
    out_channels = 320

    def __init__(self, output_stride: int = 16) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.features = mobilenet_v2().features[:-1]
        last = len(self.features)
        if output_stride == 8:
            for i in range(_MOBILENET_DOWN_IDX[-2], _MOBILENET_DOWN_IDX[-1]):
                self.features[i].apply(partial(_nostride_dilate, dilate=2))
            for i in range(_MOBILENET_DOWN_IDX[-1], last):
                self.features[i].apply(partial(_nostride_dilate, dilate=4))
        else:
            for i in range(_MOBILENET_DOWN_IDX[-1], last):
                self.features[i].apply(partial(_nostride_dilate, dilate=2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.features[:4](x)
        return low, self.features[4:](low)


class ResNetBackbone(nn.Module):
    """torchvision ResNet with dilated late stages; returns (layer1, layer4) features.

    Key names are torchvision's under ``backbone.`` so its ImageNet checkpoints load unchanged. ``deep_stem=True``
    replaces the 7x7 stem convolution with three 3x3 ones (64, 64, 128 channels: ResNet-v1c, the stem of UniMatch's
    and mmsegmentation's ResNets), named as UniMatch names them (``conv1.0``, ``conv1.1``, ``conv1.3``, ``conv1.4``,
    ``conv1.6``, then ``bn1`` over 128 channels), so their backbone files and trained checkpoints load.
    """

    low_level_channels = 256
    out_channels = 2048

    def __init__(self, depth: int = 101, output_stride: int = 16, multi_grid: Sequence[int] | None = None,
                 deep_stem: bool = False) -> None:
        super().__init__()
        from torchvision.models import resnet50, resnet101

        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        builders = {50: resnet50, 101: resnet101}
        net = builders[depth](replace_stride_with_dilation=[False, output_stride == 8, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if deep_stem:
            self._deep_stem()
        if multi_grid is not None:
            self._multi_grid(list(multi_grid))

    def _deep_stem(self) -> None:
        """Three 3x3 convolutions (the first with stride 2) instead of the 7x7 one; the stem ends with 128 channels,
        so layer1's first block takes 128 (its 1x1 convolution and its shortcut's) instead of 64."""
        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

        self.conv1 = nn.Sequential(conv(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   conv(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True), conv(64, 128))
        self.bn1 = nn.BatchNorm2d(128)
        first = self.layer1[0]
        first.conv1 = nn.Conv2d(128, first.conv1.out_channels, 1, bias=False)
        first.downsample[0] = nn.Conv2d(128, first.downsample[0].out_channels, 1, bias=False)
        for m in (*self.conv1.modules(), first.conv1, first.downsample[0]):
            if isinstance(m, nn.Conv2d):  # torchvision's initialisation of every ResNet convolution
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _multi_grid(self, grid: list[int]) -> None:
        """Multiply the dilation of layer4's blocks' 3x3 convolutions by ``grid`` (DeepLabv3's Multi-Grid; UniMatch's
        ``multi_grid: true`` is [2, 2, 4], which at output stride 8 gives dilations 4/8/16). Weights are unchanged."""
        blocks = list(self.layer4)
        if len(grid) != len(blocks) or any(int(g) != g or g < 1 for g in grid):
            raise ValueError(f"multi_grid needs {len(blocks)} positive integers (one per layer4 block), got {grid}")
        for block, factor in zip(blocks, grid):
            dilation = block.conv2.dilation[0] * int(factor)
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image pooling (bubbliiiing's module names)."""

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = ASPP_RATES_OS16) -> None:
        super().__init__()
        r1, r2, r3 = rates
        self.branch1 = _conv_bn_relu(in_channels, out_channels, 1)
        self.branch2 = _conv_bn_relu(in_channels, out_channels, 3, r1)
        self.branch3 = _conv_bn_relu(in_channels, out_channels, 3, r2)
        self.branch4 = _conv_bn_relu(in_channels, out_channels, 3, r3)
        self.branch5_conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.branch5_bn = nn.BatchNorm2d(out_channels)
        self.branch5_relu = nn.ReLU(inplace=True)
        self.conv_cat = _conv_bn_relu(out_channels * 5, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.branch5_relu(self.branch5_bn(self.branch5_conv(x.mean(dim=(2, 3), keepdim=True))))
        # Upsampling a 1x1 map bilinearly is a broadcast; expand() says so without an interpolation kernel.
        pooled = pooled.expand(-1, -1, x.shape[2], x.shape[3])
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x), pooled]
        return self.conv_cat(torch.cat(branches, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: a backbone returning (low-level, high-level) features, ASPP, and the low-level decoder.

    Args:
        num_classes: output channels.
        backbone: ``"mobilenetv2"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 16 (default) or 8; the ASPP rates scale with it (6/12/18 at 16, 12/24/36 at 8).
        align_corners: for both bilinear upsamplings (True matches bubbliiiing).
        head_lr_mult: learning-rate multiplier of everything but the backbone in :meth:`param_groups`.
        multi_grid: ResNet backbones: factors for the dilation of layer4's three blocks (e.g. [1, 2, 4], DeepLabv3;
            [2, 2, 4], UniMatch's ``multi_grid: true``).
        deep_stem: ResNet backbones: three 3x3 stem convolutions instead of one 7x7 (ResNet-v1c; UniMatch's ResNets).
        decoder_dropout: the dropout after the decoder's two 3x3 convolutions in training (bubbliiiing's 0.5 and
            0.1; UniMatch's decoder has none: ``[0, 0]``). Inference does not depend on it.
    """

    normalization = "imagenet"
    min_train_batch = 2  # images per forward pass in training: the ASPP pooling BatchNorm needs two values per channel

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "mobilenetv2",
        output_stride: int = 16,
        align_corners: bool = True,
        head_lr_mult: float = 10.0,
        multi_grid: Sequence[int] | None = None,
        deep_stem: bool = False,
        decoder_dropout: Sequence[float] = (0.5, 0.1),
    ) -> None:
        super().__init__()
        if backbone == "mobilenetv2":
            if multi_grid is not None or deep_stem:
                raise ValueError("multi_grid and deep_stem apply to the ResNet backbones, not mobilenetv2")
            self.backbone = MobileNetV2Backbone(output_stride)
        elif backbone in ("resnet50", "resnet101"):
            self.backbone = ResNetBackbone(int(backbone[len("resnet"):]), output_stride, multi_grid, deep_stem)
        else:
            raise ValueError(f"unknown DeepLabV3+ backbone {backbone!r}; use mobilenetv2, resnet50 or resnet101")
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.align_corners = align_corners
        self.head_lr_mult = head_lr_mult

        rates = tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)
        self.aspp = ASPP(self.backbone.out_channels, 256, rates)
        self.shortcut_conv = _conv_bn_relu(self.backbone.low_level_channels, 48, 1)
        dropout = tuple(decoder_dropout)
        if len(dropout) != 2 or not all(0 <= p < 1 for p in dropout):
            raise ValueError(f"decoder_dropout needs two probabilities in [0, 1), got {list(decoder_dropout)}")
        self.cat_conv = nn.Sequential(  # Dropout(0) stays in place so the convolutions keep their key names
            *_conv_bn_relu(256 + 48, 256, 3),
            nn.Dropout(dropout[0]),
            *_conv_bn_relu(256, 256, 3),
            nn.Dropout(dropout[1]),
        )
        self.cls_conv = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            raise ValueError(
                "DeepLabV3+ cannot train with batch size 1: the BatchNorm after ASPP image pooling sees a single "
                "value per channel. Use a batch size of at least 2 (e.g. data.batch_size=2), or call model.eval() "
                "for inference."
            )
        size = x.shape[-2:]
        low, high = self.backbone(x)
        high = self.aspp(high)
        low = self.shortcut_conv(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        logits = self.cls_conv(self.cat_conv(torch.cat([high, low], dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def param_groups(self) -> list[dict]:
        """Backbone at 1x, ASPP + decoder at ``head_lr_mult`` (the semiseg convention, 10x by default)."""
        head = [self.aspp, self.shortcut_conv, self.cat_conv, self.cls_conv]
        return [
            {"name": "backbone", "params": list(self.backbone.parameters()), "lr_mult": 1.0},
            {"name": "head", "params": [p for m in head for p in m.parameters()], "lr_mult": self.head_lr_mult},
        ]


HEAD_PREFIXES = ("aspp.", "shortcut_conv.", "cat_conv.", "cls_conv.")


def _build(backbone: str, default_weights, num_classes: int, pretrained_backbone, options) -> DeepLabV3Plus:
    if pretrained_backbone is True and options.get("deep_stem"):
        raise ValueError(
            "torchvision has no ImageNet weights for a deep-stem ResNet: pass the backbone file as "
            "pretrained_backbone (e.g. UniMatch's pretrained/resnet50.pth), or drop deep_stem for torchvision's")
    model = DeepLabV3Plus(num_classes, backbone=backbone, **options)
    if pretrained_backbone:
        from semiseg.models.weights import load_pretrained_backbone

        load_pretrained_backbone(model, pretrained_backbone, default_weights, HEAD_PREFIXES)
    return model


def deeplabv3plus_mobilenetv2(
    num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options
) -> DeepLabV3Plus:
    """DeepLabV3+ MobileNetV2 (5.82M parameters with 21 classes at output stride 16).

    ``pretrained_backbone=True`` loads torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``; a path loads a
    local file (torchvision layout, or bubbliiiing's / CSAIL's ``mobilenet_v2.pth.tar``). ``options``:
    ``output_stride`` (16 or 8), ``align_corners``, ``head_lr_mult``, ``decoder_dropout``.
    """
    from torchvision.models import MobileNet_V2_Weights

    return _build("mobilenetv2", MobileNet_V2_Weights.IMAGENET1K_V1, num_classes, pretrained_backbone, options)


def deeplabv3plus_resnet50(
    num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options
) -> DeepLabV3Plus:
    """DeepLabV3+ ResNet-50 (torchvision backbone, ``ResNet50_Weights.IMAGENET1K_V1`` when pretrained). ``options``:
    ``output_stride``, ``align_corners``, ``head_lr_mult``, ``multi_grid`` (layer4's dilation factors), ``deep_stem``
    (UniMatch's ResNet; its backbone file loads as a path), ``decoder_dropout``."""
    from torchvision.models import ResNet50_Weights

    return _build("resnet50", ResNet50_Weights.IMAGENET1K_V1, num_classes, pretrained_backbone, options)


def deeplabv3plus_resnet101(
    num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options
) -> DeepLabV3Plus:
    """DeepLabV3+ ResNet-101 (torchvision backbone, ``ResNet101_Weights.IMAGENET1K_V1`` when pretrained). ``options``:
    ``output_stride``, ``align_corners``, ``head_lr_mult``, ``multi_grid`` (layer4's dilation factors), ``deep_stem``
    (UniMatch's ResNet; its backbone file loads as a path), ``decoder_dropout``."""
    from torchvision.models import ResNet101_Weights

    return _build("resnet101", ResNet101_Weights.IMAGENET1K_V1, num_classes, pretrained_backbone, options)
