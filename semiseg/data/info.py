"""What the rest of semiseg needs to know about a dataset, read from it in one place: :class:`DatasetInfo`.

The engine (training, checkpoints), evaluation, prediction and export take a ``DatasetInfo`` instead of asking
the dataset object for ``ignore_index``, ``palette`` or ``classes`` themselves: a dataset plugged in through
``data.kind=package.module:function`` may lack the optional attributes, and the defaults for them (ignore 255, the
default palette) are decided here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

IGNORE_INDEX = 255  # the label of pixels without a class, unless a dataset says otherwise


@dataclass
class DatasetInfo:
    """The facts of a dataset as plain values (they go into checkpoints): class names, their colours, the ignore label,
    and the input normalisation the model of the run expects (``""`` until the model is known)."""

    classes: list[str]
    palette: list[list[int]]
    num_classes: int
    ignore_index: int
    normalization: str

    @classmethod
    def of(cls, dataset, normalization: str = "") -> DatasetInfo:
        """Read ``dataset``'s classes, palette (default: :func:`~semiseg.data.palettes.default_palette`) and ignore
        label (default :data:`IGNORE_INDEX`)."""
        palette = getattr(dataset, "palette", None)
        if palette is None:
            from semiseg.data.palettes import default_palette

            palette = default_palette(dataset.num_classes)
        return cls(list(dataset.classes), np.asarray(palette, dtype=np.uint8).tolist(), int(dataset.num_classes),
                   int(getattr(dataset, "ignore_index", IGNORE_INDEX)), normalization)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def image_sizes(dataset) -> Iterator[tuple[int, int]] | None:
    """The (height, width) of each image of ``dataset`` (a torch ``Subset`` of one too), from file headers or the
    dataset's fixed ``size``, without decoding pixels; ``None`` when the dataset does not say (a plugged-in dataset
    without ``image_paths``), so the caller assumes the worst."""
    from torch.utils.data import Subset

    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    paths = getattr(dataset, "image_paths", None)
    if paths is not None and len(paths) == len(dataset):
        from semiseg.data.io import header_size

        exif = getattr(dataset, "exif", True)
        chosen = [paths[i] for i in indices] if indices is not None else paths
        return ((h, w) for w, h, _, _ in (header_size(path, exif=exif) for path in chosen))
    size = getattr(dataset, "size", None)  # the synthetic datasets: every image the same (height, width)
    if isinstance(size, tuple) and len(size) == 2:
        count = len(indices) if indices is not None else len(dataset)
        return iter([(int(size[0]), int(size[1]))] * count)
    return None


__all__ = ["DatasetInfo", "IGNORE_INDEX", "image_sizes"]
