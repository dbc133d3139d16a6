"""CamVid (11 classes, 255 = void) in the layout ROOT/{train,val,test}/{images,labels} (see shared/data/camvid).

It is the folder dataset with the CamVid class names and SegNet colours; RGB colour labels in those
colours are decoded too.
"""

from __future__ import annotations

import os

from .errors import DataError
from .folder import FolderDataset

SPLITS = ("train", "val", "test")


def camvid(root, split: str = "train", **options) -> FolderDataset:
    root = os.fspath(root)
    if split not in SPLITS:
        raise DataError(f"unknown CamVid split {split!r}", root, f"use one of {', '.join(SPLITS)}")
    # Accept the split folder itself too (ROOT/train), as `semiseg data check ROOT/train` does.
    if not os.path.isdir(os.path.join(root, split)) and os.path.isdir(os.path.join(root, "images")):
        split = None
    options.setdefault("classes", "camvid")
    options.setdefault("image_dir", "images")
    options.setdefault("mask_dir", "labels")
    return FolderDataset(root, split, **options)
