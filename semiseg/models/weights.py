"""Loading weights into semiseg models, including the original releases' checkpoints, with a report.

``load_weights(model, source)`` takes a path (loaded as data only, ``torch.load(weights_only=True)``; files
that need arbitrary code to unpickle are refused) or a state dict, unwraps training checkpoints
(``{"model": ...}``, ``{"state_dict": ...}``, pytorch-fcn's ``{"model_state_dict": ...}``), removes wrapper
prefixes (``module.`` from DataParallel/DDP, ``Scale.`` from the MS_Deeplab wrapper of AdvSemiSeg's COCO
initialisation, ``_orig_mod.`` from torch.compile), recognises the layout and renames keys into semiseg's:

==========================  ================================================================================
layout                      what is converted
==========================  ================================================================================
``deeplabv2``               AdvSemiSeg ``Res_Deeplab`` (= semiseg DeepLabV2): same keys
``torchvision_resnet``      torchvision ResNet: ``fc`` dropped; ``backbone.`` added for DeepLabV3+
``resnet_deep_stem``        ResNet-v1c (3x3 stem convolutions; UniMatch's ``pretrained/resnet50.pth``): as
                            ``torchvision_resnet``, into a DeepLabV3+ built with ``deep_stem=True``
``unimatch_deeplabv3plus``  UniMatch's DeepLabV3+ (ResNet): head renamed to bubbliiiing's names, the biases its
                            head convolutions do not have added as zeros, the decoder's input channels reordered
                            (its concatenation order is the reverse of ours): the same outputs
``torchvision_mobilenet_v2`` torchvision MobileNetV2: ``backbone.`` added, ``features.18``/``classifier`` dropped
``bubbliiiing_deeplabv3plus`` bubbliiiing DeepLabV3+ MobileNetV2 (and its CSAIL ``mobilenet_v2.pth.tar``
                            backbone): MobileNetV2 block indices renamed to torchvision's nesting
``pytorch_fcn``             wkentaro/pytorch-fcn FCN-32s/16s/8s: same keys (semiseg.models.fcn_vgg)
``torchvision_vgg16``       torchvision VGG16 into an FCN: :func:`vgg16_surgery` (fc6/fc7 as convs)
``identity``                anything else, e.g. semiseg's own checkpoints: no renaming
==========================  ================================================================================

Then every checkpoint tensor whose (converted) name and shape match the model is copied. Modes:

* ``mode="convert"`` (default): a tensor whose shape differs is an error, raised before anything is copied
  and listing both shapes: loading half a network by accident is worse than failing.
* ``mode="same_shape"``: AdvSemiSeg's caffe-like loading ("only copy the params that exist in the current
  model"): tensors whose shape differs are skipped, listed in the report with both shapes and announced
  with a :class:`WeightsWarning`. Use it e.g. to start from a checkpoint with a different number of classes.

``strict=True`` additionally requires that nothing is missing or unexpected. Things that change outputs
(torchvision's stride placement in DeepLab-v2, bubbliiiing's input scaling) are reported and warned about.

Every key-layout conversion lives in this module (the model files hold architecture only): the converters above,
the FCN-VGG16 surgery and pytorch-fcn recognition, d2l's FCN-ResNet18 numbering (:func:`convert_d2l_fcn`). Every
builder's ``pretrained_backbone`` goes through :func:`load_pretrained_backbone` (torchvision weight enum or file,
via ``semiseg.models.pretrained.backbone_state_dict``, then the same conversion and checks).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from semiseg.models.fcn_vgg import BACKBONE_LAYERS, VGG16_CONVS
from semiseg.models.pretrained import backbone_state_dict, load_checkpoint_file

MODES = ("convert", "same_shape")
# Training checkpoints hold the weights under one of these keys (semiseg: "model"; pytorch-fcn: "model_state_dict").
CONTAINER_KEYS = ("model", "state_dict", "model_state", "model_state_dict")
# Prefixes that wrappers put in front of every key.
WRAPPER_PREFIXES = {
    "module.": "DataParallel/DistributedDataParallel",
    "Scale.": "MS_Deeplab wrapper (AdvSemiSeg's MS-COCO initialisation)",
    "_orig_mod.": "torch.compile",
}
_LIST_LIMIT = 12  # how many keys __str__ shows per category


class WeightsWarning(UserWarning):
    """Loaded weights that will not give the outputs of the network they come from, or were only partly used."""


class SkippedTensor(NamedTuple):
    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclass
class LoadReport:
    """What :func:`load_weights` did. Keys are in the model's naming (after conversion).

    ``copied``: loaded. ``skipped``: same name, different shape (only in ``mode="same_shape"``).
    ``missing``: model tensors the checkpoint has no value for (they keep their previous values).
    ``unexpected``: checkpoint tensors the model has no place for. ``dropped``: tensors of the recognised
    layout that semiseg's model does not have by design (ImageNet classifiers, BatchNorm batch counters).
    """

    source: str
    layout: str
    copied: list[str] = field(default_factory=list)
    skipped: list[SkippedTensor] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every model tensor got a value and every checkpoint tensor was used."""
        return not (self.skipped or self.missing or self.unexpected)

    def __str__(self) -> str:
        lines = [f"weights from {self.source} (layout: {self.layout})", f"  copied     {len(self.copied)} tensors"]
        lines.append(f"  skipped    {len(self.skipped)} (shape differs)")
        lines += _listing(f"{s.key}: checkpoint {s.checkpoint_shape} vs model {s.model_shape}" for s in self.skipped)
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            lines.append(f"  {name:<10} {len(keys)}")
            lines += _listing(keys)
        # BatchNorm batch counters are dropped by the dozen and carry no weights: count them, list the rest.
        counters = [k for k in self.dropped if k.endswith(".num_batches_tracked")]
        others = [k for k in self.dropped if not k.endswith(".num_batches_tracked")]
        lines.append(f"  dropped    {len(self.dropped)}" + (f" ({len(counters)} BatchNorm num_batches_tracked)" if counters else ""))
        lines += _listing(others)
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def _listing(items) -> list[str]:
    items = list(items)
    shown = [f"      {item}" for item in items[:_LIST_LIMIT]]
    if len(items) > _LIST_LIMIT:
        shown.append(f"      ... and {len(items) - _LIST_LIMIT} more")
    return shown


