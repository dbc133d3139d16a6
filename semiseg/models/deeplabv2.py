"""DeepLab-v2 with a ResNet-101 backbone, as used by AdvSemiSeg (Hung et al., BMVC 2018; seed 000).

The network is the caffe-style DeepLab-v2 ResNet of the original release, kept detail for detail so that
the published AdvSemiSeg checkpoints load with their own key names and give the same logits:

* bottleneck with the stride in the *first 1x1* convolution (torchvision's ResNet puts it in the 3x3);
* stem max pooling with ``ceil_mode=True`` (a 500-pixel side gives 126 after the stem, not 125);
* layer3 and layer4 keep stride 1 and use dilation 2 and 4 in *every* block (output stride 8);
* BatchNorm with eps 1e-5 and affine parameters, frozen by default (:class:`FrozenBatchNorm2d`);
* classifier ``layer5``: four 3x3 convolutions with dilation (and padding) 6, 12, 18, 24, with bias,
  whose outputs are summed (ASPP-L of DeepLab-v2);
* logits are upsampled to the input size with bilinear interpolation and ``align_corners=True``:
  AdvSemiSeg upsamples with ``nn.Upsample(mode='bilinear')``, which in the PyTorch 0.3 it was written for
  behaved as ``align_corners=True``, and its training script passes ``align_corners=True`` explicitly for
  PyTorch >= 0.4. ``forward_lowres`` returns the raw 1/8-resolution output of the original ``Res_Deeplab``.

Known defect of the original code: ``Classifier_Module.forward`` returns inside its loop, so only the first
two branches (dilation 6 and 12) are summed. semiseg sums all four; ``legacy_aspp=True`` reproduces the
defect, which is what the released AdvSemiSeg weights were trained with.

BatchNorm: AdvSemiSeg sets ``requires_grad=False`` on every BatchNorm parameter but calls ``model.train()``,
so during its training the layers normalised with batch statistics and updated their running averages.
semiseg's default (``freeze_bn=True``) is the DeepLab-v2 convention the paper describes, fully frozen
statistics, which also makes training with batch size 1 valid. ``freeze_bn="affine"`` is what the released
training code does: ``nn.BatchNorm2d`` layers whose weight and bias never train (and are left out of the
optimizer) but which normalise with batch statistics in train mode and update their running averages
(momentum 0.1). ``freeze_bn=False`` gives ordinary, trainable ``nn.BatchNorm2d`` layers. Both
``nn.BatchNorm2d`` modes have the same key names plus ``num_batches_tracked``.

Inputs: ``normalization = "caffe_rgb"``: RGB, 0..255, minus the caffe mean in RGB order (122.68, 116.67, 104.01),
no std. That is what AdvSemiSeg feeds its network in training and evaluation: its VOCDataSet reads BGR with cv2,
subtracts the BGR mean, then reverses the channels (``image[:, :, ::-1]``, commented "change to BGR"). Its
released checkpoints therefore expect RGB. With BGR ("caffe", pytorch-fcn's order) even a random-weight network
changes its argmax on a large share of the pixels (20-50% in quick checks).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.models.norm import FrozenBatchNorm2d

# Blocks per stage of ResNet-101. The class accepts other depths (tests use (1, 1, 1, 1) for speed).
RESNET101_LAYERS = (3, 4, 23, 3)
ASPP_DILATIONS = (6, 12, 18, 24)


FREEZE_BN_MODES = (True, False, "affine")


def _norm(num_features: int, frozen: bool | str) -> nn.Module:
    if frozen == "affine":  # AdvSemiSeg's code: affine parameters fixed, statistics from the batch
        bn = nn.BatchNorm2d(num_features)
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)
        return bn
    return FrozenBatchNorm2d(num_features) if frozen else nn.BatchNorm2d(num_features)


class Bottleneck(nn.Module):
    """Caffe-style ResNet bottleneck: 1x1 (carries the stride) -> 3x3 (carries the dilation) -> 1x1."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        frozen_bn: bool | str = True,
    ) -> None:
        super().__init__()
        # The stride sits in the first 1x1 conv, as in the MSRA caffe model DeepLab-v2 was converted from.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = _norm(planes, frozen_bn)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(planes, frozen_bn)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = _norm(planes * self.expansion, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ASPPClassifier(nn.Module):
    """DeepLab-v2 ASPP-L classifier: parallel dilated 3x3 convs from 2048 channels to classes, summed.

    The attribute name ``conv2d_list`` is AdvSemiSeg's (``Classifier_Module``), so checkpoints load as they are.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dilations: Sequence[int] = ASPP_DILATIONS,
        legacy_aspp: bool = False,
    ) -> None:
        super().__init__()
        self.legacy_aspp = legacy_aspp
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # the seed's initialisation
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # legacy_aspp: the released AdvSemiSeg code returns inside its summation loop, after branch 2.
        branches = self.conv2d_list[:2] if self.legacy_aspp else self.conv2d_list
        out = branches[0](x)
        for conv in branches[1:]:
            out = out + conv(x)
        return out

    def extra_repr(self) -> str:
        return "legacy_aspp=True (sums the first two branches only)" if self.legacy_aspp else ""


class DeepLabV2(nn.Module):
    """DeepLab-v2 (ResNet, output stride 8, ASPP-L). See the module docstring for the compatibility details.

    Args:
        num_classes: output channels.
        layers: bottleneck blocks per stage; (3, 4, 23, 3) is ResNet-101.
        freeze_bn: ``True`` frozen BatchNorm (default, as DeepLab-v2), ``"affine"`` fixed affine parameters
            with batch statistics (the released AdvSemiSeg training), ``False`` trainable ``nn.BatchNorm2d``.
        legacy_aspp: sum only the first two ASPP branches, as the released AdvSemiSeg code does.
        align_corners: for the final bilinear upsampling (True matches AdvSemiSeg).
        head_lr_mult: learning-rate multiplier of the classifier in :meth:`param_groups` (10 in the seed).
    """

    normalization = "caffe_rgb"  # see the module docstring

    def __init__(
        self,
        num_classes: int,
        *,
        layers: Sequence[int] = RESNET101_LAYERS,
        freeze_bn: bool | str = True,
        legacy_aspp: bool = False,
        aspp_dilations: Sequence[int] = ASPP_DILATIONS,
        align_corners: bool = True,
        head_lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        if not (isinstance(freeze_bn, bool) or freeze_bn == "affine"):
            raise ValueError(f"freeze_bn must be one of {FREEZE_BN_MODES}, got {freeze_bn!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of the 4 ResNet stages, got {layers!r}")
        self.num_classes = num_classes
        self.freeze_bn = freeze_bn
        self.align_corners = align_corners
        self.head_lr_mult = head_lr_mult

        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(64, freeze_bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)  # ceil: caffe pooling
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        self.layer5 = ASPPClassifier(512 * Bottleneck.expansion, num_classes, aspp_dilations, legacy_aspp)

        # The seed initialises every backbone conv with N(0, 0.01) and BN to identity. The paper always
        # starts from pretrained weights; this only matters for tests and from-scratch experiments.
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith("layer5."):
                nn.init.normal_(module.weight, 0.0, 0.01)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                _norm(out_channels, self.freeze_bn),
            )
        # Unlike torchvision's replace_stride_with_dilation, the first block of a dilated stage is dilated
        # too (AdvSemiSeg passes the stage's dilation to every block).
        blocks_ = [Bottleneck(self._inplanes, planes, stride, dilation, downsample, self.freeze_bn)]
        self._inplanes = out_channels
        blocks_ += [Bottleneck(out_channels, planes, 1, dilation, None, self.freeze_bn) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    @property
    def legacy_aspp(self) -> bool:
        return self.layer5.legacy_aspp

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output: 2048 channels at 1/8 of the input (rounded up by the caffe-style pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/8 resolution: what AdvSemiSeg's ``Res_Deeplab`` returns."""
        return self.layer5(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_lowres(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def param_groups(self) -> list[dict]:
        """Backbone at 1x and classifier at ``head_lr_mult`` (10x), as AdvSemiSeg's ``optim_parameters``.

        Like ``get_1x_lr_params_NOscale``, the backbone group holds only parameters with ``requires_grad``,
        so frozen BatchNorm parameters are left out.
        """
        backbone = [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]
        return [
            {
                "name": "backbone",
                "params": [p for m in backbone for p in m.parameters() if p.requires_grad],
                "lr_mult": 1.0,
            },
            {"name": "head", "params": list(self.layer5.parameters()), "lr_mult": self.head_lr_mult},
        ]


# Key prefixes of the classifier; everything else is backbone (what pretrained_backbone loads).
HEAD_PREFIXES = ("layer5.",)


def deeplabv2_resnet101(
    num_classes: int, *, pretrained_backbone: bool | str | os.PathLike = False, **options
) -> DeepLabV2:
    """DeepLab-v2 ResNet-101 (44.05M parameters with 21 classes), AdvSemiSeg's segmentation network.

    ``pretrained_backbone``:
      * ``True``: torchvision's ``ResNet101_Weights.IMAGENET1K_V1``. The paper starts from an MS-COCO
        pretrained *caffe* ResNet-101 instead; torchvision's ResNet was trained with the stride in the 3x3
        conv and without dilation, so its weights load (same names and shapes) but the network computes
        something different from torchvision's: a good initialisation, not an equal-output port. A warning
        says so.
      * a path: a local checkpoint, e.g. AdvSemiSeg's ``resnet101COCO-41f33a49.pth`` (``Scale.``-prefixed
        keys are recognised) or a torchvision ResNet-101 file. Only backbone tensors are taken; the
        classifier keeps its initialisation.

    ``options`` go to :class:`DeepLabV2` (``freeze_bn``, ``legacy_aspp``, ``align_corners``, ...).
    To load a complete released AdvSemiSeg model use ``load_weights`` with ``legacy_aspp=True``.
    """
    from torchvision.models import ResNet101_Weights

    model = DeepLabV2(num_classes, layers=RESNET101_LAYERS, **options)
    if pretrained_backbone:
        from semiseg.models.weights import load_pretrained_backbone

        load_pretrained_backbone(model, pretrained_backbone, ResNet101_Weights.IMAGENET1K_V1, HEAD_PREFIXES)
    return model
