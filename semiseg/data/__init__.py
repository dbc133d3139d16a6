"""Datasets, transforms, palettes and labeled/unlabeled splits (contract: docs/internals.md, "Data").

``build_dataset(kind, root, split, transform=..., **options)`` is the one entry point; kinds:

    synthetic   built-in procedural scenes, no files (root is ignored)
    synthetic_thin  built-in thin curvy vessels/cracks, binary (a thin-structure task), no files
    voc         PASCAL VOC 2012, VOCdevkit layout, SegmentationClass masks
    voc_aug     VOC 2012 with SBD SegmentationClassAug masks (split "train" = train_aug, 10,582 images)
    folder      ROOT/[SPLIT/]images + masks|labels matched by stem (options: classes, palette, binary, ...)
    camvid      ROOT/{train,val,test}/{images,labels}, 11 classes
    cityscapes  ROOT/{leftImg8bit,gtFine}/{train,val}/CITY/..., 19 classes (label ids mapped while reading)
    ade20k      ROOT/{images,annotations}/{training,validation}, 150 classes (0 = "other" ignored)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .errors import DataError
from .info import DatasetInfo
from .loaders import InfiniteLoader

# kind -> "module:builder"; builders take (root, split, *, transform, **options). Imported on use.
DATASETS: dict[str, str] = {
    "synthetic": "semiseg.data.synthetic:_build",
    "synthetic_thin": "semiseg.data.synthetic_thin:_build",
    "voc": "semiseg.data.voc:_build",
    "voc_aug": "semiseg.data.voc:_build_aug",
    "folder": "semiseg.data.folder:FolderDataset",
    "camvid": "semiseg.data.camvid:camvid",
    "cityscapes": "semiseg.data.cityscapes:CityscapesDataset",
    "ade20k": "semiseg.data.ade20k:ade20k",
}


def _valid_options(builder) -> list[str]:
    """The options a dataset builder takes (a builder passing **options on: the folder dataset's)."""
    import inspect

    params = inspect.signature(builder).parameters
    names = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and n not in ("self", "root", "split"))]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        from .folder import FolderDataset

        names += [n for n in _valid_options(FolderDataset) if n not in names]
    return [n for n in names if n not in ("transform", "strict")]


def build_dataset(kind: str, root=None, split: str = "train", *, transform: Callable | None = None, **options):
    """Build a dataset by kind (see the module docstring); options go to that kind's class."""
    from .errors import options_key

    if kind not in DATASETS:
        raise DataError(f"unknown dataset kind {kind!r}", None, f"use one of {', '.join(DATASETS)}")
    if root is None and not kind.startswith("synthetic"):
        raise DataError(f"dataset kind {kind!r} needs a root folder", None, "pass root=PATH (CLI: the dataset path)")
    module_name, _, attr = DATASETS[kind].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    try:
        return builder(root, split, transform=transform, **options)
    except TypeError as e:  # an option this kind does not have: say which kind and what it takes
        if "unexpected keyword" in str(e):
            bad = str(e).rsplit("argument", 1)[-1].strip(" '\"")
            valid = _valid_options(builder)
            raise DataError(f"dataset kind {kind!r} has no option {bad!r} ({options_key()}.{bad})", None,
                            f"the valid keys of {options_key()}: {', '.join(valid)}") from None
        raise


__all__ = ["DATASETS", "DataError", "DatasetInfo", "InfiniteLoader", "build_dataset"]
