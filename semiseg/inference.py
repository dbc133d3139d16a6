"""Logits of whole images: one pass, sliding windows, multi-scale and flip (the test-time modes of mmsegmentation).

    logits = infer(model, images)                                              # whole image, one pass
    logits = infer(model, images, InferenceOptions("slide", crop_size=(512, 512), stride=(341, 341)))
    logits = infer(model, images, InferenceOptions(scales=MMSEG_SCALES, flip=True))   # multi-scale + flip

``images`` is a normalised batch (N, 3, H, W) on the model's device; the result is float32 (N, C, H, W) at the
input size. The caller puts the model in eval mode. Every other module (evaluation during training,
``semiseg eval``, ``semiseg predict``, the quickstart) gets its logits here.

Two independent choices:

* ``mode`` says how one image is run. ``"whole"``: the model sees the image at once. ``"slide"``: windows of
  ``crop_size`` every ``stride`` pixels cover the image, the last window of a row or column ending at the border;
  an image smaller than the window is padded at the bottom/right with 0 (the mean colour after normalisation) so
  the model always sees the size it was trained on, and the padding is cut off the logits. Overlapping logits
  are summed and divided by the number of windows that covered each pixel.
* ``scales`` and ``flip`` say which copies of the image are run (each by ``mode``): the image resized by each
  ratio of its own size (bilinear, ``align_corners=False``; sizes rounded half up like mmcv's rescale), and its
  mirror image when ``flip``. Each copy's logits go back to the input size (and are un-mirrored), and the
  **softmax probabilities** are averaged, as mmsegmentation's aug-test does: views disagree in how confident
  their logits are (a downscaled copy gives smoother, smaller logits), so averaging probabilities gives each
  view one vote of equal weight instead of letting the sharpest view dominate. The result is returned as
  ``log(mean probability)``, which are logits in the proper sense: their softmax is the averaged probability
  and their argmax the averaged prediction. With one scale of 1.0 and no flip the model's logits come back
  unchanged (bit for bit).

``precision`` (``"fp32"`` | ``"bf16"`` | ``"fp16"``) autocasts only the model's forward pass; resizing, padding
and averaging run in float32. ``channels_last`` feeds the model NHWC tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semiseg.runtime import autocast  # the one autocast policy (a leaf: inference does not reach into the engine)

MODES = ("whole", "slide")
# mmsegmentation's multi-scale test ratios (``img_ratios`` of its aug-test configs)
MMSEG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class InferenceOptions:
    """How to turn a batch into logits; see the module docstring. Invalid combinations raise ValueError."""

    mode: str = "whole"  # whole | slide
    crop_size: tuple[int, int] | None = None  # slide window (height, width); required for slide
    stride: tuple[int, int] | None = None  # slide step (height, width); None: 2/3 of the window (512 -> 341)
    scales: tuple[float, ...] = (1.0,)  # resize ratios of the input; several = multi-scale test
    flip: bool = False  # also run the mirror image (horizontal flip) of every scale

    def __post_init__(self):
        # normalise lists (from YAML / the command line) to tuples so options stay hashable and comparable
        for name in ("crop_size", "stride", "scales"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.mode not in MODES:
            raise ValueError(f"inference mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of positive ratios, got {list(self.scales)}")
        if self.mode == "slide":
            if self.crop_size is None:
                raise ValueError("slide inference needs crop_size (height, width), e.g. the training crop")
            if self.stride is None:
                object.__setattr__(self, "stride", tuple(max(1, 2 * c // 3) for c in self.crop_size))
            for name in ("crop_size", "stride"):
                value = getattr(self, name)
                if len(value) != 2 or min(value) < 1:
                    raise ValueError(f"{name} must be (height, width) with positive values, got {list(value)}")
            if any(s > c for s, c in zip(self.stride, self.crop_size)):
                raise ValueError(f"stride {list(self.stride)} is larger than crop_size {list(self.crop_size)}: "
                                 "the windows would leave pixels uncovered; use a stride <= the crop size")

    @property
    def single_view(self) -> bool:
        """True when only the image itself is run (no resizing, no mirror): the logits are the model's own."""
        return tuple(self.scales) == (1.0,) and not self.flip


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, options: InferenceOptions | None = None, *,
          precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Float32 logits (N, C, H, W) at the size of the normalised batch ``images`` (see the module docstring)."""
    options = options or InferenceOptions()
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")

    def run(x: torch.Tensor) -> torch.Tensor:  # one copy of the batch, by the chosen mode
        if options.mode == "slide":
            return _slide(model, x, options.crop_size, options.stride, precision, channels_last)
        return _forward(model, x, precision, channels_last)

    if options.single_view:
        return run(images)
    size = images.shape[-2:]
    prob_sum = None
    for scale in options.scales:
        scaled = images if scale == 1.0 else _resize(images, _scaled_size(size, scale))
        for mirrored in (False, True) if options.flip else (False,):
            logits = run(scaled.flip(-1) if mirrored else scaled)
            if mirrored:
                logits = logits.flip(-1)
            probs = _resize(logits, size).softmax(1)
            prob_sum = probs if prob_sum is None else prob_sum.add_(probs)
    views = len(options.scales) * (2 if options.flip else 1)
    return logits_of_probabilities(prob_sum / views)


def logits_of_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """``log(probs)``: logits whose softmax is ``probs`` (an average of views' softmax) and whose argmax is theirs.
    A tiny floor makes a probability that underflowed to 0 a very negative finite logit, not -inf."""
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def _forward(model: nn.Module, x: torch.Tensor, precision: str, channels_last: bool) -> torch.Tensor:
    """One forward pass in float32, at the input size (a model giving smaller logits is upsampled bilinearly)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(precision, x.device):
        logits = model(x)
    return _resize(logits.float(), x.shape[-2:])


def _slide(model: nn.Module, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int],
           precision: str, channels_last: bool) -> torch.Tensor:
    """Sum of the windows' logits divided by how many windows covered each pixel."""
    n, _, height, width = images.shape
    total = None
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y0, y1 in window_spans(height, crop[0], stride[0]):
        for x0, x1 in window_spans(width, crop[1], stride[1]):
            window = images[:, :, y0:y1, x0:x1]
            # pad an image smaller than the window up to the window (bottom/right, 0 = mean colour) ...
            padded = F.pad(window, (0, crop[1] - (x1 - x0), 0, crop[0] - (y1 - y0)))
            # ... and cut the padding's logits away again
            logits = _forward(model, padded, precision, channels_last)[:, :, : y1 - y0, : x1 - x0]
            if total is None:
                total = images.new_zeros((n, logits.shape[1], height, width), dtype=torch.float32)
            total[:, :, y0:y1, x0:x1] += logits
            count[:, :, y0:y1, x0:x1] += 1
    return total / count


def window_spans(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of the sliding windows along one axis of length ``size`` (mmsegmentation's grid).

    Windows start every ``stride`` pixels; the last one is moved back to end at the border, and one window
    spans an axis shorter than ``crop`` (it is padded by the caller).
    """
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def _scaled_size(size: torch.Size | tuple[int, int], scale: float) -> tuple[int, int]:
    # rounded half up, as mmcv.imrescale (and so mmsegmentation's multi-scale test) sizes the copies
    return tuple(max(1, int(s * scale + 0.5)) for s in size)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


__all__ = ["MODES", "MMSEG_SCALES", "InferenceOptions", "infer", "logits_of_probabilities", "window_spans"]
