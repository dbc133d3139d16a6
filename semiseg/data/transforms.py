"""Joint image/mask transforms on torchvision.transforms.v2 and tv_tensors.

Geometric transforms see the image (``tv_tensors.Image``) and the mask (``tv_tensors.Mask``) together,
so v2 resizes masks with nearest-neighbour and pads them with their own fill value; photometric ones
touch only the image. A transform is called as ``transform(image, mask) -> (image, mask)`` and returns
a normalised float32 image (3, H, W) and an int64 mask (H, W) as plain tensors.

Normalisation modes (``NORMALIZATIONS``; :func:`describe_normalization` says the same in one line):
  "imagenet":  RGB scaled to 0..1, minus the ImageNet mean, divided by its std (torchvision weights).
  "caffe":     BGR on the 0..255 scale minus the caffe mean (104.008, 116.669, 122.679 in BGR order), no std:
               the caffe-converted VGG16 / FCN weights of pytorch-fcn, which flips RGB to BGR, then subtracts
               ``mean_bgr``.
  "caffe_rgb": the same numbers in RGB order: (R - 122.679, G - 116.669, B - 104.008), 0..255, no std. What
               AdvSemiSeg's DeepLab-v2 sees: its VOCDataSet reads BGR with cv2, subtracts the BGR mean, then
               reverses the channels (``image[:, :, ::-1]``, commented "change to BGR" but giving RGB), in
               training and in evaluate_voc.py; its released checkpoints expect this order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .errors import DataError
from .strong_augment import StrongAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
CAFFE_MEAN_RGB = tuple(reversed(CAFFE_MEAN_BGR))
NORMALIZATIONS = ("imagenet", "caffe", "caffe_rgb")


def _check_mode(mode: str) -> None:
    if mode not in NORMALIZATIONS:
        raise DataError(f"unknown normalization {mode!r}", None, f"use one of {', '.join(NORMALIZATIONS)}")


def describe_normalization(mode: str) -> str:
    """One line on what a mode feeds the model, from an RGB uint8 image (logs, exported metadata)."""
    _check_mode(mode)
    if mode == "imagenet":
        return (f"channels RGB: (pixel / 255 - mean) / std with mean {list(IMAGENET_MEAN)} "
                f"and std {list(IMAGENET_STD)}")
    if mode == "caffe":
        return f"channels BGR in 0..255 minus the mean {[round(m, 4) for m in CAFFE_MEAN_BGR]} (BGR order), no std"
    return f"channels RGB in 0..255 minus the mean {[round(m, 4) for m in CAFFE_MEAN_RGB]} (RGB order), no std"


def mean_rgb_uint8(mode: str = "imagenet") -> tuple[int, int, int]:
    """The dataset mean as uint8 RGB: the value padding uses, so padded pixels normalise to about 0."""
    _check_mode(mode)
    if mode == "imagenet":
        return tuple(round(255 * m) for m in IMAGENET_MEAN)
    return tuple(round(m) for m in CAFFE_MEAN_RGB)  # "caffe" and "caffe_rgb": the same mean, in RGB order


def normalize(image: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """uint8 (or 0..255 float) RGB (..., 3, H, W) -> float32 model input in the given mode."""
    _check_mode(mode)
    x = image.as_subclass(torch.Tensor).to(torch.float32)
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
        return (x - mean) / std
    if mode == "caffe":
        return x.flip(-3) - torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
    return x - torch.tensor(CAFFE_MEAN_RGB).view(3, 1, 1)


def denormalize(image: torch.Tensor, mode: str = "imagenet") -> torch.Tensor:
    """Undo ``normalize``: model input (..., 3, H, W) -> uint8 RGB, for display and photometric augmentation."""
    _check_mode(mode)
    x = image.detach().as_subclass(torch.Tensor).to(torch.float32).cpu()
    if mode == "imagenet":
        x = x * (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
    elif mode == "caffe":
        x = (x + torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)).flip(-3)
    else:
        x = x + torch.tensor(CAFFE_MEAN_RGB).view(3, 1, 1)
    return x.round().clamp(0, 255).to(torch.uint8)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (relative to the input's own size)."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)):
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise DataError(f"scale range must satisfy 0 < min <= max, got {scale_range}", None, "e.g. (0.5, 2.0)")
        self.scale_range = (float(lo), float(hi))

    def make_params(self, flat_inputs: list) -> dict:
        h, w = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        s = float(torch.empty(1).uniform_(*self.scale_range))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        # v2 dispatches on type: bilinear + antialias for images, nearest for masks.
        return F.resize(inpt, params["size"], antialias=True)


class RandomQuarterTurn(v2.Transform):
    """Rotate image and mask together by 0, 90, 180 or 270 degrees (one draw per sample). For data with no
    "up" (aerial, microscopy, the synthetic scenes): exact (no interpolation), and a square crop stays square."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(4, (1,)))}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], (-2, -1)), like=inpt)


class NormalizeImage(v2.Transform):
    """Image -> normalised float32 in ``mode``; masks pass through."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, mode: str = "imagenet"):
        super().__init__()
        _check_mode(mode)
        self.mode = mode

    def transform(self, inpt, params: dict):
        return tv_tensors.Image(normalize(inpt, self.mode))


class ToPlainTensors(v2.Transform):
    """Last step: plain tensors for the collate function and the loss; masks as int64."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def transform(self, inpt, params: dict):
        out = inpt.as_subclass(torch.Tensor)
        return out.long() if isinstance(inpt, tv_tensors.Mask) else out