# ---------------------------------------------------------------------------------------------- reading
def _read_source(source: Any) -> tuple[dict[str, Any], str]:
    if isinstance(source, (str, os.PathLike)):
        return _unwrap(load_checkpoint_file(source), str(source)), str(source)
    if isinstance(source, Mapping):
        return _unwrap(source, "state dict"), "state dict"
    raise TypeError(
        f"load_weights takes a checkpoint path or a state dict, got {type(source).__name__}"
        + (" (pass module.state_dict())" if isinstance(source, nn.Module) else "")
    )


def _unwrap(obj: Mapping[str, Any], description: str) -> dict[str, Any]:
    # Descend into training-checkpoint containers until the mapping holds tensors.
    while not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise ValueError(
                f"{description} is not a state dict: {', '.join(map(repr, bad[:5]))} "
                f"{'are' if len(bad) > 1 else 'is'} not a tensor. Training checkpoints must keep the weights under "
                f"one of {', '.join(CONTAINER_KEYS)}."
            )
        obj = inner
    if not obj:
        raise ValueError(f"{description} holds no tensors")
    return dict(obj)


def _strip_wrapper_prefixes(state: dict[str, Any], model_keys: set[str], notes: list[str]) -> dict[str, Any]:
    stripped = True
    while stripped:  # "module.Scale.conv1.weight" needs two passes
        stripped = False
        for prefix, origin in WRAPPER_PREFIXES.items():
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
                state = {k[len(prefix):]: v for k, v in state.items()}
                notes.append(f"removed the prefix {prefix!r} of every key ({origin})")
                stripped = True
    return state


