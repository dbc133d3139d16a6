"""Learning-rate schedule: poly decay (DeepLab / AdvSemiSeg) with an optional linear warmup.

``lr(it) = base * max((1 - it / max_iters) ** power, min_lr / base)``, where ``it`` counts finished optimizer
steps, so the first step uses the full base rate exactly as AdvSemiSeg's ``lr_poly(lr, i_iter, ...)``.
During warmup the factor rises linearly from ``warmup_factor`` to the poly value at ``warmup_iters``.
The schedule is a pure function of the iteration, so resuming only needs the iteration number; the
LambdaLR state is checkpointed anyway for completeness.
"""

from __future__ import annotations

import functools

import torch


def poly_factor(it: int, *, max_iters: int, power: float = 0.9, warmup_iters: int = 0,
                warmup_factor: float = 1e-3, min_factor: float = 0.0) -> float:
    """The multiplier of the base learning rate for optimizer step ``it`` (0-based)."""
    it = min(max(it, 0), max_iters)
    factor = max((1.0 - it / max_iters) ** power, min_factor)
    if warmup_iters > 0 and it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_factor + (1.0 - warmup_factor) * alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, *, max_iters: int, power: float = 0.9,
                    warmup_iters: int = 0, warmup_factor: float = 1e-3, min_lr: float = 0.0,
                    base_lr: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`poly_factor` to every parameter group (each keeps its lr_mult)."""
    base = base_lr if base_lr is not None else max(g["lr"] for g in optimizer.param_groups)
    min_factor = min_lr / base if base > 0 else 0.0
    # A partial rather than a closure: its arguments stay inspectable (sched.lr_lambdas[0].keywords).
    fn = functools.partial(poly_factor, max_iters=max_iters, power=power, warmup_iters=warmup_iters,
                           warmup_factor=warmup_factor, min_factor=min_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def poly_schedule(optimizer: torch.optim.Optimizer, cfg, *, min_lr: float = 0.0,
                  base_lr: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's poly schedule for ``optimizer``: ``optim.power``, ``optim.warmup_iters`` / ``warmup_factor`` over
    ``train.iterations`` of the config ``cfg``. Every optimizer of a run (the model's, a method's discriminator) gets
    its schedule here. ``min_lr`` (an absolute floor) is the caller's: the trainer passes ``optim.min_lr`` for the
    model's optimizer only, whose ``optim.lr`` it is measured against (``base_lr``)."""
    o = cfg.optim
    return build_scheduler(optimizer, max_iters=cfg.train.iterations, power=o.power, warmup_iters=o.warmup_iters,
                           warmup_factor=o.warmup_factor, min_lr=min_lr, base_lr=base_lr)


__all__ = ["poly_factor", "build_scheduler", "poly_schedule"]
