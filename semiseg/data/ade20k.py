"""ADE20K (the SceneParsing benchmark, 150 classes) in its own layout, read as downloaded.

    ROOT/images/{training,validation}/ADE_train_00000001.jpg           (ADEChallengeData2016.zip)
    ROOT/annotations/{training,validation}/ADE_train_00000001.png      stored values 0 ("other") and 1..150

It is the folder dataset with ADE20K's class names and label_map "reduce_zero_label" (0 -> ignore, k -> class
k - 1), mmsegmentation's reading of the same files. Splits "train" and "val" (or the folders' own names, "training"
and "validation"). ``root`` may also be the folder that holds ``ADEChallengeData2016/``.
"""

from __future__ import annotations

import os

from .errors import DataError, option
from .base import find_root
from .folder import FolderDataset

SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
FOLDER = "ADEChallengeData2016"


def find_ade20k_root(root: str) -> str:
    return find_root(root, (os.path.join("images", "training"), "annotations"), (FOLDER,),
                     "no ADE20K folder with images/training/ and annotations/ found",
                     f"point the root at {FOLDER} (unpack ADEChallengeData2016.zip), or the folder that holds it")


def ade20k(root, split: str = "train", **options) -> FolderDataset:
    root = find_ade20k_root(os.fspath(root))
    if split not in SPLITS:
        raise DataError(f"unknown ADE20K split {split!r}", root, f"use {option('split', 'train')} or "
                                                                  f"{option('split', 'val')}")
    options.setdefault("classes", "ade20k")
    options.setdefault("label_map", "reduce_zero_label")
    return FolderDataset(root, None, image_dir=os.path.join("images", SPLITS[split]),
                         mask_dir=os.path.join("annotations", SPLITS[split]), **options)
