"""Supervised training: the segmentation loss on labeled crops, nothing else."""

from __future__ import annotations

import torch

from semiseg.engine.methods.base import Method


class Supervised(Method):
    name = "supervised"

    def training_step(self, batch: dict, unlabeled_batch: dict | None, iteration: int) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        images, masks = ctx.to_device(batch)
        with ctx.autocast():
            logits = ctx.model(images)
        # The loss in float32: softmax over bf16 logits loses the small probabilities CE cares about.
        loss = ctx.criterion(logits.float(), masks)
        ctx.backward(loss)
        return {"loss": loss.detach()}


__all__ = ["Supervised"]
