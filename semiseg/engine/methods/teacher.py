"""What the semi-supervised methods share: where pseudo labels come from and when the unlabeled loss starts.

* :class:`EMATeacher` - a copy of the segmentation model whose weights are an exponential moving average of
  the student's (Mean Teacher, Tarvainen & Valpola 2017; the teacher of UniMatch V2 and most later methods).
  It always runs in eval mode (running BatchNorm statistics, no dropout) and without gradient, so one bad
  student step does not flip its pseudo labels. Its weights are checkpointed with the run (a registered module).
* :func:`dropout_off` - run a forward with every dropout layer of a model switched off while the rest (BatchNorm
  batch statistics) stays in train mode: the clean pass the official UniMatch decoder makes (it has no dropout;
  DeepLabV3+'s bubbliiiing decoder has Dropout(0.5)/(0.1)).
* :func:`unsupervised_weight` - 0 before ``start``, then a linear ramp to 1 over ``rampup`` iterations: a supervised
  warm-up, so the first pseudo labels come from a model that has seen the labels (from scratch, the first
  confident pixels are almost all background and teach nothing else; see BENCHMARKS.md).
* :class:`GroupStatistics` - BatchNorm running statistics of the teacher kept per group of images (a video
  sequence, a camera) for the groups no label comes from, re-estimated from the teacher's own passes over them
  (AdaBN per group, Li et al. 2016): the shared statistics are the labeled images' world, and a group that looks
  different (CamVid's dusk sequence) is predicted with features normalised as for daylight.
* :func:`class_thresholds` - a confidence threshold per class such that each class keeps the same share of the
  pixels the teacher gives it (DARS, He et al. ICCV 2021): one global threshold keeps nearly every pixel of the
  class the teacher is surest of (background) and few of the others, and the unlabeled loss then shrinks them.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator

import torch
from torch import nn

# The name an EMATeacher is registered under (ctx.add_module): its weights are checkpoint["modules"][TEACHER_MODULE],
# which `semiseg eval/predict/export --teacher` load (engine/predict.py).
TEACHER_MODULE = "teacher"

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Inside the block every dropout layer of ``model`` is in eval mode (identity); the previous modes come back
    afterwards. Other layers keep their mode (BatchNorm in train mode still uses and updates batch statistics)."""
    layers = [m for m in model.modules() if isinstance(m, _DROPOUT) and m.training]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


class EMATeacher(nn.Module):
    """An exponential moving average of a model: ``teacher = momentum * teacher + (1 - momentum) * student`` for
    floating-point parameters and buffers (BatchNorm's running statistics follow the student the same way);
    integer buffers (``num_batches_tracked``) are copied. The teacher never trains and never takes gradients."""

    def __init__(self, student: nn.Module, momentum: float):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.model = copy.deepcopy(student)
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "EMATeacher":
        return super().train(False)  # always eval: running statistics, no dropout

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        m = self.momentum if momentum is None else momentum
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.lerp_(s.detach(), 1.0 - m)
        for t, s in zip(self.model.buffers(), student.buffers()):
            if t.is_floating_point():
                t.lerp_(s.detach(), 1.0 - m)
            else:
                t.copy_(s)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def ema_momentum(iteration: int, momentum: float) -> float:
    """The momentum of step ``iteration`` (0-based): ``min(momentum, 1 - 1 / (iteration + 1))``, Mean Teacher's
    ramp, so that the teacher follows the student closely while both are young instead of averaging in the random
    initial weights for hundreds of steps."""
    return min(momentum, 1.0 - 1.0 / (iteration + 1))


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the block BatchNorm layers in train mode still normalise with the batch's statistics but do not
    fold them into their running averages (momentum 0), so a batch unlike the test images (strongly recoloured,
    blurred views) cannot shift the statistics evaluation uses."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
              and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def strong_view_statistics(model: nn.Module, update: bool) -> contextlib.AbstractContextManager:
    """The BatchNorm context for a forward pass of strong views: the statistics learn from them when ``update``
    (the ``strong_bn_statistics`` option), else they are frozen (:func:`frozen_bn_statistics`)."""
    return contextlib.nullcontext() if update else frozen_bn_statistics(model)