def build_strong_augment(*, blur_kernel: int = 9) -> StrongAugment:
    """Photometric "strong" augmentation for semi-supervised methods, on uint8 RGB images.

    Colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5). Masks are untouched by these ops. A
    ``v2.Compose`` that also augments a whole batch at once (semiseg/data/strong_augment.py).
    """
    return StrongAugment(blur_kernel=blur_kernel)


def strong_augment_batch(images: torch.Tensor, normalization: str = "imagenet", augment: v2.Compose | None = None) -> torch.Tensor:
    """Strong view of an already normalised batch (N, 3, H, W): denormalise, augment each image with its
    own random parameters, normalise again. For methods that need weak and strong views of one crop."""
    augment = augment or build_strong_augment()
    plain = denormalize(images, normalization)
    if isinstance(augment, StrongAugment):  # the same draws and pixels as the loop below, without its overhead
        out = augment.batch(plain)
    else:
        out = torch.stack([augment(tv_tensors.Image(x)).as_subclass(torch.Tensor) for x in plain])
    return normalize(out, normalization).to(images.device, images.dtype)


def build_photometric_distortion(brightness: Sequence[float] | None = None) -> v2.Compose:
    """Mild colour distortion for supervised training, on uint8 RGB images (the ranges of mmsegmentation's
    PhotoMetricDistortion: brightness +-32/255, contrast and saturation 0.5-1.5, hue +-18 degrees), each
    applied with probability 0.5. Milder than :func:`build_strong_augment`: no grayscale, no blur, so the
    labelled images keep their look while the model stops relying on exact colours and exposure (CamVid's
    test sequences are filmed at other times of day than most of its training frames).

    ``brightness`` = (min, max) widens or narrows the brightness factor (default 1 -+ 32/255, i.e. 0.875-1.125):
    CamVid's dusk sequence is about half as bright as its daylight ones, a factor the default never reaches."""
    brightness = (1 - 32 / 255, 1 + 32 / 255) if brightness is None else tuple(float(b) for b in brightness)
    if len(brightness) != 2 or not 0 <= brightness[0] <= brightness[1]:
        raise DataError(f"brightness range must be (min, max) with 0 <= min <= max, got {brightness}")
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=brightness)], p=0.5),
        v2.RandomApply([v2.ColorJitter(contrast=0.5)], p=0.5),
        v2.RandomApply([v2.ColorJitter(saturation=0.5)], p=0.5),
        v2.RandomApply([v2.ColorJitter(hue=18 / 360)], p=0.5),
    ])


def _pair(size) -> list[int]:
    if isinstance(size, int):
        return [size, size]
    h, w = size
    return [int(h), int(w)]


def crop_can_pad(image_size: Sequence[int], crop_size: int | Sequence[int],
                 scale_range: Sequence[float] | None) -> bool:
    """Whether :func:`build_train_transform` can pad a crop of an image of ``image_size`` (height, width): at the
    smallest scale of ``scale_range`` (rounded as :class:`RandomScale` rounds) a side is shorter than the crop's."""
    h, w = image_size
    crop_h, crop_w = _pair(crop_size)
    lo = 1.0 if scale_range is None else float(scale_range[0])
    return max(1, round(h * lo)) < crop_h or max(1, round(w * lo)) < crop_w


def build_train_transform(
    crop_size: int | Sequence[int],
    *,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    hflip: bool = True,
    rotate90: bool = False,
    strong: bool = False,
    photometric: bool = False,
    brightness_range: Sequence[float] | None = None,
    normalization: str = "imagenet",
    ignore_index: int = 255,
) -> v2.Compose:
    """Random scale -> random crop (padding the image with the mean, the mask with ``ignore_index``)
    -> horizontal flip -> optional quarter turn (square crops only) -> optional mild (``photometric``, its brightness
    factor drawn from ``brightness_range``) or strong colour augmentation -> normalisation."""
    _check_mode(normalization)
    steps: list = []
    if scale_range is not None:
        steps.append(RandomScale(scale_range))
    steps.append(v2.RandomCrop(_pair(crop_size), pad_if_needed=True,
                               fill={tv_tensors.Image: mean_rgb_uint8(normalization), tv_tensors.Mask: ignore_index}))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if rotate90:
        h, w = _pair(crop_size)
        if h != w:
            raise DataError(f"rotate90 needs a square crop (a turned {h}x{w} crop is {w}x{h} and cannot be batched "
                            f"with the others)", None, f"set data.crop_size=[{min(h, w)}, {min(h, w)}] or rotate90=false")
        steps.append(RandomQuarterTurn())
    if photometric:
        steps.append(build_photometric_distortion(brightness_range))
    elif brightness_range is not None:
        raise DataError("a brightness range is used only by the photometric distortion", None,
                        "pass photometric=True (data.photometric: true) or drop the range")
    if strong:
        steps.append(build_strong_augment())
    steps += [NormalizeImage(normalization), ToPlainTensors()]
    return v2.Compose(steps)


def build_eval_transform(*, normalization: str = "imagenet", size: int | Sequence[int] | None = None) -> v2.Compose:
    """Normalisation only (whole-image evaluation); ``size`` resizes image and mask (nearest) first."""
    _check_mode(normalization)
    steps: list = []
    if size is not None:
        steps.append(v2.Resize(_pair(size), antialias=True))
    steps += [NormalizeImage(normalization), ToPlainTensors()]
    return v2.Compose(steps)
