"""Segmentation metrics from a confusion matrix: IoU, mIoU, pixel accuracy, mean class accuracy, fwIoU, Dice.

Everything is derived from one ``(C, C)`` int64 matrix ``M`` where ``M[t, p]`` counts the valid pixels whose
target class is ``t`` and whose predicted class is ``p`` (rows = ground truth, columns = prediction, as in
torchvision's ``references/segmentation`` and mmsegmentation). With

    TP_c = M[c, c]            (diagonal)
    GT_c = sum_p M[c, p]      (row sum: pixels whose target is c)
    PR_c = sum_t M[t, c]      (column sum: pixels predicted as c)
    N    = sum M              (valid pixels)

the metrics are

    iou_c       = TP_c / (GT_c + PR_c - TP_c)          Jaccard index of class c
    dice_c      = 2 TP_c / (GT_c + PR_c)                Dice coefficient == F1 score of class c
    class_acc_c = TP_c / GT_c                            recall of class c
    acc         = sum_c TP_c / N                         overall pixel accuracy
    macc        = mean_c class_acc_c
    miou        = mean_c iou_c
    mdice       = mean_c dice_c
    fwiou       = sum_c (GT_c / N) * iou_c               frequency-weighted IoU (Long et al., FCN)

Absent classes. A class that appears in neither the target nor the prediction has ``iou_c = dice_c = 0/0``:
it is reported as NaN and left out of ``miou`` and ``mdice`` (it says nothing about the model; counting it
as 0 or 1 would move the mean by whatever share of classes happen to be missing from the evaluated set).
Likewise ``class_acc_c`` is NaN when the class never appears in the target (even if it was predicted: those
false positives already lower ``iou_c``), and is left out of ``macc``. A class predicted but absent from the
target has ``iou_c = dice_c = 0``, which does count. ``fwiou`` needs no special case: a class absent from
the target has weight 0. With no valid pixel at all every metric is NaN.

NaN is what :meth:`ConfusionMatrix.compute` returns because it keeps the numbers usable for arithmetic
(``math.isnan``, ``numpy.nanmean``). Strict JSON has no NaN, so :func:`to_json_dict` converts NaN to ``None``
(``null``) for logs and reports.

Pixels whose target equals ``ignore_index`` (255 by default: VOC's object borders) are dropped before
counting, so they affect no metric at all, whatever the prediction there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "to_json_dict"]

# Error messages list at most this many offending values, so a mask full of colours stays readable.
_MAX_LISTED_VALUES = 10


def _listed(values: torch.Tensor) -> str:
    """The distinct values of ``values`` as a short readable list."""
    uniq = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in uniq[:_MAX_LISTED_VALUES])
    more = f", ... ({len(uniq)} distinct)" if len(uniq) > _MAX_LISTED_VALUES else ""
    return f"[{shown}{more}]"


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` confusion matrix over an evaluation run.

    Args:
        num_classes: number of classes ``C``; valid target values are ``0 .. C-1``.
        ignore_index: target value of pixels that are not evaluated (255, VOC's "void").
        device: where the matrix lives. ``None`` (the default) means "wherever the first ``update`` happens",
            i.e. the model's device, so counting never copies predictions to the host.

    Typical use::

        cm = ConfusionMatrix(21)
        for batch in loader:
            cm.update(model(batch["image"]), batch["mask"])   # logits or class indices
        cm.all_reduce()                                      # no-op unless torch.distributed is initialised
        print(cm.table(dataset.classes))
        metrics = cm.compute()                               # {"miou": ..., "iou": [...], ...}
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._follow_input_device = device is None
        # int64: a single 4K image already holds 8M pixels; int32 would overflow over a large validation set.
        self.mat = torch.zeros(
            (self.num_classes, self.num_classes),
            dtype=torch.int64,
            device=torch.device("cpu") if device is None else device,
        )

    # ------------------------------------------------------------------ accumulation
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            pred: either class indices of the same shape as ``target`` (any number of dims, integer dtype),
                or logits/scores ``(N, C, *spatial)`` for a target ``(N, *spatial)``, reduced by ``argmax``
                over dim 1. Logits are recognised only when unambiguous: floating dtype, exactly one more dim
                than ``target``, ``C == num_classes`` and the other dims equal to the target's.
            target: class indices ``0 .. C-1``, or ``ignore_index``. Integer dtype (uint8 masks are fine).

        Raises:
            ValueError: shapes disagree, logits have the wrong number of channels, a tensor is floating where
                indices are expected, or a value lies outside ``[0, num_classes)`` (other than
                ``ignore_index`` in the target); the message lists the offending values.
        """
        pred, target = self._check(pred, target)
        if self._follow_input_device:
            # Adopt the model's device on the first update; the matrix is still empty, so moving is free.
            if self.mat.device != pred.device:
                self.mat = self.mat.to(pred.device)
            self._follow_input_device = False
        pred = pred.to(self.mat.device).reshape(-1)
        target = target.to(self.mat.device).reshape(-1)
        counts = self._fast_counts(pred, target)
        if counts is None:  # out-of-range values somewhere, a negative or huge ignore_index: the exact path
            counts = self._checked_counts(pred, target)
        self.mat += counts

    # Most bins the fast path counts into (target values 0..max x classes): 8 MB of int64 counts at most.
    _MAX_FAST_BINS = 1 << 20

    def _fast_counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """The batch's ``(C, C)`` counts in three passes over the pixels, or None to take :meth:`_checked_counts`.

        No boolean mask (selecting the valid pixels copies them and costs more than the count itself): one
        ``aminmax`` per tensor, then one bincount over ``target * C + pred`` for *every* pixel, into
        ``max(max(target) + 1, C) * C`` bins. Rows ``0..C-1`` are the matrix; the row of ``ignore_index`` is dropped;
        any other row holding counts is a target value outside the classes, and the exact path raises the error
        that names it. Predictions outside ``[0, C)`` anywhere (legal under ignored pixels) also go the exact way.
        """
        n, ignore = self.num_classes, self.ignore_index
        if target.numel() == 0:
            return torch.zeros((n, n), dtype=torch.int64, device=target.device)
        if pred.dtype != torch.int64:
            pred = pred.long()  # (uint8 * C would overflow)
        if target.dtype != torch.int64:
            target = target.long()
        if ignore < 0:  # e.g. -1 or -100: move the ignored pixels to row C (one extra pass)
            target = torch.where(target == ignore, n, target)
            ignore = n
        pmin, pmax, tmin, tmax = torch.stack([*torch.aminmax(pred), *torch.aminmax(target)]).tolist()
        rows = max(tmax + 1, n)
        if pmin < 0 or pmax >= n or tmin < 0 or rows * n > self._MAX_FAST_BINS:
            return None
        counts = torch.bincount(torch.add(pred, target, alpha=n), minlength=rows * n).reshape(rows, n)
        if rows > n:
            outside = counts[n:].sum()
            if ignore >= n and ignore < rows:
                outside = outside - counts[ignore].sum()
            if int(outside):
                return None
        matrix = counts[:n]
        if ignore < n:  # an ignore_index that is also a class number: its pixels are not counted
            matrix[ignore] = 0
        return matrix

    def _checked_counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The counts of the valid pixels only (boolean masks, slower); raises on values outside the classes."""
        pred, target = pred.long(), target.long()
        n = self.num_classes
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= n))
        if bool(bad_target.any()):
            raise ValueError(
                f"target contains values {_listed(target[bad_target])} outside [0, {n}) that are not "
                f"ignore_index={self.ignore_index}. Check num_classes, the ignore label, and that masks hold "
                "class indices (not palette colours or 0/255 binary values)."
            )
        # Predictions under ignored pixels are never counted, so their value does not matter.
        bad_pred = valid & ((pred < 0) | (pred >= n))
        if bool(bad_pred.any()):
            raise ValueError(f"pred contains class indices {_listed(pred[bad_pred])} outside [0, {n})")
        # One bincount over the flat index target*C + pred fills the whole matrix in a single kernel.
        idx = target[valid] * n + pred[valid]
        return torch.bincount(idx, minlength=n * n).reshape(n, n)

    def _check(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate types and shapes (values are checked while counting); return integer ``(pred, target)``."""
        if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(f"pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}")
        if target.is_floating_point() or target.is_complex():
            raise ValueError(
                f"target must hold integer class indices, got dtype {target.dtype}. A float mask usually comes "
                "from ToTensor()/to_dtype(scale=True) applied to the mask: convert masks with "
                "torch.as_tensor(np.array(mask), dtype=torch.int64) instead."
            )
        n = self.num_classes

        if pred.is_floating_point():
            # Logits are accepted only in the one layout that cannot be confused with indices.
            if pred.dim() != target.dim() + 1 or pred.dim() < 2:
                raise ValueError(
                    f"pred is floating ({pred.dtype}) with shape {tuple(pred.shape)} for a target of shape "
                    f"{tuple(target.shape)}: pass class indices of the target's shape (e.g. logits.argmax(1)) "
                    "or logits of shape (N, num_classes, *target.shape[1:])."
                )
            if pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
                raise ValueError(
                    f"logits of shape {tuple(pred.shape)} do not match target of shape {tuple(target.shape)}: "
                    "expected (N, C, *spatial) for a target (N, *spatial). Upsample the logits to the mask size "
                    "(F.interpolate) before evaluating."
                )
            if pred.shape[1] != n:
                raise ValueError(
                    f"logits have {pred.shape[1]} channels but the confusion matrix has num_classes={n}"
                )
            pred = pred.argmax(dim=1)
        elif pred.is_complex() or pred.dtype == torch.bool:
            raise ValueError(f"pred must hold class indices (integer dtype) or logits, got dtype {pred.dtype}")
        elif pred.shape != target.shape:
            raise ValueError(
                f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}: both must be "
                "class-index tensors of the same shape (or pred logits of shape (N, C, *target.shape[1:]))."
            )
        return pred, target

    def all_reduce(self) -> None:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised; a no-op otherwise.

        Every rank must call it (it is a collective), once, after its last ``update``: it replaces the local
        matrix by the global sum in place, so calling it twice would count other ranks' pixels twice. With the
        NCCL backend the matrix must be on the rank's GPU, which it is when the updates ran there.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        """Zero the counts (keeps the device)."""
        self.mat.zero_()

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python floats and lists (see the module docstring for the formulas).

        Keys: ``miou``, ``iou`` (list per class), ``acc``, ``macc``, ``class_acc`` (list), ``fwiou``,
        ``dice`` (list), ``mdice``. Undefined values (absent classes) are ``float('nan')`` and are excluded
        from the means; use :func:`to_json_dict` to serialise.
        """
        # float64 on the host: exact for counts up to 2**53 and the result leaves the device anyway.
        m = self.mat.detach().to("cpu", torch.float64)
        tp = m.diagonal()
        gt = m.sum(dim=1)
        pr = m.sum(dim=0)
        total = m.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            # 0/0 -> NaN explicitly (rather than relying on IEEE division) so the intent is visible.
            return torch.where(den > 0, num / den.clamp_min(1), nan)

        iou = ratio(tp, gt + pr - tp)
        dice = ratio(2 * tp, gt + pr)
        class_acc = ratio(tp, gt)
        acc = ratio(tp.sum(), total)
        # Classes absent from the target have weight 0 (and possibly NaN IoU), so sum over present ones only.
        present = gt > 0
        fwiou = (gt[present] / total * iou[present]).sum() if bool(present.any()) else nan

        return {
            "miou": float(torch.nanmean(iou)),
            "iou": iou.tolist(),
            "acc": float(acc),
            "macc": float(torch.nanmean(class_acc)),
            "class_acc": class_acc.tolist(),
            "fwiou": float(fwiou),
            "dice": dice.tolist(),
            "mdice": float(torch.nanmean(dice)),
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A per-class table (IoU, accuracy, Dice in %, target pixel count) followed by a summary line.

        Undefined values (absent classes) print as ``-``.
        """
        n = self.num_classes
        if class_names is None:
            class_names = [str(i) for i in range(n)]
        class_names = [str(c) for c in class_names]
        if len(class_names) != n:
            raise ValueError(f"got {len(class_names)} class names for num_classes={n}")

        r = self.compute()
        gt_pixels = self.mat.sum(dim=1).tolist()

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100.0 * x:.2f}"

        name_w = max(5, *(len(c) for c in class_names))
        header = f"{'class':<{name_w}}  {'IoU':>7}  {'Acc':>7}  {'Dice':>7}  {'pixels':>12}"
        lines = [header, "-" * len(header)]
        for i, name in enumerate(class_names):
            lines.append(
                f"{name:<{name_w}}  {pct(r['iou'][i]):>7}  {pct(r['class_acc'][i]):>7}  "
                f"{pct(r['dice'][i]):>7}  {gt_pixels[i]:>12d}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"mIoU {pct(r['miou'])}  aAcc {pct(r['acc'])}  mAcc {pct(r['macc'])}  "
            f"fwIoU {pct(r['fwiou'])}  mDice {pct(r['mdice'])}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.mat.sum())}, device={self.mat.device})"
        )


def to_json_dict(metrics: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``metrics`` (as returned by :meth:`ConfusionMatrix.compute`, or any nested dict/list of
    numbers) with NaN and infinities replaced by ``None``.

    ``json.dumps(to_json_dict(m), allow_nan=False)`` then always succeeds; absent classes appear as ``null``.
    """

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean(metrics)
