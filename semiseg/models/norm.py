"""Normalisation layers shared by the model families.

``FrozenBatchNorm2d`` is the "frozen BatchNorm" of DeepLab-v2 / AdvSemiSeg: the statistics and the affine
parameters come from the pretrained network and never change during fine-tuning.

Why not ``torchvision.ops.FrozenBatchNorm2d``: it stores ``weight`` and ``bias`` as buffers, so they vanish
from ``model.parameters()`` (DeepLab-v2's published 44.05M parameter count includes them) and a module that
expects them as parameters cannot tell them apart from statistics. Here they stay ``nn.Parameter`` with
``requires_grad=False``: counted, listed by name, never trained. The state-dict keys are those of a
pre-0.4 ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``, ``running_var``; no
``num_batches_tracked``), which is exactly what the released AdvSemiSeg checkpoints contain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d that always normalises with its stored statistics and is never updated.

    * ``train()`` has no effect on it: it stays in eval mode, so running statistics are never updated and the
      output does not depend on the batch (batch size 1 works in training).
    * ``weight`` and ``bias`` are parameters with ``requires_grad=False``; optimizers that filter on
      ``requires_grad`` (as AdvSemiSeg's ``get_1x_lr_params_NOscale`` does) leave them out.
    * ``eps`` defaults to 1e-5, the ``nn.BatchNorm2d`` default used by AdvSemiSeg (and by torchvision's
      ResNets), so its outputs equal those of the original network in eval mode.
    * Loading a state dict that holds ``num_batches_tracked`` (saved from a regular ``nn.BatchNorm2d``) is
      accepted; the counter is meaningless for a frozen layer and is dropped.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        # Frozen means frozen: model.train() must not switch this layer to batch statistics.
        return super().train(False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.batch_norm in inference mode: the same kernel (and the same rounding) as nn.BatchNorm2d.eval().
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