# ------------------------------------------------------------------------------------------ conversions
@dataclass
class _Conversion:
    """Working state of one conversion: converters rename ``state`` and record what they did."""

    state: dict[str, Any]
    model: nn.Module
    model_keys: set[str]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    description: str = "state dict"  # the source, for converters' error messages

    def drop(self, predicate: Callable[[str], bool]) -> None:
        for key in [k for k in self.state if predicate(k)]:
            del self.state[key]
            self.dropped.append(key)

    def add_prefix_for(self, prefix: str, probe: str) -> None:
        """Prefix every key with ``prefix`` if the model holds ``prefix + probe`` (e.g. DeepLabV3+'s backbone)."""
        if prefix + probe in self.model_keys:
            self.state = {prefix + k: v for k, v in self.state.items()}


# ------------------------------------------------------------------------ FCN layouts (seeds 002 and 004)
# FCN-VGG16 (semiseg.models.fcn_vgg) uses pytorch-fcn's key names; torchvision's vgg16 needs the "surgery" below.
# Indices of the convolutions in torchvision's vgg16().features (ReLUs and pools sit in between).
TORCHVISION_FEATURE_INDEX: dict[str, int] = dict(
    zip(VGG16_CONVS, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28])
)

# VGG16's fully connected layers as convolutions: fc6 sees pool5's 7x7x512 window, fc7 is 1x1.
FC_SHAPES: dict[str, tuple[int, ...]] = {
    "fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,), "fc7.weight": (4096, 4096, 1, 1), "fc7.bias": (4096,)
}

