"""Segmentation losses: cross-entropy (plain or over hard pixels, OHEM), Dice and the discriminator's 2-D BCE, all
aware of an ignore label.

Conventions shared by every loss here:

* ``logits`` are raw scores ``(N, C, *spatial)`` at the resolution of ``target`` (upsample first; a size
  mismatch is an error rather than a silent interpolation, because the right interpolation depends on the model).
* ``target`` holds class indices ``(N, *spatial)`` with ``ignore_index`` (255) on pixels that carry no label.
  Ignored pixels contribute neither to the loss nor to its normaliser.
* A batch in which every pixel is ignored gives a loss of exactly 0 that is still connected to ``logits``
  (``backward()`` works and yields zero gradients) instead of the NaN of a 0/0 mean. This happens in practice
  with random crops of VOC borders and with fully-masked semi-supervised batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "cross_entropy",
    "ohem_cross_entropy",
    "OhemCrossEntropyLoss",
    "DiceLoss",
    "bce_with_logits_2d",
    "CrossEntropyLoss",
    "SumOfLosses",
    "LOSS_NAMES",
    "build_loss",
]

Weight = torch.Tensor | Sequence[float] | None


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Validate a (logits, class-index target) pair; return the target as int64.

    The value check costs one device sync per call; it turns CUDA's opaque device-side assert for an
    out-of-range label into an error that names the labels.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, C, *spatial), got {tuple(logits.shape)}")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree: expected target "
            f"(N, *spatial) = {tuple(logits.shape[:1] + logits.shape[2:])}. Upsample the logits to the mask size "
            "(F.interpolate(logits, size=target.shape[-2:], mode='bilinear')) first."
        )
    target = target.long()
    num_classes = logits.shape[1]
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(
            f"target contains labels {values} outside [0, {num_classes}) that are not ignore_index={ignore_index}"
        )
    return target


def _class_weight(weight: Weight, num_classes: int, like: torch.Tensor) -> torch.Tensor | None:
    """Class weights as a float tensor on ``like``'s device, or None."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32, device=like.device)
    if w.shape != (num_classes,):
        raise ValueError(f"class weight must have shape ({num_classes},), got {tuple(w.shape)}")
    return w


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0``; 0 elsewhere (``num`` is then 0 too, and keeps its autograd graph)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: Weight = None,
    ignore_index: int = 255,
    per_image: bool = False,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Pixel-wise cross-entropy with an ignore label and optional class weights.

    With ``l_i`` the per-pixel loss (``F.cross_entropy(..., reduction="none")``, already multiplied by
    ``w_{y_i}`` when class weights are given) and ``V`` the non-ignored pixels:

    * ``per_image=False`` (default): ``sum_{i in V} l_i / sum_{i in V} w_{y_i}`` -- the weighted mean over all
      valid pixels of the batch, identical to ``F.cross_entropy(logits, target, weight, ignore_index)``
      (``w = 1`` without weights, so this is the plain mean over valid pixels).
    * ``per_image=True``: the same mean taken inside each image, then the plain mean over the images that have
      at least one valid pixel. Without ignored pixels and weights this is the d2l FCN loss
      ``F.cross_entropy(x, y, reduction="none").mean(1).mean(1)`` averaged over the batch (d2l sums the
      per-image values before ``backward``, which only scales the gradient by N). Every image then weighs the
      same whatever its number of labelled pixels.

    A batch whose pixels are all ignored returns 0 (with a gradient of zeros), not NaN.
    ``label_smoothing`` is passed to ``F.cross_entropy``.
    """
    target = _check_logits_target(logits, target, ignore_index)
    w = _class_weight(weight, logits.shape[1], logits)
    pixel_loss = F.cross_entropy(
        logits, target, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    # The normaliser PyTorch uses for reduction="mean": the summed weight of the valid pixels' target classes.
    valid = target != ignore_index
    if w is None:
        pixel_weight = valid.to(pixel_loss.dtype)
    else:
        pixel_weight = w[target.masked_fill(~valid, 0)] * valid
        pixel_weight = pixel_weight.to(pixel_loss.dtype)

    if not per_image:
        return _safe_div(pixel_loss.sum(), pixel_weight.sum())

    n = pixel_loss.shape[0]
    per_img_loss = _safe_div(pixel_loss.reshape(n, -1).sum(1), pixel_weight.reshape(n, -1).sum(1))
    has_pixels = valid.reshape(n, -1).any(1)
    # Images without a valid pixel drop out of the batch mean instead of pulling it towards 0.
    return _safe_div((per_img_loss * has_pixels).sum(), has_pixels.sum().to(per_img_loss.dtype))


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`; the class weights are a buffer, so ``.to(device)`` moves them."""

    def __init__(
        self,
        weight: Weight = None,
        ignore_index: int = 255,
        per_image: bool = False,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.ignore_index = ignore_index
        self.per_image = per_image
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            per_image=self.per_image,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, per_image={self.per_image}, label_smoothing={self.label_smoothing}"


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    weight: Weight = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining; UniMatch's Cityscapes loss, the
    ``ProbOhemCrossEntropy2d`` of TorchSemSeg / CPS).

    A labelled pixel is hard when the predicted probability of its true class is at most ``max(thresh, p_k)``,
    ``p_k`` being the ``min_kept``-th smallest such probability in the batch: at least ``min_kept`` pixels are
    kept however confident the model is. The loss is :func:`cross_entropy`'s mean over the kept pixels. As in the
    reference, a batch with fewer than ``min_kept`` labelled pixels, or ``min_kept=0``, keeps every labelled pixel
    (plain cross-entropy). The selection is not differentiated (it is a mask).
    """
    target = _check_logits_target(logits, target, ignore_index)
    valid = target != ignore_index
    if 0 < min_kept <= int(valid.sum()):
        with torch.no_grad():
            prob = logits.detach().float().softmax(1).gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
            prob = prob.masked_fill(~valid, 1.0)  # unlabelled pixels sort last, never below the k-th labelled one
            kth = prob.flatten().kthvalue(min_kept).values
            keep = valid & (prob <= torch.clamp(kth, min=thresh))
        target = target.masked_fill(~keep, ignore_index)
    return cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


class OhemCrossEntropyLoss(nn.Module):
    """Module form of :func:`ohem_cross_entropy`; the class weights are a buffer."""

    def __init__(self, weight: Weight = None, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 100_000):
        super().__init__()
        if not 0.0 <= thresh <= 1.0 or min_kept < 0:
            raise ValueError(f"OHEM needs 0 <= thresh <= 1 and min_kept >= 0, got thresh={thresh}, min_kept={min_kept}")
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.ignore_index = ignore_index
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(logits, target, thresh=self.thresh, min_kept=self.min_kept, weight=self.weight,
                                  ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, thresh={self.thresh}, min_kept={self.min_kept}"


class DiceLoss(nn.Module):
    """Multi-class soft Dice loss on softmax probabilities.

    With ``p_ic`` the softmax probability of class ``c`` at pixel ``i``, ``g_ic`` the one-hot target and the
    sums taken over the valid (non-ignored) pixels of the whole batch::

        dice_c = (2 * sum_i p_ic g_ic + smooth) / (sum_i p_ic + sum_i g_ic + smooth)
        loss   = 1 - sum_c w_c dice_c / sum_c w_c           (w_c = 1 without ``weight``)

    * Ignored pixels are removed from both the probabilities and the one-hot target. (The bubbliiiing
      DeepLabV3+ code drops them from the target only, so their probabilities still count as false positives.)
    * Classes absent from the batch's target count in the mean: their term is
      ``smooth / (sum_i p_ic + smooth)``, which is 1 (no loss) when the model puts no probability on them and
      falls as it does, so the loss keeps penalising false positives of missing classes. ``smooth`` must be
      > 0 for this to be well defined; with ``smooth=0`` an absent class scores 0 and adds a constant 1/C.
      To leave a class out (e.g. background), give it weight 0.
    * Computed in float32 even under autocast: sums over millions of pixels lose too much in bf16.
    * A batch with no valid pixel gives 0 (with zero gradient).
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, weight: Weight = None):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _check_logits_target(logits, target, self.ignore_index)
        num_classes = logits.shape[1]
        w = _class_weight(self.weight, num_classes, logits)

        valid = target != self.ignore_index
        prob = logits.float().softmax(dim=1)
        # (N, *spatial, C) -> (N, C, *spatial); ignored pixels become all-zero rows in both tensors.
        one_hot = F.one_hot(target.masked_fill(~valid, 0), num_classes).movedim(-1, 1)
        mask = valid.unsqueeze(1)
        prob = prob * mask
        one_hot = one_hot * mask

        dims = [0, *range(2, logits.dim())]  # everything but the class dim
        intersection = (prob * one_hot).sum(dims)
        cardinality = prob.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(1e-12)

        if w is None:
            loss = 1 - dice.mean()
        else:
            loss = 1 - (w * dice).sum() / w.sum().clamp_min(1e-12)
        # No labelled pixel: nothing to learn from, keep the graph but give no signal.
        return torch.where(valid.any(), loss, loss * 0)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}"


