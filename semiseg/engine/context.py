"""What the training loop hands to a method: the model, the loss, precision helpers and registration points.

A method computes losses and calls :meth:`TrainContext.backward`; the loop does everything else
(zeroing and stepping every registered optimizer, the schedules, gradient accumulation, DDP gradient
sync, the NaN check, checkpoints, logging, evaluation). Modules, optimizers, schedulers and streams a
method registers here are moved to the device, wrapped for DDP, stepped and checkpointed by the loop.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from semiseg.config import Config
from semiseg.runtime import autocast
from semiseg.engine.sampling import TrainStream
from semiseg.engine.schedule import poly_schedule


class TrainContext:
    def __init__(self, *, cfg: Config, model: nn.Module, raw_model: nn.Module, criterion: nn.Module,
                 device: torch.device, precision: str, channels_last: bool, scaler: torch.amp.GradScaler | None,
                 rank: int, world_size: int, per_rank_batch: int, num_classes: int, ignore_index: int,
                 normalization: str, labeled_dataset: Dataset, unlabeled_dataset: Dataset | None):
        self.cfg = cfg
        self.model = model  # what to call in training_step (DDP-wrapped / compiled when enabled)
        self.raw_model = raw_model  # the plain module (state_dict, evaluation)
        self.criterion = criterion
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.scaler = scaler
        self.rank, self.world_size = rank, world_size
        self.per_rank_batch = per_rank_batch  # images per process per micro-step
        self.accum_steps = cfg.train.accum_steps
        self.num_classes, self.ignore_index, self.normalization = num_classes, ignore_index, normalization
        self.labeled_dataset, self.unlabeled_dataset = labeled_dataset, unlabeled_dataset
        # Everything below is stepped and checkpointed by the loop, in insertion order.
        self.modules: dict[str, nn.Module] = {}  # extra plain modules (e.g. "discriminator")
        self.ddp_modules: list[nn.Module] = [model]  # modules whose gradient sync accumulation must skip
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.streams: dict[str, TrainStream] = {}

    # ----------------------------------------------------------------- inside a training step
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-step's loss: divided by the accumulation steps, scaled for fp16."""
        loss = loss / self.accum_steps
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """A (N, C, H, W) batch in the memory format the model runs in: channels_last when enabled."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, masks) of a batch on the device; images in channels_last when enabled."""
        images = self.layout(batch["image"].to(self.device, non_blocking=True))
        masks = batch.get("mask")
        if masks is not None:
            masks = masks.to(self.device, non_blocking=True)
        return images, masks

    # ----------------------------------------------------------------- after the micro-steps (the loop)
    def apply_updates(self) -> None:
        """Clip the model's gradients (optim.grad_clip), step every registered optimizer (through the grad
        scaler for fp16), zero their gradients, then advance the schedules. Called by the loop once per
        iteration, after every micro-step's ``backward``; benchmarks call it to time the real step."""
        scaler = self.scaler
        clip = self.cfg.optim.grad_clip
        if clip is not None:
            model_opt = self.optimizers["model"]
            if scaler is not None:
                scaler.unscale_(model_opt)
            torch.nn.utils.clip_grad_norm_([p for g in model_opt.param_groups for p in g["params"]], clip)
        for opt in self.optimizers.values():
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        for sched in self.schedulers.values():
            sched.step()

    # ----------------------------------------------------------------- registration (in Method.setup)
    def add_module(self, name: str, module: nn.Module, *, ddp: bool = True) -> nn.Module:
        """Register an extra network (checkpointed); returns the module to call (DDP-wrapped under torchrun)."""
        if name in self.modules or name == "model":
            raise ValueError(f"a module named {name!r} is already registered")
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.modules[name] = module
        if ddp and self.world_size > 1 and any(p.requires_grad for p in module.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids)
            self.ddp_modules.append(wrapped)
            return wrapped
        return module

    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer, scheduler: Any = "poly") -> None:
        """Register an optimizer the loop zeroes, steps (through the grad scaler) and checkpoints.

        ``scheduler``: "poly" (the run's poly schedule on this optimizer's own learning rates, without the
        ``optim.min_lr`` floor: see :meth:`poly_scheduler`), None, or any object with ``step()`` and ``state_dict()``.
        """
        if name in self.optimizers:
            raise ValueError(f"an optimizer named {name!r} is already registered")
        self.optimizers[name] = optimizer
        if scheduler == "poly":
            scheduler = self.poly_scheduler(optimizer)
        if scheduler is not None:
            self.schedulers[name] = scheduler

    def poly_scheduler(self, optimizer: torch.optim.Optimizer, *, min_lr: float = 0.0, base_lr: float | None = None):
        """The run's poly schedule (``optim.power``, ``optim.warmup_*`` over ``train.iterations``) on ``optimizer``:
        :func:`~semiseg.engine.schedule.poly_schedule`, the one builder for the model's optimizer and any other.

        ``optim.min_lr`` is not applied here by default: it is an absolute learning rate in the units of ``optim.lr``
        (the model's optimizer), and a floor of, say, 1e-4 meant for SGD at 2.5e-4 would stop an Adam discriminator
        at 1e-4 from decaying at all. The trainer passes it for the model's optimizer only; a method that wants a
        floor for its own optimizer passes its own ``min_lr``.
        """
        return poly_schedule(optimizer, self.cfg, min_lr=min_lr, base_lr=base_lr)

    def add_stream(self, name: str, dataset: Dataset, *, batch_size: int | None = None) -> TrainStream:
        """Register another endless, resumable, seeded batch stream (e.g. a second pass over labels)."""
        if name in self.streams:
            raise ValueError(f"a stream named {name!r} is already registered")
        stream = TrainStream(dataset, batch_size or self.per_rank_batch, seed=self.cfg.train.seed,
                             stream=len(self.streams), rank=self.rank, world_size=self.world_size,
                             num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        self.streams[name] = stream
        sampler = stream.sampler
        if sampler.repeats > 1 and self.rank == 0:
            print(f"note: the {name} images ({sampler.num_samples}) are fewer than one batch ({sampler.global_batch}): "
                  f"each batch repeats them, with other augmentations", flush=True)
        return stream


__all__ = ["TrainContext"]