def vgg16_surgery(state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Backbone weights in FCN-VGG16's key names (semiseg.models.fcn_vgg) from a torchvision ``vgg16`` state dict.

    ``features.<i>.{weight,bias}`` -> ``conv*_*``; ``classifier.0`` (4096 x 25088) -> ``fc6`` reshaped to
    4096 x 512 x 7 x 7 (torchvision flattens pool5 as C, H, W, the order of a conv weight's in, kh, kw);
    ``classifier.3`` (4096 x 4096) -> ``fc7`` as 4096 x 4096 x 1 x 1; ``classifier.6`` (ImageNet classes) is
    dropped. A state dict already in FCN key names (``conv1_1.weight`` ...) passes through.
    """
    state_dict = _pytorch_fcn_unwrap(state_dict)
    if "conv1_1.weight" in state_dict and "fc6.weight" in state_dict:
        return {f"{layer}.{p}": state_dict[f"{layer}.{p}"] for layer in BACKBONE_LAYERS for p in ("weight", "bias")}
    if "features.1.weight" in state_dict:
        raise ValueError(
            f"{source} looks like torchvision's vgg16_bn (BatchNorm at features.1); FCN uses plain VGG16: "
            "pass torchvision's vgg16 weights (VGG16_Weights.IMAGENET1K_V1)"
        )
    needed = [f"features.{i}.{p}" for i in TORCHVISION_FEATURE_INDEX.values() for p in ("weight", "bias")]
    needed += [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise ValueError(
            f"{source} is not a torchvision vgg16 state dict: missing {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''} (expected keys features.<i>.weight and classifier.0/3.weight)"
        )
    out: dict[str, torch.Tensor] = {}
    for layer, index in TORCHVISION_FEATURE_INDEX.items():
        for p in ("weight", "bias"):
            out[f"{layer}.{p}"] = state_dict[f"features.{index}.{p}"]
    for layer, index in (("fc6", 0), ("fc7", 3)):
        for p in ("weight", "bias"):
            tensor = state_dict[f"classifier.{index}.{p}"]
            shape = FC_SHAPES[f"{layer}.{p}"]
            if tensor.numel() != torch.Size(shape).numel():
                raise ValueError(
                    f"{source}: classifier.{index}.{p} has shape {tuple(tensor.shape)}, cannot become {layer}.{p} "
                    f"of shape {shape} (is this VGG16 at 224x224?)"
                )
            out[f"{layer}.{p}"] = tensor.reshape(shape)  # a view: load_state_dict copies it
    return out


_PYTORCH_FCN_UPSCORE = {"upscore8.weight": "fcn8s_vgg16", "upscore16.weight": "fcn16s_vgg16", "upscore.weight": "fcn32s_vgg16"}


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # Checkpoints saved from nn.DataParallel / DDP prefix every key with "module.".
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _pytorch_fcn_unwrap(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # pytorch-fcn's trainer saves {"epoch", "iteration", "arch", "optim_state_dict", "model_state_dict", ...}.
    if "model_state_dict" in state_dict and isinstance(state_dict["model_state_dict"], Mapping):
        state_dict = state_dict["model_state_dict"]
    return _strip_module_prefix(state_dict)


def is_pytorch_fcn_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for a wkentaro/pytorch-fcn FCN-32s/16s/8s(AtOnce) state dict (released or trained with its
    trainer; a ``model_state_dict`` wrapper and ``module.`` prefixes are accepted) and for semiseg's FCN-VGG16
    state dicts, which use the same keys."""
    sd = _pytorch_fcn_unwrap(state_dict)
    keys = ("conv1_1.weight", "conv5_3.weight", "fc6.weight", "fc7.weight", "score_fr.weight")
    if not all(k in sd for k in keys):
        return False
    fc6 = sd["fc6.weight"]  # 4-D: fc6 is a 7x7 convolution, not torchvision's Linear
    return isinstance(fc6, torch.Tensor) and fc6.dim() == 4 and any(k in sd for k in _PYTORCH_FCN_UPSCORE)


def pytorch_fcn_model_name(state_dict: Mapping[str, Any]) -> str | None:
    """semiseg model name (``fcn8s_vgg16`` ...) for a pytorch-fcn state dict, None if it is not one.

    FCN8s and FCN8sAtOnce share keys; the at-once weights need ``build_model("fcn8s_vgg16", n, at_once=True)``.
    """
    if not is_pytorch_fcn_state_dict(state_dict):
        return None
    sd = _pytorch_fcn_unwrap(state_dict)
    return next(name for key, name in _PYTORCH_FCN_UPSCORE.items() if key in sd)


def convert_pytorch_fcn(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A pytorch-fcn state dict in FCN-VGG16's key names: the keys are already the same, so this only
    unwraps the trainer's ``model_state_dict`` container and drops ``module.`` prefixes."""
    if not is_pytorch_fcn_state_dict(state_dict):
        raise ValueError("not a pytorch-fcn FCN state dict (expected conv1_1.weight, fc6.weight as 4-D, score_fr.weight, upscore*)")
    return _pytorch_fcn_unwrap(state_dict)


# FCN-ResNet18 (semiseg.models.fcn_resnet): d2l's nn.Sequential numbering.
# d2l builds its net as nn.Sequential(*list(resnet18().children())[:-2]) and then adds final_conv and
# transpose_conv, so its ResNet layers are numbered; these are their torchvision names.
D2L_BACKBONE_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}

def is_d2l_fcn_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for the state dict of d2l's FCN (``nn.Sequential`` with keys ``0.weight`` ... ``7.1.bn2.bias``,
    ``final_conv.*``, ``transpose_conv.*``)."""
    return all(k in state_dict for k in ("0.weight", "7.1.conv2.weight", "final_conv.weight", "transpose_conv.weight"))


def convert_d2l_fcn(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a d2l FCN state dict to FCNResNet18's keys (semiseg.models.fcn_resnet) (``0.weight`` -> ``backbone.conv1.weight``)."""
    if not is_d2l_fcn_state_dict(state_dict):
        raise ValueError("not a d2l FCN state dict (expected keys 0.weight, 7.1.conv2.weight, final_conv.*, transpose_conv.*)")
    out = {}
    for key, value in state_dict.items():
        index, _, rest = key.partition(".")
        out[f"backbone.{D2L_BACKBONE_INDEX[index]}.{rest}" if index in D2L_BACKBONE_INDEX else key] = value
    return out


def _convert_deeplabv2(c: _Conversion) -> None:
    if getattr(c.model, "legacy_aspp", None) is False:
        c.notes.append(
            "if these are AdvSemiSeg's released weights, build the model with legacy_aspp=True: the original "
            "code sums only the first two ASPP branches (dilation 6 and 12), and its weights were trained so"
        )


def _convert_torchvision_resnet(c: _Conversion) -> None:
    c.drop(lambda k: k.startswith("fc."))
    c.add_prefix_for("backbone.", "conv1.weight")
    if "layer5.conv2d_list.0.weight" in c.model_keys:  # the caffe-style DeepLab-v2
        c.warnings.append(
            "torchvision's ResNet puts the stride in the 3x3 conv of a bottleneck and dilates layer3/layer4 "
            "from their second block, while DeepLab-v2 (caffe layout) strides in the first 1x1 conv and dilates "
            "every block: the values load (same names and shapes) but the network computes something different "
            "from torchvision's. Fine as an initialisation for training; not an equal-output port."
        )


def _require_deep_stem(c: _Conversion, what: str) -> None:
    if "backbone.conv1.0.weight" not in c.model_keys:
        raise ValueError(
            f"{c.description} is {what}, whose ResNet stem is three 3x3 convolutions (ResNet-v1c); "
            f"{type(c.model).__name__} has torchvision's 7x7 stem. Build a DeepLabV3+ ResNet with "
            "deep_stem=True (config: model.options.deep_stem=true).")


def _convert_resnet_deep_stem(c: _Conversion) -> None:
    _require_deep_stem(c, "a deep-stem ResNet backbone")
    c.drop(lambda k: k.startswith("fc."))
    c.add_prefix_for("backbone.", "layer1.0.conv1.weight")


# UniMatch (model/semseg/deeplabv3plus.py) -> semiseg's DeepLabV3+ (bubbliiiing's head names). Its decoder's
# Sequentials have no dropout, so its second 3x3 convolution is fuse.3 where ours is cat_conv.4.
_UNIMATCH_HEAD = {
    "head.b0.": "aspp.branch1.", "head.b1.": "aspp.branch2.", "head.b2.": "aspp.branch3.", "head.b3.": "aspp.branch4.",
    "head.b4.gap.1.": "aspp.branch5_conv.", "head.b4.gap.2.": "aspp.branch5_bn.", "head.project.": "aspp.conv_cat.",
    "reduce.": "shortcut_conv.", "fuse.0.": "cat_conv.0.", "fuse.1.": "cat_conv.1.", "fuse.3.": "cat_conv.4.",
    "fuse.4.": "cat_conv.5.", "classifier.": "cls_conv.",
}
# The convolutions UniMatch builds with bias=False where ours have a bias; each feeds a BatchNorm, so a zero bias
# gives the same outputs (and, in training, a zero gradient: BatchNorm removes any constant).
_UNIMATCH_NO_BIAS = ("aspp.branch1.0", "aspp.branch2.0", "aspp.branch3.0", "aspp.branch4.0", "aspp.branch5_conv",
                     "aspp.conv_cat.0", "shortcut_conv.0", "cat_conv.0", "cat_conv.4")


def _convert_unimatch(c: _Conversion) -> None:
    _require_deep_stem(c, "a UniMatch DeepLabV3+ checkpoint")
    renamed: dict[str, Any] = {}
    for key, value in c.state.items():
        prefix = next((p for p in _UNIMATCH_HEAD if key.startswith(p)), None)
        if prefix is not None:
            key = _UNIMATCH_HEAD[prefix] + key[len(prefix):]
        elif not key.startswith("backbone."):
            raise ValueError(f"unexpected key {key!r} for a UniMatch DeepLabV3+ state dict ({c.description})")
        renamed[key] = value
    # UniMatch concatenates [low-level (48), ASPP (256)] before the decoder, semiseg (bubbliiiing) [ASPP, low-level]:
    # the first decoder convolution's input channels are reordered to match.
    fuse = renamed.get("cat_conv.0.weight")
    low = renamed.get("shortcut_conv.0.weight")
    if fuse is not None and low is not None:
        renamed["cat_conv.0.weight"] = torch.cat([fuse[:, low.shape[0]:], fuse[:, :low.shape[0]]], dim=1)
    target = c.model.state_dict()
    for name in _UNIMATCH_NO_BIAS:
        weight, bias = renamed.get(f"{name}.weight"), f"{name}.bias"
        if weight is not None and bias not in renamed and bias in target:
            renamed[bias] = torch.zeros_like(target[bias], dtype=weight.dtype)
    c.state = renamed
    c.notes.append("UniMatch's head convolutions have no bias: zeros were added for them (the same outputs)")
    c.notes.append("build the model with the output stride and multi_grid it was trained with (UniMatch's configs: "
                   "replace_stride_with_dilation [False, False, True] is output_stride 16; [False, True, True] is 8); "
                   "inputs: RGB / 255 with ImageNet mean and std, semiseg's 'imagenet' normalization")
    dropout = [m.p for m in getattr(c.model, "cat_conv", []) if isinstance(m, nn.Dropout)]
    if any(dropout):
        c.notes.append("UniMatch's decoder has no dropout; to train on from these weights as it does, build the "
                       "model with decoder_dropout=[0, 0] (inference is the same either way)")


def _convert_torchvision_mobilenet_v2(c: _Conversion) -> None:
    c.drop(lambda k: k.startswith(("features.18.", "classifier.")))
    c.add_prefix_for("backbone.", "features.0.0.weight")


# bubbliiiing / CSAIL MobileNetV2 blocks are flat Sequentials (conv, bn, relu6, conv, bn, relu6, conv, bn);
# torchvision nests conv+bn+relu6 in Conv2dNormActivation. Index maps, flat -> torchvision:
_MBV2_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}  # pw, dw, pw-linear
_MBV2_NOT_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}  # block 1 (expansion 1): dw, pw-linear
_BUBBLIIIING_BLOCK = re.compile(r"^(backbone\.)?features\.(\d+)\.conv\.(\d+)\.(.+)$")


