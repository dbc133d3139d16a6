"""The semi-supervised methods' photometric "strong" augmentation, per sample and per batch.

:class:`StrongAugment` is a torchvision ``v2.Compose`` (colour jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5),
so a dataset pipeline uses it per sample like any transform. A training step that makes strong views of a whole
batch calls :meth:`StrongAugment.batch` instead: it draws every image's parameters from the torch generator exactly
as calling the Compose once per image would (same calls, same order, the transforms' own ``make_params``) and applies
torchvision's own kernels, but without the v2 dispatch per image, and with the hue rotation (the costly part: RGB ->
HSV -> RGB) done once for all the images that rotate hue at the same point of their jitter order. The result is the
per-image loop's, to the bit (tests/test_strong_augment.py); on a 64 px batch of 16 the per-image loop was ~20% of a
semi-supervised training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

try:  # torchvision's HSV conversions, batched over any leading dims; without them hue rotates image by image
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv
except ImportError:  # pragma: no cover - a torchvision that renamed them
    _rgb_to_hsv = _hsv_to_rgb = None

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's fn_idx codes


@dataclass
class _Draw:
    """One image's parameters: the jitter's op order and factors (None: not jittered), grayscale, blur sigma."""
    jitter: dict | None
    grayscale: bool
    blur_sigma: list[float] | None


class StrongAugment(v2.Compose):
    """Colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5) on uint8 RGB; masks are untouched."""

    def __init__(self, *, blur_kernel: int = 9):
        jitter = v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25)
        gray = v2.RandomGrayscale(p=0.2)
        blur = v2.GaussianBlur(kernel_size=blur_kernel, sigma=(0.1, 2.0))
        super().__init__([v2.RandomApply([jitter], p=0.8), gray, v2.RandomApply([blur], p=0.5)])
        self.jitter, self.gray, self.blur = jitter, gray, blur

    def _draw(self) -> _Draw:
        # the draws of RandomApply / RandomGrayscale / GaussianBlur's forward, in Compose's order
        jitter = None if torch.rand(1) >= self.transforms[0].p else self.jitter.make_params([])
        if jitter is not None:
            jitter["fn_idx"] = jitter["fn_idx"].tolist()
        grayscale = not torch.rand(1) >= self.gray.p
        sigma = None if torch.rand(1) >= self.transforms[2].p else self.blur.make_params([])["sigma"]
        return _Draw(jitter, grayscale, sigma)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> each image augmented with its own parameters, as ``[self(x) for x in images]``."""
        draws = [self._draw() for _ in range(len(images))]
        out = images.as_subclass(torch.Tensor).clone()
        for slot in range(4):  # the jitter applies its four ops in an order drawn per image
            hue = []
            for i, d in enumerate(draws):
                if d.jitter is None:
                    continue
                op = d.jitter["fn_idx"][slot]
                if op == HUE:
                    hue.append(i)
                elif op == BRIGHTNESS:
                    out[i] = F.adjust_brightness_image(out[i], d.jitter["brightness_factor"])
                elif op == CONTRAST:
                    out[i] = F.adjust_contrast_image(out[i], d.jitter["contrast_factor"])
                else:
                    out[i] = F.adjust_saturation_image(out[i], d.jitter["saturation_factor"])
            if hue:
                out[hue] = _adjust_hue(out[hue], [draws[i].jitter["hue_factor"] for i in hue])
        for i, d in enumerate(draws):
            if d.grayscale:
                out[i] = F.rgb_to_grayscale_image(out[i], num_output_channels=3)
            if d.blur_sigma is not None:
                out[i] = F.gaussian_blur_image(out[i], self.blur.kernel_size, d.blur_sigma)
        return out


def _adjust_hue(images: torch.Tensor, factors: list[float]) -> torch.Tensor:
    """``F.adjust_hue_image(images[i], factors[i])`` for every i, in one pass (its steps, factor per image)."""
    if _rgb_to_hsv is None:  # pragma: no cover
        return torch.stack([F.adjust_hue_image(x, f) for x, f in zip(images, factors)])
    hsv = _rgb_to_hsv(F.to_dtype_image(images, torch.float32, scale=True))
    h, s, v = hsv.unbind(dim=-3)
    h.add_(torch.tensor(factors, dtype=torch.float32).view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return F.to_dtype_image(rgb, images.dtype, scale=True)
