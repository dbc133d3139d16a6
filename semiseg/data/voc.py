"""PASCAL VOC 2012 segmentation, in its own layout, optionally with the SBD augmentation.

    VOCdevkit/VOC2012/JPEGImages/ID.jpg
    VOCdevkit/VOC2012/SegmentationClass/ID.png          palette PNGs, read as indices (255 = void border)
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/ID.png       SBD-augmented masks (index PNGs), kind "voc_aug"
    train_aug.txt (10,582 ids) in ImageSets/SegmentationAug/, ImageSets/Segmentation/ or the root
    (``semiseg data sbd`` writes both from SBD's .mat files: semiseg.data.sbd)

``root`` may be the VOCdevkit folder, the VOC2012 folder, or a folder that contains VOCdevkit.
Masks converted to RGB colour images are decoded through the VOC colormap.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import PairDataset, find_root
from .errors import DataError
from .palettes import VOC_CLASSES, VOC_IGNORE_COLOR, VOC_PALETTE
from .splits import read_names


def find_voc_root(root: str) -> str:
    return find_root(root, ("JPEGImages",), ("VOC2012", os.path.join("VOCdevkit", "VOC2012")),
                     "no VOC2012 folder with JPEGImages found",
                     "point root at VOCdevkit/VOC2012 (or VOCdevkit, or the folder that contains it)")


class VOCSegmentation(PairDataset):
    """VOC 2012 (21 classes, 255 = ignore). ``aug=True``: SegmentationClassAug masks; split "train" reads train_aug."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        aug: bool = False,
        list_file: str | os.PathLike | None = None,
        strict: bool = True,
        transform: Callable | None = None,
    ):
        super().__init__(classes=VOC_CLASSES, palette=VOC_PALETTE, ignore_index=255, transform=transform,
                         mask_palette=VOC_PALETTE, ignore_colors=(VOC_IGNORE_COLOR,))
        self.root = find_voc_root(os.fspath(root))
        self.split = split
        mask_dir = os.path.join(self.root, "SegmentationClassAug" if aug else "SegmentationClass")
        if not os.path.isdir(mask_dir):
            raise DataError("mask folder does not exist", mask_dir,
                            "build it from the SBD download: semiseg data sbd benchmark_RELEASE VOCdevkit (or unpack a SegmentationClassAug into VOC2012)" if aug else "unpack the VOC2012 segmentation masks")
        list_path = os.fspath(list_file) if list_file is not None else self._find_list(split, aug)
        ids = read_names(list_path)
        if not ids:
            self.problems.append(DataError("the split list is empty", list_path, "list one image id per line"))
        for name in ids:
            image = os.path.join(self.root, "JPEGImages", name + ".jpg")
            mask = os.path.join(mask_dir, name + ".png")
            if not os.path.isfile(image):
                self.problems.append(DataError("image listed in the split does not exist", image,
                                               f"restore it or remove {name} from {list_path}"))
            elif not os.path.isfile(mask):
                self.problems.append(DataError("image has no mask", mask,
                                               f"restore the mask or remove {name} from {list_path}"))
            else:
                self.names.append(name)
                self.image_paths.append(image)
                self.mask_paths.append(mask)
        self._finish_scan(strict, list_path)

    def _find_list(self, split: str, aug: bool) -> str:
        names = [f"{split}_aug.txt", f"{split}.txt"] if aug and split == "train" else [f"{split}.txt"]
        folders = ["ImageSets/SegmentationAug", "ImageSets/Segmentation", "."]
        tried = []
        for name in names:  # train_aug.txt anywhere beats train.txt
            for folder in folders:
                path = os.path.normpath(os.path.join(self.root, folder, name))
                tried.append(path)
                if os.path.isfile(path):
                    return path
        raise DataError(f"no list for split {split!r}; looked for {', '.join(tried)}", self.root,
                        "use split='train', 'val' or 'trainval', or pass list_file=...")


def _build(root, split, **options) -> VOCSegmentation:
    return VOCSegmentation(root, split, **options)


def _build_aug(root, split, **options) -> VOCSegmentation:
    return VOCSegmentation(root, split, aug=True, **options)
