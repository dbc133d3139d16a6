"""Pseudo labels for self-training methods: the targets of a batch, distribution alignment, the confidence-masked
consistency loss and its diagnostics (engine/methods/unimatch.py uses them; any weak-to-strong method can)."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from semiseg.data.splits import group_of


class Targets(NamedTuple):
    """Pseudo labels of a batch: class (N, H, W) int64, confidence (N, H, W) float, valid (N, H, W) bool."""

    label: torch.Tensor
    conf: torch.Tensor
    valid: torch.Tensor

    def cutmix(self, box: torch.Tensor, pasted: Targets) -> Targets:
        """These targets with ``pasted``'s inside ``box``: the targets of an image CutMixed by the same box."""
        return Targets(*(torch.where(box, p, t) for t, p in zip(self, pasted)))

    @classmethod
    def of_masks(cls, masks: torch.Tensor, ignore_index: int) -> Targets:
        """Ground truth as targets: the labels, confidence 1 (every threshold keeps them), ignored pixels not valid."""
        valid = masks != ignore_index
        return cls(torch.where(valid, masks, torch.zeros_like(masks)), valid.float(), valid)


def pseudo_labels(logits: torch.Tensor, valid: torch.Tensor, align: "DistributionAlignment | None" = None,
                  names: Sequence[str] | None = None) -> Targets:
    """argmax and max softmax of (N, C, H, W) logits (computed in float32, without gradient), after distribution
    alignment when ``align`` is given (``names``: the images', for an alignment per group)."""
    probs = logits.detach().float().softmax(dim=1)
    if align is not None:
        probs = align(probs, valid, names)
    conf, label = probs.max(dim=1)
    return Targets(label, conf, valid)


class DistributionAlignment:
    """ReMixMatch's distribution alignment for pixels: ``p * labeled_freq / running_mean(p)``, renormalised.

    ``labeled_freq`` is a running average of the class frequencies of labeled pixels (:meth:`observe_labels`),
    ``running_mean(p)`` one of the teacher's mean class probabilities over valid unlabeled pixels (updated by each
    call). Both start at the first observation and are saved with the method's state.

    ``group_by`` (a separator): one running mean per group of images (a name's part before the separator, as
    ``data.labeled.stratify``), each image aligned with its group's; calls then pass the images' names.
    ``alone`` (with ``group_by``): only these groups keep a running mean of their own; the images of every other
    group share one (key ``SHARED``), as without ``group_by``."""

    SHARED = ""  # the key of the running mean the groups not in ``alone`` share (no group name is empty)

    def __init__(self, num_classes: int, momentum: float, ignore_index: int, group_by: str | None = None,
                 alone: set[str] | None = None):
        self.num_classes, self.momentum, self.ignore_index = num_classes, momentum, ignore_index
        self.group_by = group_by
        self.alone = None if alone is None else set(alone)
        self.labeled: torch.Tensor | None = None
        self.predicted: torch.Tensor | None = None
        self.group_predicted: dict[str, torch.Tensor] = {}

    def _ema(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        return new if old is None else self.momentum * old + (1 - self.momentum) * new

    def observe_labels(self, masks: torch.Tensor) -> None:
        keep = (masks != self.ignore_index) & (masks >= 0) & (masks < self.num_classes)
        counts = torch.bincount(masks[keep].flatten(), minlength=self.num_classes).float().cpu()
        if counts.sum() > 0:
            self.labeled = self._ema(self.labeled, counts / counts.sum())

    @staticmethod
    def _mean(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = valid.unsqueeze(1).float()
        return ((probs * weights).sum(dim=(0, 2, 3)) / weights.sum().clamp(min=1)).cpu()

    def __call__(self, probs: torch.Tensor, valid: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
        if self.group_by is None:
            self.predicted = self._ema(self.predicted, self._mean(probs, valid))
            predicted = self.predicted.view(1, -1)
        else:
            if names is None or len(names) != probs.shape[0]:
                raise ValueError("distribution alignment per group needs the name of every image in the batch")
            groups = [group_of(name, self.group_by) for name in names]
            if self.alone is not None:
                groups = [g if g in self.alone else self.SHARED for g in groups]
            for g in dict.fromkeys(groups):
                rows = torch.tensor([i for i, h in enumerate(groups) if h == g], device=probs.device)
                self.group_predicted[g] = self._ema(self.group_predicted.get(g),
                                                    self._mean(probs[rows], valid[rows]))
            predicted = torch.stack([self.group_predicted[g] for g in groups])
        if self.labeled is None:
            return probs
        ratio = (self.labeled.view(1, -1) / predicted.clamp(min=1e-6)).to(probs.device)
        aligned = probs * ratio.view(*ratio.shape, 1, 1)
        return aligned / aligned.sum(dim=1, keepdim=True).clamp(min=1e-12)

    def state_dict(self) -> dict[str, Any]:
        return {"labeled": self.labeled, "predicted": self.predicted, "group_predicted": dict(self.group_predicted)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled, self.predicted = state.get("labeled"), state.get("predicted")
        self.group_predicted = dict(state.get("group_predicted") or {})


def consistency_loss(logits: torch.Tensor, targets: Targets, conf_thresh: float | torch.Tensor,
                     class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The official unsupervised loss: cross-entropy summed over valid pixels whose pseudo label has
    confidence >= ``conf_thresh`` (a number, or one per pixel), divided by the number of valid pixels (confident
    or not). With ``class_weight`` (C,) each pixel counts with its pseudo label's weight, in the sum and in the
    divisor (the weighted mean of ``F.cross_entropy``, unconfident pixels still below the line)."""
    ce = F.cross_entropy(logits.float(), targets.label, reduction="none")
    keep = targets.valid & (targets.conf >= conf_thresh)
    if class_weight is None:
        return torch.where(keep, ce, torch.zeros_like(ce)).sum() / targets.valid.sum().clamp(min=1)
    weight = class_weight.to(ce.device, ce.dtype)[targets.label]
    total = torch.where(targets.valid, weight, torch.zeros_like(weight)).sum()
    return torch.where(keep, ce * weight, torch.zeros_like(ce)).sum() / total.clamp(min=1e-12)


def mask_ratio(targets: Targets, conf_thresh: float | torch.Tensor) -> torch.Tensor:
    """Fraction of valid pixels whose pseudo label passes the threshold (the official log's "Mask")."""
    keep = targets.valid & (targets.conf >= conf_thresh)
    return keep.sum().float() / targets.valid.sum().clamp(min=1)


def pseudo_label_accuracy(targets: Targets, truth: torch.Tensor, conf_thresh: float | torch.Tensor,
                          ignore_index: int) -> torch.Tensor:
    """Share of confident pseudo-labeled pixels whose label is right (pixels the truth ignores left out): a
    diagnostic of the teacher, never a training signal."""
    keep = targets.valid & (targets.conf >= conf_thresh) & (truth != ignore_index)
    right = keep & (targets.label == truth)
    return right.sum().float() / keep.sum().clamp(min=1)
