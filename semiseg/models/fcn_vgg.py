"""FCN-32s, FCN-16s and FCN-8s on VGG16 in the caffe layout (Long, Shelhamer, Darrell; seed 004).

Layout, as in shelhamer/fcn.berkeleyvision.org and its PyTorch port wkentaro/pytorch-fcn (torchfcn):

* VGG16 convolutions ``conv1_1`` .. ``conv5_3`` with 2x2 max pooling in **ceil mode** (caffe rounds pooled
  sizes up), and ``conv1_1`` padded by **100** pixels. The padding is what makes the network work on any
  input size: pool5 has at least ``ceil((H + 198) / 32) >= 7`` rows, so the 7x7 ``fc6`` always has an output,
  and the upsampled scores are always larger than the image, so cropping (never padding) aligns them.
* ``fc6`` (7x7, 4096) and ``fc7`` (1x1, 4096) are VGG's fully connected layers as convolutions, each followed
  by ReLU and dropout (p=0.5); ``score_fr`` is a 1x1 convolution to the classes.
* FCN-32s upsamples by 32 at once (``upscore``). FCN-16s upsamples by 2 (``upscore2``), adds the scores
  of pool4 (``score_pool4``) and upsamples by 16 (``upscore16``). FCN-8s adds pool3 after another 2x
  (``upscore_pool4``, ``score_pool3``) and upsamples by 8 (``upscore8``). Upsampling layers are transposed
  convolutions without padding, initialised as bilinear upsampling.
* Crops align each map with the input. With caffe's coordinate mapping (a layer maps output row ``y`` to
  input row ``stride * y + (kernel - 1) / 2 - padding``) score_fr row ``y`` sits at input row ``32 y + 12.5``:
  conv1_1 maps to ``y - 99`` (its padding of 100), the five pools map pool5 row ``y`` to ``32 y + 15.5 - 99``,
  and fc6's 7x7 window is centred 3 pool5 rows further on, ``32 (y + 3) + 15.5 - 99``. A transposed
  convolution inverts the mapping of a convolution, so the outputs sit at these input rows:

  ====================  ==================  ==============================
  map                   row ``o`` at input  crop
  ====================  ==================  ==============================
  upscore (x32)         ``o - 19``          output ``[19 : 19 + H]``
  upscore2 (x2)         ``16 o - 11.5``     score_pool4 (``16 y - 91.5``) ``[5 : ...]``
  upscore16 (x16)       ``o - 27``          output ``[27 : 27 + H]``
  upscore_pool4 (x2)    ``8 o - 23.5``      score_pool3 (``8 y - 95.5``) ``[9 : ...]``
  upscore8 (x8)         ``o - 31``          output ``[31 : 31 + H]``
  ====================  ==================  ==============================

Weights: the module's own state-dict keys are pytorch-fcn's (``conv1_1.weight`` ... ``upscore8.weight``),
so its released, caffe-converted FCN-32s/16s/8s checkpoints load with ``load_state_dict(strict=True)`` and
give the same logits (FCN8sAtOnce: build ``fcn8s_vgg16(..., at_once=True)``). Those weights expect caffe
input: BGR, 0..255, mean subtracted (``normalization = "caffe"``). Recognising pytorch-fcn's files and the VGG16
surgery (torchvision's ``vgg16`` -> ``conv1_1`` .. ``fc7``) are layout conversions: ``semiseg.models.weights``.

Choices (see the builders' docstrings for the options):

* Upsampling is **fixed bilinear** by default (``learn_upsampling=False``): every deconvolution of the
  reference caffe nets has ``lr_mult: 0`` and pytorch-fcn leaves the ConvTranspose2d weights out of its
  optimizer. The weights stay parameters (they are in the released state dicts and in the parameter count,
  134.49M for FCN-8s with 21 classes), with ``requires_grad=False``.
* ``param_groups()``: ``backbone`` = everything copied from VGG16 (conv1_1 .. conv5_3, fc6, fc7) at lr x1,
  ``head`` = the new score layers (and the upsampling when learned) at lr x10, the semiseg convention.
  The reference recipe used x1 everywhere and x2 for biases (without weight decay); ``head_lr_mult=1.0,
  bias_lr_mult=2.0`` reproduces the learning rates (biases get groups of their own, named ``*_bias``).
* Dropout after fc6/fc7 is element-wise, as caffe's; pytorch-fcn uses ``nn.Dropout2d`` (whole channels):
  ``channel_dropout=True`` matches it. Inference is unaffected.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights

from semiseg.models.layers import UpsamplingConvTranspose2d, init_bilinear_

# (name, in_channels, out_channels) of the VGG16 convolutions, one list per block; a ceil-mode 2x2 max pool
# follows each block.
VGG16_BLOCKS: list[list[tuple[str, int, int]]] = [
    [("conv1_1", 3, 64), ("conv1_2", 64, 64)],
    [("conv2_1", 64, 128), ("conv2_2", 128, 128)],
    [("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)],
    [("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)],
    [("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)],
]
VGG16_CONVS: list[str] = [name for block in VGG16_BLOCKS for name, _, _ in block]
BACKBONE_LAYERS: list[str] = VGG16_CONVS + ["fc6", "fc7"]
# Key prefixes of the layers a pretrained backbone does not provide (scores and upsampling).
HEAD_PREFIXES = ("score_", "upscore")
# Crop offsets derived in the module docstring.
OUTPUT_OFFSET = {32: 19, 16: 27, 8: 31}
POOL4_OFFSET = 5
POOL3_OFFSET = 9
# FCN8sAtOnce (caffe voc-fcn8s-atonce) scales the skip inputs so that all three streams start at a
# comparable magnitude when the whole net is trained in one stage.
AT_ONCE_POOL4_SCALE = 0.01
AT_ONCE_POOL3_SCALE = 0.0001

NORMALIZATIONS = ("caffe", "imagenet")


class FCNVGG16(nn.Module):
    """FCN-32s / FCN-16s / FCN-8s (``output_stride`` 32 / 16 / 8) on VGG16 in the caffe layout.

    ``forward(x)`` takes ``(N, 3, H, W)`` for any ``H, W >= 1`` and returns logits ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        num_classes: int,
        output_stride: int = 8,
        *,
        at_once: bool = False,
        learn_upsampling: bool = False,
        channel_dropout: bool = False,
        normalization: str = "caffe",
        head_lr_mult: float = 10.0,
        bias_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_OFFSET:
            raise ValueError(f"output_stride must be 32, 16 or 8, got {output_stride}")
        if at_once and output_stride == 32:
            raise ValueError("at_once scales the pool3/pool4 skip inputs; FCN-32s has no skips (use fcn8s_vgg16)")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.at_once = at_once
        self.normalization = normalization
        self.head_lr_mult = head_lr_mult
        self.bias_lr_mult = bias_lr_mult

        for block in VGG16_BLOCKS:
            for name, c_in, c_out in block:
                # conv1_1's padding of 100 is explained in the module docstring.
                setattr(self, name, nn.Conv2d(c_in, c_out, 3, padding=100 if name == "conv1_1" else 1))
        dropout = nn.Dropout2d if channel_dropout else nn.Dropout
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.drop6 = dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop7 = dropout(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if output_stride <= 8:
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        if output_stride <= 16:
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)

        def up(factor: int) -> nn.ConvTranspose2d:
            return UpsamplingConvTranspose2d(num_classes, num_classes, 2 * factor, stride=factor, bias=False)

        # Attribute names are pytorch-fcn's (they are the state-dict keys of its released weights).
        if output_stride == 32:
            self.upscore = up(32)
        else:
            self.upscore2 = up(2)
            if output_stride == 16:
                self.upscore16 = up(16)
            else:
                self.upscore8 = up(8)
                self.upscore_pool4 = up(2)

        self._init_weights()
        for module in self.upsampling_layers():
            module.weight.requires_grad_(learn_upsampling)

    # ----------------------------------------------------------------------------------------------- init
    @torch.no_grad()
    def _init_weights(self) -> None:
        # Backbone as torchvision initialises VGG (used when no pretrained backbone is loaded); score layers
        # zero as in the caffe nets and pytorch-fcn, so training starts from all-zero logits; upsampling bilinear.
        for name in VGG16_CONVS:
            conv = getattr(self, name)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for conv in (self.fc6, self.fc7):
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
        for conv in self.score_layers():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        for module in self.upsampling_layers():
            init_bilinear_(module)

    def score_layers(self) -> list[nn.Conv2d]:
        return [m for m in (self.score_fr, getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)) if m is not None]

    def upsampling_layers(self) -> list[nn.ConvTranspose2d]:
        return [m for m in self.modules() if isinstance(m, nn.ConvTranspose2d)]

    def backbone_layers(self) -> list[nn.Conv2d]:
        return [getattr(self, name) for name in BACKBONE_LAYERS]

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pools = []
        h = x
        for block in VGG16_BLOCKS:
            for name, _, _ in block:
                h = F.relu(getattr(self, name)(h), inplace=True)
            h = F.max_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)
            pools.append(h)
        _, _, pool3, pool4, pool5 = pools

        h = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        h = self.score_fr(h)  # 1/32

        if self.output_stride == 32:
            h = self.upscore(h)
        else:
            h = self.upscore2(h)  # 1/16
            if self.at_once:
                pool4 = pool4 * AT_ONCE_POOL4_SCALE
            h = h + _crop(self.score_pool4(pool4), POOL4_OFFSET, h.shape[-2], h.shape[-1])
            if self.output_stride == 16:
                h = self.upscore16(h)
            else:
                h = self.upscore_pool4(h)  # 1/8
                if self.at_once:
                    pool3 = pool3 * AT_ONCE_POOL3_SCALE
                h = h + _crop(self.score_pool3(pool3), POOL3_OFFSET, h.shape[-2], h.shape[-1])
                h = self.upscore8(h)
        return _crop(h, OUTPUT_OFFSET[self.output_stride], height, width)

    # ---------------------------------------------------------------------------------------- training API
    def param_groups(self) -> list[dict[str, Any]]:
        """``backbone`` (VGG16 convs + fc6/fc7, lr x1) and ``head`` (score layers, and the upsampling
        when learned; lr x ``head_lr_mult``). With ``bias_lr_mult != 1`` biases get groups of their own
        (``backbone_bias``, ``head_bias``) at ``bias_lr_mult`` times their group's rate. Frozen parameters
        (``requires_grad=False``, e.g. the fixed upsampling) are left out."""
        head_modules: list[nn.Module] = [*self.score_layers(), *self.upsampling_layers()]
        groups = []
        for name, modules, lr_mult in (("backbone", self.backbone_layers(), 1.0), ("head", head_modules, self.head_lr_mult)):
            weights = [m.weight for m in modules if m.weight.requires_grad]
            biases = [m.bias for m in modules if m.bias is not None and m.bias.requires_grad]
            if self.bias_lr_mult == 1.0:
                groups.append({"name": name, "params": weights + biases, "lr_mult": lr_mult})
            else:
                groups.append({"name": name, "params": weights, "lr_mult": lr_mult})
                groups.append({"name": f"{name}_bias", "params": biases, "lr_mult": lr_mult * self.bias_lr_mult})
        return [g for g in groups if g["params"]]


