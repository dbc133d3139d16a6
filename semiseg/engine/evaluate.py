"""The one evaluation routine, shared by ``semiseg eval`` and the evaluations during training.

Whole-image inference: the normalised image goes through the model at its own size and the argmax of
the logits is compared with the mask. (Sliding-window and multi-scale inference come with inference.py.)
Under DDP each process evaluates its shard of the dataset and the confusion matrices are summed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from semiseg.engine import distributed as dist
from semiseg.engine.precision import autocast
from semiseg.engine.sampling import ShardSampler


def make_eval_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """A loader over this process's shard of ``dataset`` (the whole dataset without DDP)."""
    sampler = ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    # generator=: starting the loader must not consume the global RNG (exact resume, see sampling.py)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator())


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, *, precision: str = "fp32",
                   channels_last: bool = False) -> torch.Tensor:
    """Whole-image logits in float32 for a normalised batch already on the model's device."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(precision, images.device):
        logits = model(images)
    return logits.float()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_classes: int, *, device: torch.device | str = "cpu",
             precision: str = "fp32", channels_last: bool = False, ignore_index: int = 255,
             progress: bool = False):
    """Run ``model`` over ``loader`` and return the (all-reduced) ``ConfusionMatrix``.

    The model is put in eval mode and returned to its previous mode afterwards.
    """
    from semiseg.metrics import ConfusionMatrix

    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    batches = loader
    if progress and dist.is_main():
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    try:
        for batch in batches:
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            logits = predict_logits(model, images, precision=precision, channels_last=channels_last)
            cm.update(logits.argmax(1), masks)
    finally:
        model.train(was_training)
    cm.all_reduce()
    return cm


__all__ = ["make_eval_loader", "predict_logits", "evaluate"]
