"""A dataset from a folder of images and a folder of masks, matched by file stem.

Layout (directory names are found automatically, or given):

    ROOT/[SPLIT/]images/NAME.{jpg,png,...}    ROOT/[SPLIT/]masks|labels/NAME[SUFFIX].png

Masks are class-index images (255 = ignore) unless a palette says how to read RGB colour masks, or
``binary=True`` says they are foreground masks stored as 0/255.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from .base import PairDataset, list_images
from .errors import DataError
from .palettes import PRESETS, VOC_IGNORE_COLOR, resolve_classes

IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt", "SegmentationClass")


def _find_dir(root: str, given: str | None, candidates: Sequence[str], what: str, option: str) -> str:
    if given is not None:
        path = given if os.path.isabs(given) else os.path.join(root, given)
        if not os.path.isdir(path):
            raise DataError(f"{what} folder does not exist", path, f"check the {option} option")
        return path
    for name in candidates:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    splits = sorted(d for d in os.listdir(root) if any(os.path.isdir(os.path.join(root, d, c)) for c in candidates))
    if splits:
        if "train" in splits:
            splits.remove("train")
            splits.insert(0, "train")
        raise DataError(f"this folder holds the splits {', '.join(splits)}, not the {what} folder itself", root,
                        f"choose one: split='{splits[0]}' (CLI --split {splits[0]}) or the path {os.path.join(root, splits[0])}")
    raise DataError(
        f"no {what} folder found (looked for {', '.join(candidates)})",
        root,
        f"use that layout, or name the folder with {option}=... (CLI --{option.replace('_', '-')})",
    )


class FolderDataset(PairDataset):
    """Images and masks matched by stem. See the module docstring for the layout.

    Args:
        root: dataset folder; if ``root/split`` exists it is used instead (so one root serves train/val).
        classes: class names, a preset name ("voc", "camvid"), "a,b,c", a text file, or a count.
        palette: colours for display and for decoding RGB colour masks (preset name or (K, 3) colours).
            With a preset class list (e.g. "camvid") its palette is used for both unless given.
        binary: masks are 0/255 (or 0/1) foreground masks; 255 is read as class 1. Needs 2 classes.
        mask_suffix: the part of a mask's stem after the image stem (e.g. "_mask", "_L").
        require_masks: False lets images without a mask through as fully ignored (unlabeled) samples.
        strict: False records scan problems in ``self.problems`` instead of raising (used by the checker).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        classes=None,
        palette=None,
        ignore_index: int = 255,
        binary: bool = False,
        image_dir: str | None = None,
        mask_dir: str | None = None,
        mask_suffix: str = "",
        require_masks: bool = True,
        strict: bool = True,
        transform: Callable | None = None,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataError("dataset folder does not exist", root, "check the path")
        if split and os.path.isdir(os.path.join(root, split)):
            root = os.path.join(root, split)
        names, pal = resolve_classes(classes, palette)
        if binary and len(names) != 2:
            raise DataError(f"binary=True needs exactly 2 classes, got {len(names)}", root,
                            "use classes='background,foreground' (or your two names)")
        # Decode RGB masks when the user gave a palette or chose a preset that has one.
        colour_source = palette is not None or (isinstance(classes, str) and classes.lower() in PRESETS)
        # VOC colour masks draw ignored pixels in the colormap's index-255 colour.
        voc_colours = "voc" in (str(classes).lower(), str(palette).lower())
        super().__init__(classes=names, palette=pal, ignore_index=ignore_index, transform=transform,
                         binary=binary, mask_palette=pal if colour_source else None,
                         ignore_colors=(VOC_IGNORE_COLOR,) if voc_colours else ())
        self.root = root
        self.image_dir = _find_dir(root, image_dir, IMAGE_DIRS, "image", "image_dir")
        self.mask_dir = _find_dir(root, mask_dir, MASK_DIRS, "mask", "mask_dir")
        self._scan(mask_suffix, require_masks)
        self._finish_scan(strict, root)

    def _scan(self, mask_suffix: str, require_masks: bool) -> None:
        masks: dict[str, str] = {}
        for path in list_images(self.mask_dir):
            stem = os.path.splitext(os.path.basename(path))[0]
            if mask_suffix:
                if not stem.endswith(mask_suffix):
                    continue
                stem = stem[: -len(mask_suffix)]
            if stem in masks:
                self.problems.append(DataError(f"two masks for sample {stem!r} (also {masks[stem]})", path,
                                               "keep one mask per image"))
                continue
            masks[stem] = path

        seen: dict[str, str] = {}
        for path in list_images(self.image_dir):
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem in seen:
                self.problems.append(DataError(f"two images with the stem {stem!r} (also {seen[stem]})", path,
                                               "rename or remove one: images are matched to masks by stem"))
                continue
            seen[stem] = path
            mask = masks.get(stem)
            if mask is None and require_masks:
                expected = os.path.join(self.mask_dir, stem + mask_suffix + ".png")
                self.problems.append(DataError(
                    "image has no mask", path,
                    f"add {expected}, remove the image, or pass require_masks=False to use it as unlabeled"))
                continue
            self.names.append(stem)
            self.image_paths.append(path)
            self.mask_paths.append(mask)

        for stem in sorted(set(masks) - set(seen)):
            self.warnings.append(DataError("mask has no image (ignored)", masks[stem],
                                           f"add the image as {os.path.join(self.image_dir, stem)}.jpg or remove the mask"))
        if not seen and not self.problems:
            self.problems.append(DataError("no images found", self.image_dir,
                                           "put the images there (jpg, png, bmp, tif, webp) or set image_dir"))