def bce_with_logits_2d(
    logits: torch.Tensor, target: torch.Tensor | float, *, ignore_index: int = 255
) -> torch.Tensor:
    """Binary cross-entropy on a discriminator's confidence map, averaged over the non-ignored pixels.

    The AdvSemiSeg ``BCEWithLogitsLoss2d``: ``logits`` is ``(N, 1, H, W)`` (any shape works); ``target`` is

    * a number, the constant label of the whole map (1 = "ground truth", 0 = "prediction" in AdvSemiSeg), or
    * a tensor broadcastable to ``logits`` holding labels in ``[0, 1]`` and ``ignore_index`` on ignored pixels
      (what ``make_D_label(label, ignore_mask)`` builds: ``torch.where(ignore_mask, 255.0, label)``).
      A ``(N, H, W)`` target for ``(N, 1, H, W)`` logits gets its channel dim added.

    ``loss = mean over non-ignored pixels of -[y log s(x) + (1 - y) log(1 - s(x))]``. With every pixel ignored it
    returns 0 with a zero gradient (the original returned an unconnected ``zeros(1)``).

    ``ignore_index`` marks ignored pixels of *this* label map; any value outside ``[0, 1]`` works (255, -1, 11, ...).
    It need not be the dataset's ignore value: a value in ``[0, 1]`` (e.g. a dataset whose ignore value is 0)
    could not be told from a label and is refused.
    """
    if 0 <= ignore_index <= 1:
        raise ValueError(f"ignore_index={ignore_index} is also a BCE label (labels are in [0, 1]); mark ignored "
                         "pixels with a value outside [0, 1], e.g. 255")
    if not isinstance(target, torch.Tensor):
        target = torch.full_like(logits, float(target))
    if target.dim() == logits.dim() - 1 and logits.dim() >= 2 and logits.shape[1] == 1:
        target = target.unsqueeze(1)
    try:
        target = target.to(device=logits.device).expand_as(logits)
    except RuntimeError:
        raise ValueError(
            f"target of shape {tuple(target.shape)} cannot be broadcast to logits of shape {tuple(logits.shape)}"
        ) from None

    valid = target != ignore_index
    bad = valid & ((target < 0) | (target > 1))
    if bool(bad.any()):
        values = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(f"BCE target values {values} are neither in [0, 1] nor ignore_index={ignore_index}")

    # Ignored pixels get label 0 so the elementwise BCE stays finite; the mask then removes them.
    y = torch.where(valid, target, torch.zeros_like(target)).to(logits.dtype)
    pixel_loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * valid
    return _safe_div(pixel_loss.sum(), valid.sum().to(pixel_loss.dtype))