def _convert_bubbliiiing(c: _Conversion) -> None:
    full_model = any(k.startswith("aspp.") for k in c.state)
    c.drop(lambda k: k.startswith(("features.18.", "backbone.features.18.", "classifier.")))
    expanded = {m.group(2) for k in c.state if (m := _BUBBLIIIING_BLOCK.match(k)) and m.group(3) == "6"}
    renamed: dict[str, Any] = {}
    for key, value in c.state.items():
        m = _BUBBLIIIING_BLOCK.match(key)
        if m:
            prefix, block, index, rest = m.groups()
            table = _MBV2_EXPANDED if block in expanded else _MBV2_NOT_EXPANDED
            if index not in table:  # ReLU6 positions hold no tensors; anything else is not this layout
                raise ValueError(f"unexpected key {key!r} for a bubbliiiing/CSAIL MobileNetV2 state dict")
            key = f"{prefix or ''}features.{block}.conv.{table[index]}.{rest}"
        renamed[key] = value
    c.state = renamed
    if not full_model:
        c.add_prefix_for("backbone.", "features.0.0.weight")
    else:
        c.warnings.append(
            "bubbliiiing's DeepLabV3+ was trained on RGB images scaled to 0..1 (x / 255) without ImageNet "
            "mean/std; feed such inputs to get its outputs (model.normalization says 'imagenet', which is what "
            "torchvision's pretrained backbone expects). Build it with the output_stride it was trained with "
            "(its downsample_factor, 16 by default)."
        )


