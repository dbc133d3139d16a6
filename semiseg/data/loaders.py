"""A DataLoader that never raises StopIteration, for the unlabeled stream of semi-supervised training."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import DataError


class InfiniteLoader:
    """Cycle ``loader`` forever: ``next(it)`` starts a new epoch when the old one ends.

    Each new epoch calls ``sampler.set_epoch(epoch)`` when the sampler has it (DistributedSampler), so
    shuffling differs between epochs. An empty loader is an error instead of an endless loop.
    """

    def __init__(self, loader, start_epoch: int = 0):
        self.loader = loader
        self.epoch = start_epoch
        self._iterator: Iterator | None = None

    def _start_epoch(self) -> None:
        for sampler in (getattr(self.loader, "sampler", None), getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
                break
        self._iterator = iter(self.loader)

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self):
        if self._iterator is None:
            self._start_epoch()
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            try:
                return next(self._iterator)
            except StopIteration:
                raise DataError("the loader yields no batches", None,
                                "the dataset or split is empty, or drop_last=True with fewer samples than the batch size") from None

    def __len__(self) -> int:
        """Batches per epoch of the wrapped loader (the stream itself is endless)."""
        return len(self.loader)
