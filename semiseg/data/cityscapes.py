"""Cityscapes (19 evaluated classes, 255 = ignore) in its own layout, read without a conversion step.

    ROOT/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png       (leftImg8bit_trainvaltest.zip)
    ROOT/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png        (gtFine_trainvaltest.zip)

The ``*_labelIds.png`` masks store Cityscapes' 34 label ids; they are mapped to the 19 train ids while reading
(label_map "cityscapes": road 7 -> 0, ..., bicycle 33 -> 18, every other id ignored), so the download is used as it
is. ``masks="labelTrainIds"`` reads the ``*_gtFine_labelTrainIds.png`` files that cityscapesScripts'
createTrainIdLabelImgs writes (mmsegmentation's layout) instead, unmapped. Samples are named CITY_SEQ_FRAME, so
``--group-by _`` scores a run per city. ``root`` may also be a folder that holds ``cityscapes/``. The test split's
labels are not public (its gtFine masks are placeholders): predict it with ``semiseg predict``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import PairDataset, find_root, list_images
from .errors import DataError, option
from .palettes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .splits import sample_name

SPLITS = ("train", "val")
MASKS = {"labelIds": "cityscapes", "labelTrainIds": None}  # mask file kind -> the label_map it needs


def find_cityscapes_root(root: str) -> str:
    return find_root(root, ("leftImg8bit",), ("cityscapes", "Cityscapes"),
                     "no Cityscapes folder with leftImg8bit/ found",
                     "point the root at the folder that holds leftImg8bit/ and gtFine/ (unpack "
                     "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there)")


class CityscapesDataset(PairDataset):
    """Cityscapes fine annotations, one split. See the module docstring for the layout."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        masks: str = "labelIds",
        strict: bool = True,
        transform: Callable | None = None,
    ):
        if masks not in MASKS:
            raise DataError(f"unknown Cityscapes mask kind {masks!r}", None,
                            f"use {option('masks', 'labelIds')} (the download's) or {option('masks', 'labelTrainIds')}")
        super().__init__(classes=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE, ignore_index=255,
                         transform=transform, label_map=MASKS[masks])
        self.root = find_cityscapes_root(os.fspath(root))
        self.split = split
        if split == "test":
            raise DataError("the Cityscapes test labels are not public (its gtFine masks are placeholders)", self.root,
                            f"train on {option('split', 'train')} and evaluate on {option('split', 'val')}; predict "
                            "the test images with semiseg predict RUN leftImg8bit/test/CITY OUT")
        if split not in SPLITS:
            raise DataError(f"unknown Cityscapes split {split!r}", self.root, f"use one of {', '.join(SPLITS)}")
        image_root = os.path.join(self.root, "leftImg8bit", split)
        mask_root = os.path.join(self.root, "gtFine", split)
        for folder, archive in ((image_root, "leftImg8bit_trainvaltest.zip"), (mask_root, "gtFine_trainvaltest.zip")):
            if not os.path.isdir(folder):
                raise DataError(f"no {split} folder", folder, f"unpack {archive} into {self.root}")
        mask_suffix = f"_gtFine_{masks}.png"
        missing = []
        for city in sorted(d for d in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, d))):
            for image in list_images(os.path.join(image_root, city)):
                name = sample_name(image)  # CITY_SEQ_FRAME: the _leftImg8bit ending is not part of it
                mask = os.path.join(mask_root, city, name + mask_suffix)
                if not os.path.isfile(mask):
                    missing.append(mask)
                    continue
                self.names.append(name)
                self.image_paths.append(image)
                self.mask_paths.append(mask)
        if missing:
            fix = (f"unpack gtFine_trainvaltest.zip into {self.root}" if masks == "labelIds" else
                   "write them with cityscapesScripts' createTrainIdLabelImgs, or read the download's masks: "
                   f"{option('masks', 'labelIds')}")
            self.problems += [DataError("image has no mask", path, fix, kind="no_mask") for path in missing]
        self._finish_scan(strict, image_root)