class SumOfLosses(nn.Module):
    """``sum_k factor_k * loss_k(logits, target)``; what ``build_loss("ce+dice")`` returns."""

    def __init__(self, losses: dict[str, nn.Module], factors: dict[str, float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.factors = dict(factors)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.factors[name] * loss(logits, target) for name, loss in self.losses.items())

    def extra_repr(self) -> str:
        return f"factors={self.factors}"


LOSS_NAMES = ("ce", "dice", "ce+dice", "ohem")


def build_loss(
    name: str = "ce",
    *,
    weight: Weight = None,
    ignore_index: int = 255,
    per_image: bool = False,
    label_smoothing: float = 0.0,
    smooth: float = 1.0,
    dice_factor: float = 1.0,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100_000,
) -> nn.Module:
    """The segmentation loss named in a recipe: ``"ce"``, ``"dice"``, ``"ce+dice"`` or ``"ohem"``
    (:func:`ohem_cross_entropy` with ``ohem_thresh`` and ``ohem_min_kept``).

    Returns a module ``loss(logits, target) -> scalar``. ``weight`` (per-class weights) applies to both terms:
    the weighted mean of the cross-entropy and the weighted mean of the per-class Dice scores. ``"ce+dice"`` is
    ``ce + dice_factor * dice`` (the DeepLabV3+ seed adds them with factor 1).
    """
    key = name.replace(" ", "").lower()
    if key not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    ce = CrossEntropyLoss(weight, ignore_index, per_image, label_smoothing)
    dice = DiceLoss(ignore_index, smooth, weight)
    if key == "ce":
        return ce
    if key == "dice":
        return dice
    if key == "ohem":
        return OhemCrossEntropyLoss(weight, ignore_index, ohem_thresh, ohem_min_kept)
    return SumOfLosses({"ce": ce, "dice": dice}, {"ce": 1.0, "dice": float(dice_factor)})
