"""What the rest of semiseg needs to know about a dataset, read from it in one place: :class:`DatasetInfo`.

The engine (training, checkpoints), evaluation, prediction and export take a ``DatasetInfo`` instead of asking
the dataset object for ``ignore_index``, ``palette`` or ``classes`` themselves: a dataset plugged in through
``data.kind=package.module:function`` may lack the optional attributes, and the defaults for them (ignore 255, the
default palette) are decided here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

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


__all__ = ["DatasetInfo", "IGNORE_INDEX"]
