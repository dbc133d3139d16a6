"""Perturbations for weak-to-strong consistency: strong views of the weak crops (colour, CutMix boxes from other
images) and UniMatch's feature perturbation, which needs no change to the model (a hook on its backbone)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.config import ConfigError
from semiseg.data.transforms import build_strong_augment, mean_rgb_uint8, normalize, strong_augment_batch

# CutMix box aspect ratios (height / width), drawn uniformly: the official obtain_cutmix_box's 0.3 .. 1/0.3.
CUTMIX_RATIO = (0.3, 1 / 0.3)
# Placement attempts before a box that does not fit the crop is clipped to it (the official loop has no bound;
# only crops more than ~10x wider than high, or the reverse, need it).
CUTMIX_ATTEMPTS = 1000


def check_cutmix_options(prob: float, area) -> None:
    """Refuse a CutMix probability outside [0, 1] or a box area range that is not [min, max] within [0, 1]."""
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"method.options.cutmix_prob must be in [0, 1] (0 switches CutMix off), got {prob}")
    if len(area) != 2 or not 0.0 <= area[0] <= area[1] <= 1.0:
        raise ConfigError(f"method.options.cutmix_area must be [min, max] with 0 <= min <= max <= 1 (fractions "
                          f"of the crop), got {area}")


def padding_mask(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """(N, H, W) True where a normalised crop (N, 3, H, W) holds the train transform's padding.

    The transform pads with the dataset mean as uint8 (``mean_rgb_uint8``) before normalising, so padded
    pixels hold exactly ``normalize(mean)``; an image pixel of exactly that colour is also taken for padding
    (and only left out of the unsupervised losses)."""
    fill = torch.tensor(mean_rgb_uint8(normalization), dtype=torch.uint8).view(3, 1, 1)
    fill = normalize(fill, normalization).to(images.device, images.dtype).view(1, 3, 1, 1)
    return (images == fill).all(dim=1)


def cutmix_boxes(n: int, height: int, width: int, *, prob: float, area: tuple[float, float] = (0.02, 0.4),
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(n, height, width) bool: per image, with probability ``prob``, one box of ``area`` (fraction of the
    crop, uniform) and aspect ratio in ``CUTMIX_RATIO``; empty otherwise. The official sampler: ratio and
    position are redrawn until the box fits. Uses torch's global RNG (checkpointed by the loop)."""
    boxes = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        if not float(torch.rand(())) < prob:
            continue
        size = _uniform(*area) * height * width
        for _ in range(CUTMIX_ATTEMPTS):
            ratio = _uniform(*CUTMIX_RATIO)
            box_w, box_h = int(math.sqrt(size / ratio)), int(math.sqrt(size * ratio))
            x, y = int(torch.randint(width, ())), int(torch.randint(height, ()))
            if x + box_w <= width and y + box_h <= height:
                break
        else:  # never fitted: clip the last draw to the crop
            box_w, box_h = min(box_w, width), min(box_h, height)
            x, y = min(x, width - box_w), min(y, height - box_h)
        boxes[i, y:y + box_h, x:x + box_w] = True
    return boxes.to(device)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def paste(box: torch.Tensor, images: torch.Tensor, pasted: torch.Tensor) -> torch.Tensor:
    """``images`` (N, C, H, W) with ``pasted``'s pixels inside ``box`` (N, H, W)."""
    return torch.where(box.unsqueeze(1), pasted, images)


def make_strong_views(images: torch.Tensor, images_mix: torch.Tensor, *, views: int, cutmix_prob: float,
                      cutmix_area: tuple[float, float], normalization: str,
                      augment=None, colour: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``views`` strong views of the weak crops ``images``: each an independently colour-augmented copy with
    a CutMix box (maybe empty) filled from an independently augmented copy of ``images_mix``.
    Returns (view, box) pairs; a view's targets must be CutMixed with the same box (``Targets.cutmix``).
    ``colour=False``: no colour augmentation, the views differ from the weak crops by their CutMix boxes only."""
    augment = augment or build_strong_augment()
    recolour = (lambda x: strong_augment_batch(x, normalization, augment)) if colour else (lambda x: x.clone())
    n, _, h, w = images.shape
    out = []
    for _ in range(views):
        strong = recolour(images)
        box = cutmix_boxes(n, h, w, prob=cutmix_prob, area=cutmix_area, device=images.device)
        if bool(box.any()):
            strong = paste(box, strong, recolour(images_mix))
        out.append((strong, box))
    return out


def _perturb(features: Any, p: float) -> Any:
    """Append a channel-dropped copy along the batch: ``cat(f, dropout2d(f))`` for every feature tensor."""
    if isinstance(features, torch.Tensor):
        return torch.cat([features, F.dropout2d(features, p, training=True)])
    if isinstance(features, (tuple, list)):
        return type(features)(_perturb(f, p) for f in features)
    if isinstance(features, dict):
        return type(features)((k, _perturb(f, p)) for k, f in features.items())
    raise TypeError(f"feature perturbation: the backbone returned a {type(features).__name__}; expected tensors "
                    "(a tensor, tuple, list or dict of them)")


class FeaturePerturbation:
    """UniMatch's fp stream on an unchanged model: inside ``with fp.active():`` a forward hook on
    ``model.backbone`` makes the decoder see the clean features followed by channel-dropped copies, so a
    forward of N images returns 2N predictions (clean first). The hook is registered once and is a no-op
    outside the block (a compiled model then sees a stable set of hooks)."""

    def __init__(self, model: nn.Module, p: float):
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(
                f"UniMatch's feature perturbation needs a model whose `backbone` module feeds its decoder "
                f"(DeepLabV3+, FCN-ResNet18); {type(model).__name__} has none. Set "
                "method.options.feature_perturbation=false (image perturbations only, as FixMatch)")
        self.p = p
        self._on = False
        self._handle = backbone.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        return _perturb(output, self.p) if self._on else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def remove(self) -> None:
        self._handle.remove()