class GroupStatistics:
    """BatchNorm running statistics of a (teacher) model per group of images, for the groups in ``groups``.

    ``with stats.use(group): model(images)`` runs the eval-mode model with that group's running means and variances
    in its BatchNorm layers, each first moved towards the statistics of this batch's input to the layer
    (``running += momentum * (batch - running)``, the batch variance unbiased, as BatchNorm's own update), and puts
    the shared statistics back afterwards. A group starts from the shared statistics of its first batch. A layer
    whose input has one value per channel (an image-pooling branch with one image) is left at its running values.
    The model's own statistics (the EMA of the student's) are never changed. Under DDP each process keeps its own
    (from its own images), as the teacher is per process."""

    def __init__(self, model: nn.Module, groups: set[str], momentum: float):
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"group statistics momentum must be in (0, 1], got {momentum}")
        self.groups, self.momentum = set(groups), momentum
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.stats: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _observe(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().float().transpose(0, 1).flatten(1)  # (C, N*H*W)
        if x.shape[1] < 2:
            return
        layer.running_mean.lerp_(x.mean(1), self.momentum)
        layer.running_var.lerp_(x.var(1, unbiased=True), self.momentum)

    @contextlib.contextmanager
    def use(self, group: str) -> Iterator[None]:
        if group not in self.groups:
            raise KeyError(f"group {group!r} has no statistics of its own (groups: {sorted(self.groups)})")
        shared = [(m.running_mean.clone(), m.running_var.clone()) for m in self.layers]
        own = self.stats.get(group, shared)
        hooks = []
        try:
            for m, (mean, var) in zip(self.layers, own):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                hooks.append(m.register_forward_pre_hook(self._observe))
            yield
            self.stats[group] = [(m.running_mean.clone(), m.running_var.clone()) for m in self.layers]
        finally:
            for h in hooks:
                h.remove()
            for m, (mean, var) in zip(self.layers, shared):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {g: [[mean, var] for mean, var in layers] for g, layers in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {g: [(mean, var) for mean, var in layers] for g, layers in state.get("stats", {}).items()}


def unsupervised_weight(iteration: int, start: int, rampup: int) -> float:
    """Weight of the unlabeled loss at ``iteration`` (0-based): 0 before ``start``, then linear to 1 over ``rampup``
    iterations (1 at once when ``rampup`` is 0)."""
    if iteration < start:
        return 0.0
    if rampup <= 0:
        return 1.0
    return min(1.0, (iteration - start + 1) / rampup)


def class_thresholds(conf: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, num_classes: int,
                     keep: float) -> torch.Tensor:
    """(num_classes,) thresholds: for each class, the confidence above which the ``keep`` most confident share of
    the valid pixels labelled with it lie (its ``1 - keep`` quantile). ``conf``, ``label``, ``valid``: pseudo labels
    of any shape. A class no valid pixel has gets threshold 1 (none of its pixels exist to keep)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    thresholds = torch.ones(num_classes, dtype=torch.float32, device=conf.device)
    conf, label = conf[valid].float(), label[valid]
    for c in torch.unique(label).tolist():
        values = conf[label == c]
        # kthvalue, not quantile: no size limit, and the threshold is a confidence that occurs (ties are kept)
        k = max(1, math.ceil((1.0 - keep) * values.numel()))
        thresholds[c] = values.kthvalue(k).values
    return thresholds


__all__ = ["EMATeacher", "GroupStatistics", "class_thresholds", "dropout_off", "frozen_bn_statistics", "ema_momentum",
           "strong_view_statistics", "unsupervised_weight"]