def _convert_pytorch_fcn(c: _Conversion) -> None:
    c.state = convert_pytorch_fcn(c.state)
    if pytorch_fcn_model_name(c.state) == "fcn8s_vgg16" and getattr(c.model, "at_once", None) is False:
        c.notes.append("FCN8s and FCN8sAtOnce share keys; for FCN8sAtOnce weights build fcn8s_vgg16(..., at_once=True)")


def _convert_torchvision_vgg16(c: _Conversion) -> None:
    c.drop(lambda k: k.startswith("classifier.6."))
    c.state = vgg16_surgery(c.state, source=c.description)
    c.notes.append("torchvision VGG16 -> FCN surgery: classifier.0/3 reshaped into the fc6/fc7 convolutions")


def _convert_identity(c: _Conversion) -> None:
    pass


CONVERTERS: dict[str, Callable[[_Conversion], None]] = {
    "deeplabv2": _convert_deeplabv2,
    "torchvision_resnet": _convert_torchvision_resnet,
    "resnet_deep_stem": _convert_resnet_deep_stem,
    "unimatch_deeplabv3plus": _convert_unimatch,
    "torchvision_mobilenet_v2": _convert_torchvision_mobilenet_v2,
    "bubbliiiing_deeplabv3plus": _convert_bubbliiiing,
    "pytorch_fcn": _convert_pytorch_fcn,
    "torchvision_vgg16": _convert_torchvision_vgg16,
    "identity": _convert_identity,
}


