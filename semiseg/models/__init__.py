"""Model zoo: ``build_model(name, num_classes, ...)`` and ``available_models()``.

The registry is a plain dict from model name to ``"module:function"``. Modules are imported on first
use so that listing models, or using one family, does not import every backbone.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

# name -> "module:builder"; each builder has the signature
#   builder(num_classes: int, *, pretrained_backbone: bool | str = False, **options) -> nn.Module
MODELS: dict[str, str] = {
    "fcn32s_vgg16": "semiseg.models.fcn_vgg:fcn32s_vgg16",
    "fcn16s_vgg16": "semiseg.models.fcn_vgg:fcn16s_vgg16",
    "fcn8s_vgg16": "semiseg.models.fcn_vgg:fcn8s_vgg16",
    "fcn_resnet18": "semiseg.models.fcn_resnet:fcn_resnet18",
    "deeplabv2_resnet101": "semiseg.models.deeplabv2:deeplabv2_resnet101",
    "deeplabv3plus_mobilenetv2": "semiseg.models.deeplabv3plus:deeplabv3plus_mobilenetv2",
    "deeplabv3plus_resnet50": "semiseg.models.deeplabv3plus:deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101": "semiseg.models.deeplabv3plus:deeplabv3plus_resnet101",
    "unet_small": "semiseg.models.unet:unet_small",
}


def available_models() -> list[str]:
    return sorted(MODELS)


def _resolve(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_model(name: str, num_classes: int, *, pretrained_backbone: bool | str = False, **options: Any) -> nn.Module:
    """Build a segmentation model by name.

    ``pretrained_backbone`` is False (random init), True (torchvision's ImageNet weights through its
    weight enums and cache), or a path to a local backbone checkpoint.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return _resolve(MODELS[name])(num_classes, pretrained_backbone=pretrained_backbone, **options)


def model_options(name: str) -> list[str]:
    """The option names (``model.options`` keys) a registered model takes: its builder's keyword arguments and, where
    the builder passes ``**options`` on, its network class's, less those the builder sets itself (checked on copies
    built on the meta device; for error messages, not a hot path)."""
    import inspect

    import torch

    builder = _resolve(MODELS[name])
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    with torch.device("meta"):
        params = {p.name: p for fn in (type(builder(2)).__init__, builder)
                  for p in inspect.signature(fn).parameters.values() if p.kind in kinds}
        names = []
        for option, param in sorted(params.items()):
            if option in ("self", "num_classes", "pretrained_backbone") or param.default is inspect.Parameter.empty:
                continue
            try:  # an argument the builder passes itself fails as given twice
                builder(2, **{option: param.default})
            except TypeError:
                continue
            names.append(option)
    return names


def __getattr__(name: str):
    # Lazy re-exports so `from semiseg.models import load_weights, FCDiscriminator` works without
    # importing every model family at package import time.
    lazy = {
        "load_weights": "semiseg.models.weights:load_weights",
        "FCDiscriminator": "semiseg.models.discriminator:FCDiscriminator",
    }
    if name in lazy:
        return _resolve(lazy[name])
    raise AttributeError(f"module 'semiseg.models' has no attribute {name!r}")


__all__ = ["MODELS", "available_models", "build_model", "load_weights", "model_options", "FCDiscriminator"]
