"""The interface of a training method (supervised, AdvSemiSeg, consistency training ...).

Life cycle, driven by the loop (engine/trainer.py)::

    method = MethodClass(options)             # options: the recipe's method.options, checked against Options
    method.setup(ctx)                         # build extra modules / optimizers / streams through ctx
    [method.load_state_dict(state)]           # when resuming
    for each optimizer step, for each accumulation micro-step:
        losses = method.training_step(batch, unlabeled_batch, iteration)   # calls ctx.backward(...)
    state = method.state_dict()               # saved in every checkpoint

``training_step`` returns a dict of detached scalar tensors (``"loss"`` = the total); the loop averages
them over processes, stops the run when one is NaN or infinite, and logs them. Modules and optimizers
registered through ``ctx`` are checkpointed by the loop; ``state_dict`` is for anything else (e.g. a
running threshold). The loop puts the segmentation model in train mode before every step; a method sets
the mode of its own extra modules (a discriminator trains, an EMA teacher stays in eval mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from semiseg.config import dataclass_from_dict


@dataclasses.dataclass
class NoOptions:
    pass


class Method:
    name = "base"
    Options: type = NoOptions  # a dataclass of this method's options with their defaults
    needs_unlabeled = False  # True: the loop streams the unlabeled split into training_step

    def __init__(self, options: dict | None = None):
        self.options = dataclass_from_dict(self.Options, options or {}, "method.options")
        self.ctx = None

    def unlabeled_batch(self, per_rank_batch: int) -> int:
        """Unlabeled images per process and micro-step, given the labeled ones (the loop sizes the unlabeled
        stream with it): as many by default."""
        return per_rank_batch

    def setup(self, ctx) -> None:
        self.ctx = ctx

    def training_step(self, batch: dict, unlabeled_batch: dict | None, iteration: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


__all__ = ["Method", "NoOptions"]
