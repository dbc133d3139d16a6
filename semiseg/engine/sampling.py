"""Reproducible, resumable data streams for training, and sharding for evaluation.

Training data order and augmentation are pure functions of (seed, epoch, position in the epoch):

* epoch ``e`` visits the samples in a permutation drawn from ``(seed, stream, e)``;
* the sample at global position ``p`` of that epoch is loaded with torch/numpy/random seeded from
  ``(seed, stream, e, p)``, so its random crop, scale and flip do not depend on which process or
  DataLoader worker loads it, nor on what was loaded before.

Hence a stream is resumed from two integers (epoch, batches consumed in it), the augmentations after a
resume are the ones a straight run would have drawn, and a DDP run whose ranks split each global batch
sees exactly the images of a single-process run with the same global batch. A global batch ``j`` of
size ``G = per_rank * world`` is ``perm[j*G : (j+1)*G]``; rank ``r`` takes the slice
``[j*G + r*per_rank, j*G + (r+1)*per_rank)``. Incomplete last batches are dropped (every optimizer step
sees a full batch, as DistributedSampler(drop_last=True) would).

A dataset smaller than one global batch (8 labeled images, batch 16) is repeated within the epoch instead of
refused: the epoch is then ``ceil(G / n)`` permutations back to back (drawn one after the other from the epoch's
generator), so an image can appear more than once in a batch, each time with its own augmentation (its own
position seed), as FixMatch-style code repeats its labeled list to fill its batches. Datasets of at least one
batch are unaffected (one permutation, the same as before this existed).
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _mix(*keys: int) -> int:
    """A well-spread 63-bit seed from a few integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) % (2**63) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded under fixed RNG seeds.

    The caller's RNG states are restored afterwards, so loading in the main process (num_workers=0)
    leaves the training RNG (dropout etc.) untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator is all fork_rng saves and data loading draws from; torch.manual_seed would also
                # visit every accelerator's generators, ~0.4 ms per item (2% of a 64 px quickstart step)
                torch.default_generator.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % (2**32))
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's batches of ``(index, seed)`` for one epoch, starting at batch ``start``."""

    def __init__(self, num_samples: int, per_rank: int, *, seed: int, stream: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        self.num_samples = num_samples
        self.per_rank = per_rank
        self.global_batch = per_rank * world_size
        self.seed, self.stream, self.rank, self.shuffle = seed, stream, rank, shuffle
        self.epoch = 0
        self.start = 0
        if num_samples < 1:
            raise ValueError("the dataset has no samples to train on")
        # permutations per epoch: 1 unless the dataset is smaller than a batch (module docstring)
        self.repeats = -(-self.global_batch // num_samples)

    def __len__(self) -> int:
        """Batches per epoch (the number of full global batches)."""
        return self.num_samples * self.repeats // self.global_batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def permutation(self, epoch: int) -> list[int]:
        """The epoch's order of sample indices (``repeats`` permutations back to back)."""
        if not self.shuffle:
            return list(range(self.num_samples)) * self.repeats
        g = torch.Generator().manual_seed(_mix(self.seed, self.stream, epoch))
        return [i for _ in range(self.repeats) for i in torch.randperm(self.num_samples, generator=g).tolist()]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.permutation(self.epoch)
        for j in range(self.start, len(self)):
            first = j * self.global_batch + self.rank * self.per_rank
            yield [(perm[p], _mix(self.seed, self.stream, self.epoch, p)) for p in range(first, first + self.per_rank)]


class TrainStream:
    """An endless iterator of training batches whose position is a checkpointable (epoch, batch) pair."""

    def __init__(self, dataset: Dataset, per_rank: int, *, seed: int, stream: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, pin_memory: bool = False, shuffle: bool = True):
        self.sampler = EpochBatchSampler(len(dataset), per_rank, seed=seed, stream=stream, rank=rank,
                                         world_size=world_size, shuffle=shuffle)
        # persistent workers survive epoch ends; the batch sampler is read anew by each epoch's iterator
        # A private generator: starting an iterator draws a worker base seed from it, which would otherwise
        # come from the global RNG and shift dropout etc. differently in a straight and a resumed run.
        self.loader = DataLoader(SeededDataset(dataset), batch_sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 generator=torch.Generator())
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already handed out
        self._iterator: Iterator | None = None

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> Any:
        if self.batch >= len(self.sampler):
            self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self.sampler.set_epoch(self.epoch, self.batch)
            self._iterator = iter(self.loader)
        out = next(self._iterator)
        self.batch += 1
        return out

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._iterator = None  # the next batch starts a fresh iterator at (epoch, batch)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` without padding, so a sharded evaluation counts every sample once
    (DistributedSampler pads with repeats, which would bias the confusion matrix)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


__all__ = ["SeededDataset", "EpochBatchSampler", "TrainStream", "ShardSampler"]