def _crop(t: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    # No .contiguous(): the result feeds an addition or the loss, and a view keeps channels_last intact.
    return t[:, :, offset : offset + height, offset : offset + width]


# ------------------------------------------------------------------------------------------------ builders
def _build(
    num_classes: int, output_stride: int, pretrained_backbone: bool | str | os.PathLike, options: dict[str, Any]
) -> FCNVGG16:
    model = FCNVGG16(num_classes, output_stride, **options)
    if pretrained_backbone:
        from semiseg.models.weights import load_pretrained_backbone

        # VGG16 weights into conv1_1 .. fc7 ("surgery", semiseg.models.weights.vgg16_surgery), or the backbone of a
        # pytorch-fcn checkpoint; the score and upsampling layers keep their initialisation.
        report = load_pretrained_backbone(model, pretrained_backbone, VGG16_Weights.IMAGENET1K_V1, HEAD_PREFIXES,
                                          expected="torchvision vgg16")
        # Default normalisation follows the weights the model holds: torchvision's VGG16 was trained on RGB
        # inputs normalised with the ImageNet mean/std; pytorch-fcn's FCN weights (what a randomly initialised
        # model is usually loaded with, or a pytorch-fcn checkpoint given as backbone) expect caffe input: BGR,
        # 0..255, mean-subtracted. A caffe-converted VGG16 in torchvision layout cannot be told apart: pass
        # normalization="caffe" explicitly for it.
        if "normalization" not in options and report.layout != "pytorch_fcn":
            model.normalization = "imagenet"
    return model


_OPTIONS_DOC = """
    Options: ``learn_upsampling`` (False: bilinear upsampling kept fixed, as in caffe and pytorch-fcn),
    ``channel_dropout`` (False: caffe's element-wise dropout; True: pytorch-fcn's Dropout2d),
    ``normalization`` ("caffe" or "imagenet"; default "imagenet" when ``pretrained_backbone`` loads
    torchvision's VGG16, else "caffe" for pytorch-fcn's weights; pass "caffe" with a caffe-converted VGG16
    file such as pytorch-fcn's vgg16_from_caffe.pth), ``head_lr_mult`` (10.0), ``bias_lr_mult`` (1.0; the
    reference recipe used 2.0 with head_lr_mult 1.0).
    ``pretrained_backbone``: True for torchvision's VGG16_Weights.IMAGENET1K_V1 (cache or download), or the
    path of a torchvision-layout vgg16 state dict (fc6/fc7 come from classifier.0/classifier.3) or of an FCN
    checkpoint in pytorch-fcn keys (its conv1_1 .. fc7 are copied; load score layers with load_weights)."""


def fcn32s_vgg16(num_classes: int, *, pretrained_backbone: bool | str = False, **options: Any) -> FCNVGG16:
    return _build(num_classes, 32, pretrained_backbone, options)


def fcn16s_vgg16(num_classes: int, *, pretrained_backbone: bool | str = False, **options: Any) -> FCNVGG16:
    return _build(num_classes, 16, pretrained_backbone, options)


def fcn8s_vgg16(num_classes: int, *, pretrained_backbone: bool | str = False, **options: Any) -> FCNVGG16:
    return _build(num_classes, 8, pretrained_backbone, options)


fcn32s_vgg16.__doc__ = "FCN-32s on VGG16 (caffe layout, pytorch-fcn keys).\n" + _OPTIONS_DOC
fcn16s_vgg16.__doc__ = "FCN-16s on VGG16: FCN-32s plus the pool4 skip.\n" + _OPTIONS_DOC + "\n    ``at_once`` scales pool4 by 0.01 (as FCN8sAtOnce; no released FCN-16s uses it)."
fcn8s_vgg16.__doc__ = (
    "FCN-8s on VGG16: FCN-16s plus the pool3 skip.\n"
    + _OPTIONS_DOC
    + "\n    ``at_once`` (False): scale pool4 by 0.01 and pool3 by 0.0001 as FCN8sAtOnce does (needed for its weights)."
)

__all__ = [
    "FCNVGG16",
    "fcn32s_vgg16",
    "fcn16s_vgg16",
    "fcn8s_vgg16",
]