def detect_layout(state: Mapping[str, Any]) -> str:
    """Name of the published layout ``state`` (wrapper prefixes already removed) is in; see the module doc."""
    keys = set(state)
    if "layer5.conv2d_list.0.weight" in keys:
        return "deeplabv2"
    if "head.b0.0.weight" in keys and "reduce.0.weight" in keys and "backbone.layer4.0.conv1.weight" in keys:
        return "unimatch_deeplabv3plus"
    if "conv1.0.weight" in keys and "layer4.0.conv1.weight" in keys:
        return "resnet_deep_stem"
    if "fc.weight" in keys and "layer4.0.conv1.weight" in keys:
        return "torchvision_resnet"
    # The flat MobileNetV2 blocks have a 4-D tensor at conv.3 of block 1; torchvision's have conv.0.0.
    if "features.1.conv.3.weight" in keys or "backbone.features.1.conv.3.weight" in keys:
        return "bubbliiiing_deeplabv3plus"
    if "features.1.conv.0.0.weight" in keys and "classifier.1.weight" in keys:
        return "torchvision_mobilenet_v2"
    if "score_fr.weight" in keys and "conv1_1.weight" in keys and is_pytorch_fcn_state_dict(state):
        return "pytorch_fcn"
    classifier0 = state.get("classifier.0.weight")
    if "features.0.weight" in keys and isinstance(classifier0, torch.Tensor) and classifier0.dim() == 2:
        return "torchvision_vgg16"
    return "identity"


# ---------------------------------------------------------------------------------------------- loading
def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = False,
    mode: str = "convert",
    layout: str = "auto",
) -> LoadReport:
    """Load ``source`` (a checkpoint path or a state dict) into ``model`` and report what happened.

    Args:
        strict: also fail when model tensors are missing or checkpoint tensors unexpected.
        mode: ``"convert"`` (shape mismatches are errors) or ``"same_shape"`` (copy what matches in name and
            shape, skip and warn about the rest: AdvSemiSeg's caffe-like loading).
        layout: ``"auto"`` to recognise it, or one of :data:`CONVERTERS` to force it.

    Raises ``ValueError`` (nothing is copied) on shape mismatches in ``"convert"`` mode, when no tensor
    matches the model at all, and with ``strict=True`` when anything is missing or unexpected;
    ``semiseg.models.pretrained.PretrainedWeightsError`` for files that are not plain tensors.
    """
    return _load(model, source, strict=strict, mode=mode, layout=layout)


def load_pretrained_backbone(
    model: nn.Module, source: bool | str | os.PathLike, default: Any, head_prefixes: Sequence[str], *,
    layout: str = "auto", expected: str | None = None,
) -> LoadReport:
    """``pretrained_backbone=source`` for a builder: torchvision's ``default`` weight enum (True) or a file. The one
    path every model family's builder loads its backbone through.

    Only backbone tensors are taken (keys outside ``head_prefixes``, after conversion); every backbone tensor
    of the model must receive a value, otherwise the file is the wrong backbone and this raises. ``layout`` forces
    a conversion (as in :func:`load_weights`). ``expected`` names the one kind of file the model takes (``"torchvision
    resnet18"``): then the file must also hold nothing but that backbone (and head tensors), and the error says
    "``source`` is not a ``expected`` state dict".
    """
    state = backbone_state_dict(source, default)
    description = f"torchvision {default}" if source is True else str(source)
    return _load(model, state, description=description, layout=layout, head_prefixes=tuple(head_prefixes),
                 expected=expected)


