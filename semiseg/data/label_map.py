"""Stored mask values -> class indices while reading: the ``label_map`` option of the file datasets.

Some datasets store ids that are not the class indices a model trains on: Cityscapes' ``*_gtFine_labelIds.png``
hold 34 label ids of which 19 are evaluated (road is 7, car 26), ADE20K stores "other" as 0 and its 150 classes as
1..150. A ``label_map`` {stored value: class index} applies while the masks are read, so no converted copy of the
dataset is needed (mmsegmentation asks for one made by a script first). Values the map does not list are kept as
stored and then checked like any mask value; map a value to the ignore index (255) to leave its pixels out.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .errors import DataError, option
from .palettes import CITYSCAPES_LABEL_IDS, CITYSCAPES_NUM_LABEL_IDS


def _cityscapes(num_classes: int) -> dict[int, int]:
    """Cityscapes label ids -> train ids: the 19 evaluated classes, every other id 0..33 ignored."""
    mapping = {label_id: 255 for label_id in range(CITYSCAPES_NUM_LABEL_IDS)}
    mapping.update({label_id: train_id for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS)})
    return mapping


def _reduce_zero_label(num_classes: int) -> dict[int, int]:
    """0 (ADE20K's "other") -> ignore, k -> k - 1 for the ``num_classes`` classes (mmsegmentation's
    ``reduce_zero_label``); larger values are kept, so a mask holding one is reported with its file."""
    return {0: 255, **{value: value - 1 for value in range(1, min(num_classes, 254) + 1)}}


PRESETS = {"cityscapes": _cityscapes, "reduce_zero_label": _reduce_zero_label}


def _as_int(value, what: str) -> int:
    """An int, a numpy integer or a digit string (YAML keys) as an int; anything else (bools, floats) is an error."""
    if not isinstance(value, bool) and isinstance(value, (int, str, np.integer)):
        with contextlib.suppress(ValueError):
            return int(value)
    raise DataError(f"label_map {what} {value!r} is not an integer", None,
                    f"map stored values to class indices, e.g. {option('label_map', {7: 0, 8: 1})}")


def _mapping(label_map, num_classes: int, ignore_index: int) -> dict[int, int]:
    """``label_map`` (a preset name or a dict) as a checked {stored value: class index or ignore_index}."""
    if isinstance(label_map, str):
        if label_map.lower() not in PRESETS:
            raise DataError(f"unknown label_map preset {label_map!r}", None,
                            f"use one of {', '.join(PRESETS)}, or a mapping {option('label_map', {7: 0, 8: 1})}")
        label_map = PRESETS[label_map.lower()](num_classes)
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"label_map must be a preset name or a non-empty mapping, got {label_map!r}", None,
                        f"e.g. {option('label_map', 'cityscapes')} or {option('label_map', {7: 0, 8: 1})}")
    mapping = {}
    for stored, target in label_map.items():
        stored, target = _as_int(stored, "value"), _as_int(target, "class")
        if not 0 <= stored <= 255:
            raise DataError(f"label_map maps the stored value {stored}, but masks store 0..255", None,
                            f"map values 0..255 ({option('label_map')})")
        if not (0 <= target < num_classes or target == ignore_index):
            raise DataError(f"label_map maps {stored} to {target}, which is neither a class (0..{num_classes - 1}) "
                            f"nor the ignore index {ignore_index}", None,
                            f"map every value to a class index or to {ignore_index} ({option('label_map')}); "
                            "a preset needs its own class list (label_map: cityscapes goes with classes: cityscapes)")
        mapping[stored] = target
    return mapping


def label_lut(label_map, num_classes: int, ignore_index: int = 255) -> np.ndarray | None:
    """A 256-entry uint8 table (``lut[stored] = class``) for ``label_map``: None, a preset name
    (``cityscapes``, ``reduce_zero_label``) or a dict {stored value: class index or ignore_index}."""
    if label_map is None:
        return None
    lut = np.arange(256, dtype=np.uint8)
    for stored, target in _mapping(label_map, num_classes, ignore_index).items():
        lut[stored] = target
    return lut


def stored_values_lut(label_map, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The inverse of :func:`label_lut`, ``lut[class] = stored value``, for writing predictions in a dataset's own
    values (Cityscapes' evaluation server takes label ids). A class the map does not produce keeps its index; a class
    that several stored values map to is refused (the inverse would have to choose one)."""
    sources: dict[int, list[int]] = {}
    for stored, target in _mapping(label_map, num_classes, ignore_index).items():
        if target != ignore_index:
            sources.setdefault(target, []).append(stored)
    inverse = np.arange(256, dtype=np.uint8)
    for target, stored in sorted(sources.items()):
        if len(stored) > 1:
            raise DataError(f"label_map maps the stored values {stored} all to class {target}: it has no inverse", None,
                            "write class indices instead (leave the option out)")
        inverse[target] = stored[0]
    return inverse