def _load(
    model: nn.Module,
    source: Any,
    *,
    strict: bool = False,
    mode: str = "convert",
    layout: str = "auto",
    description: str | None = None,
    head_prefixes: tuple[str, ...] = (),
    expected: str | None = None,
) -> LoadReport:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if layout != "auto" and layout not in CONVERTERS:
        raise ValueError(f"layout must be 'auto' or one of {', '.join(CONVERTERS)}, got {layout!r}")
    state, read_as = _read_source(source)
    description = description or read_as
    target = model.state_dict()
    model_keys = set(target)

    notes: list[str] = []
    state = _strip_wrapper_prefixes(state, model_keys, notes)
    chosen = detect_layout(state) if layout == "auto" else layout
    conv = _Conversion(state, model, model_keys, notes=notes, description=description)
    CONVERTERS[chosen](conv)
    state = conv.state

    # BatchNorm batch counters carry no weights: frozen BatchNorm has none, and old checkpoints lack them.
    conv.drop(lambda k: k.endswith(".num_batches_tracked") and k not in model_keys)
    if head_prefixes:
        conv.drop(lambda k: k.startswith(head_prefixes))
        conv.notes.append("pretrained backbone: the checkpoint's classifier/head tensors are not used")

    report = LoadReport(description, chosen, dropped=conv.dropped, notes=conv.notes, warnings=conv.warnings)
    to_copy: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape != target[key].shape:
            report.skipped.append(SkippedTensor(key, tuple(value.shape), tuple(target[key].shape)))
        else:
            to_copy[key] = value
    report.copied = list(to_copy)
    report.missing = [k for k in target if k not in state and not k.endswith(".num_batches_tracked")]

    if expected:  # exactly the named backbone: anything missing, extra or of another shape means another file
        missing = [k for k in report.missing if not k.startswith(head_prefixes)] + [s.key for s in report.skipped]
        if missing or report.unexpected:
            raise ValueError(
                f"{description} is not a {expected} state dict: missing {missing[:4]}, unexpected "
                f"{report.unexpected[:4]} (for {type(model).__name__}'s backbone, layout {chosen!r})")
    # Every check happens before anything is copied, so a failed load leaves the model untouched.
    if not to_copy:
        raise ValueError(
            f"no tensor of {description} fits {type(model).__name__} (layout {chosen!r}): is it the checkpoint of "
            f"another model?\n{report}"
        )
    if report.skipped and mode == "convert":
        shapes = "\n".join(f"  {s.key}: checkpoint {s.checkpoint_shape}, model {s.model_shape}" for s in report.skipped)
        raise ValueError(
            f"{description}: {len(report.skipped)} tensor(s) have another shape than in the model; nothing was "
            f"loaded:\n{shapes}\nIf that is expected (e.g. another number of classes), load with "
            f"mode='same_shape' to copy the tensors whose shapes match and skip these."
        )
    if strict and not report.ok:
        raise ValueError(f"strict loading failed: the checkpoint does not cover the model exactly\n{report}")
    if head_prefixes:
        incomplete = [k for k in report.missing if not k.startswith(head_prefixes)]
        incomplete += [s.key for s in report.skipped]
        if incomplete:
            raise ValueError(
                f"{description} is not a backbone for {type(model).__name__}: "
                f"{len(incomplete)} backbone tensor(s) get no value, e.g. {', '.join(incomplete[:5])}\n{report}"
            )
    if report.skipped:
        report.warnings.append(
            f"mode='same_shape': {len(report.skipped)} tensor(s) skipped because their shape differs "
            f"(e.g. {report.skipped[0].key}: checkpoint {report.skipped[0].checkpoint_shape} vs model "
            f"{report.skipped[0].model_shape}); they keep their initial values"
        )

    model.load_state_dict(to_copy, strict=False)
    for message in report.warnings:
        warnings.warn(f"{description}: {message}", WeightsWarning, stacklevel=3)
    return report


__all__ = ["LoadReport", "SkippedTensor", "WeightsWarning", "detect_layout", "load_weights", "load_pretrained_backbone",
           "vgg16_surgery", "is_pytorch_fcn_state_dict", "pytorch_fcn_model_name", "convert_pytorch_fcn",
           "is_d2l_fcn_state_dict", "convert_d2l_fcn"]
