"""A dataset from a folder of images and a folder of masks, matched by file stem.

Layout (directory names are found automatically, or given):

    ROOT/[SPLIT/]images/NAME.{jpg,png,tif,gif,...}    ROOT/[SPLIT/]masks|labels/NAME[SUFFIX].{png,gif,...}

Masks are class-index images (255 = ignore) unless a palette says how to read RGB colour masks, or
``binary=True`` says they are foreground masks stored as 0/255 (then ``ignore_value`` may mark ignored
pixels, and ``roi_dir`` names a folder of region-of-interest masks, e.g. a microscope's field of view,
outside which every pixel is ignored). Folders are never guessed between: when more than one folder
could hold the masks, the error lists them and asks. Without SPLIT folders, ``val_fraction`` holds out a
fixed part of the images as the split "val" (the rest is "train").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from .base import PairDataset, list_images, list_other_files
from .errors import DataError, option
from .io import COMMON_EXTENSIONS
from .palettes import PRESETS, VOC_IGNORE_COLOR, resolve_classes

IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt", "SegmentationClass")


def _split_folders(root: str, candidates: Sequence[str]) -> list[str]:
    """Subfolders of ``root`` that look like splits (they hold an image or mask folder), "train" first."""
    splits = sorted(d for d in os.listdir(root) if any(os.path.isdir(os.path.join(root, d, c)) for c in candidates))
    if "train" in splits:
        splits.remove("train")
        splits.insert(0, "train")
    return splits


def _describe(root: str, folder: str) -> str:
    files = list_images(os.path.join(root, folder))
    example = f", e.g. {os.path.basename(files[0])}" if files else ""
    return f"{folder}/ ({len(files)} image files{example})"


def _find_dir(root: str, given: str | None, candidates: Sequence[str], what: str, option_name: str) -> str:
    if given is not None:
        path = given if os.path.isabs(given) else os.path.join(root, given)
        if not os.path.isdir(path):
            raise DataError(f"{what} folder does not exist", path, f"check {option(option_name, given)}")
        return path
    found = [name for name in candidates if os.path.isdir(os.path.join(root, name))]
    if len(found) > 1:
        raise DataError(f"several folders could hold the {what}s: {', '.join(_describe(root, f) for f in found)}",
                        root, f"say which one: {option(option_name, found[0])}")
    if found:
        return os.path.join(root, found[0])
    splits = _split_folders(root, candidates)
    if splits:
        raise DataError(f"this folder holds the splits {', '.join(splits)}, not the {what} folder itself", root,
                        f"choose one: {option('split', splits[0])} or the path {os.path.join(root, splits[0])}")
    raise DataError(
        f"no {what} folder found (looked for {', '.join(candidates)})",
        root,
        f"use that layout, or name the folder: {option(option_name, 'FOLDER')}",
    )


def _find_mask_dir(root: str, given: str | None, image_dir: str, roi_dir: str | None = None) -> str:
    """The mask folder: given, or the one folder besides the images (and the region masks) that could hold
    masks; never a guess."""
    if given is not None:
        return _find_dir(root, given, MASK_DIRS, "mask", "mask_dir")
    others = sorted(d for d in os.listdir(root)
                    if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
                    and os.path.abspath(os.path.join(root, d)) != os.path.abspath(image_dir)
                    and (roi_dir is None or os.path.abspath(os.path.join(root, d)) != os.path.abspath(os.path.join(root, roi_dir)))
                    and list_images(os.path.join(root, d)))
    known = [d for d in others if d in MASK_DIRS]
    if len(others) == 1 and known:
        return os.path.join(root, known[0])
    if len(others) > 1:
        choices = " or ".join(option("mask_dir", d) for d in others[:4])
        raise DataError(
            f"several folders besides {os.path.basename(image_dir)}/ could hold the masks: "
            f"{', '.join(_describe(root, d) for d in others)}; semiseg does not guess which one holds the labels",
            root,
            f"name the folder of label masks: {choices}; a folder of region-of-interest masks "
            f"(e.g. a field of view) can mark the pixels outside it as ignored: {option('roi_dir', 'FOLDER')}",
        )
    if others:
        raise DataError(f"no mask folder found (looked for {', '.join(MASK_DIRS)}); the folder holds "
                        f"{_describe(root, others[0])}", root, f"if it holds the masks: {option('mask_dir', others[0])}")
    return _find_dir(root, None, MASK_DIRS, "mask", "mask_dir")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _common_suffix(stems: list[str]) -> str:
    """The ending all ``stems`` share, from a separator on ("_training" of 21_training, 22_training), or ""."""
    if len(stems) < 2:
        return ""
    tail = os.path.commonprefix([s[::-1] for s in stems])[::-1]
    cut = next((i for i, ch in enumerate(tail) if ch in "_-. "), None)
    return "" if cut is None else tail[cut:]


def _suffix_hint(image_stems: list[str], other_stems: list[str], image_suffix: str, other_suffix: str,
                 other_option: str) -> str | None:
    """Suffixes that would pair the two lists of stems by what is left (21_training <-> 21_manual1), as a fix."""
    a, b = _common_suffix(image_stems), _common_suffix(other_stems)
    keys_a = {s[: len(s) - len(a)] for s in image_stems}
    keys_b = {s[: len(s) - len(b)] for s in other_stems}
    if not (a or b) or not keys_a & keys_b:
        return None
    parts = ([option("image_suffix", a + image_suffix)] if a else []) + \
        ([option(other_option, b + other_suffix)] if b else [])
    return f"set {' and '.join(parts)}: the files then pair as {', '.join(sorted(keys_a & keys_b)[:3])}, ..."


class FolderDataset(PairDataset):
    """Images and masks matched by stem. See the module docstring for the layout.

    Args:
        root: dataset folder; if ``root/split`` exists it is used instead (so one root serves train/val).
        classes: class names, a preset name ("voc", "camvid", "cityscapes", "ade20k"), "a,b,c", a text file, or a count.
        palette: colours for display and for decoding RGB colour masks (preset name or (K, 3) colours).
            With a preset class list (e.g. "camvid") its palette is used for both unless given.
        binary: masks are 0/255 (or 0/1) foreground masks; 255 is read as class 1. Needs 2 classes.
        ignore_value: with ``binary``, the stored mask value that means "ignore" (e.g. 128).
        image_dir, mask_dir: the folders (default: found by name; an error lists them when several fit).
        mask_suffix: the part of a mask's stem after the image stem (e.g. "_mask", "_L").
        image_suffix: an ending of the image stems that is not part of the name masks are matched by (a retina
            set's 21_training.tif with mask 21_manual1.gif: image_suffix="_training", mask_suffix="_manual1").
        roi_dir, roi_suffix: region-of-interest masks matched like the masks; pixels outside (0) are ignored.
        require_masks: False lets images without a mask through as fully ignored (unlabeled) samples.
        match_size: None (a mask of another size is an error), "resize_mask" (resize masks with the image's
            aspect ratio to it, nearest neighbour) or "resize_image" (resize the image to its mask).
        image_range: (low, high) scale of 16-bit / float images (default: each image's own min..max).
        exif: apply the EXIF orientation of images and masks (as viewers and annotation tools do).
        label_map: stored mask values -> class indices while reading ({7: 0, 8: 1, 0: 255}), or a preset:
            "cityscapes" (label ids -> the 19 train ids) or "reduce_zero_label" (0 -> ignore, k -> k - 1: ADE20K).
            Values it does not list are kept (semiseg/data/label_map.py).
        val_fraction: without split folders, the fraction of images (fixed, seed 0) that form split "val";
            split "train" is the rest.
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
        ignore_value: int | None = None,
        image_dir: str | None = None,
        mask_dir: str | None = None,
        mask_suffix: str = "",
        image_suffix: str = "",
        roi_dir: str | None = None,
        roi_suffix: str = "",
        require_masks: bool = True,
        match_size: str | None = None,
        image_range=None,
        exif: bool = True,
        label_map=None,
        val_fraction: float | None = None,
        strict: bool = True,
        transform: Callable | None = None,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataError("dataset folder does not exist", root, f"check the path ({option('root')})")
        self.split = split
        self.split_dir: str | None = None  # ROOT/SPLIT when that folder exists, else None (a flat layout)
        if split and os.path.isdir(os.path.join(root, split)):
            root = self.split_dir = os.path.join(root, split)
        elif split:
            splits = [d for d in _split_folders(root, IMAGE_DIRS + MASK_DIRS) if d != split]
            if splits:  # a typo, or a split this dataset does not have: never fall back to the whole folder
                import difflib

                closest = (difflib.get_close_matches(split, splits, n=1, cutoff=0.5) or splits)[0]
                raise DataError(f"no split folder {split!r} here; the folder holds the splits {', '.join(splits)}",
                                root, f"use one of them, e.g. {option('split', closest)}")
        names, pal = resolve_classes(classes, palette)
        if binary and len(names) != 2:
            raise DataError(f"binary needs exactly 2 classes, got {len(names)}: {names}", root,
                            f"name the two classes, e.g. {option('classes', ['background', 'foreground'])}")
        # Decode RGB masks when the user gave a palette or chose a preset that has one.
        colour_source = palette is not None or (isinstance(classes, str) and classes.lower() in PRESETS)
        # VOC colour masks draw ignored pixels in the colormap's index-255 colour.
        voc_colours = "voc" in (str(classes).lower(), str(palette).lower())
        super().__init__(classes=names, palette=pal, ignore_index=ignore_index, transform=transform,
                         binary=binary, mask_palette=pal if colour_source else None,
                         ignore_colors=(VOC_IGNORE_COLOR,) if voc_colours else (), ignore_value=ignore_value,
                         match_size=match_size, image_range=image_range, exif=exif, label_map=label_map)
        self.root = root
        self.image_dir = _find_dir(root, image_dir, IMAGE_DIRS, "image", "image_dir")
        self.mask_dir = _find_mask_dir(root, mask_dir, self.image_dir, roi_dir)
        self.roi_dir = _find_dir(root, roi_dir, (), "region mask", "roi_dir") if roi_dir is not None else None
        self._scan(mask_suffix, require_masks, image_suffix)
        if self.roi_dir is not None:
            self._scan_regions(roi_suffix)
        if val_fraction is not None:
            self._hold_out(val_fraction)
        self._finish_scan(strict, root)

    def _scan(self, mask_suffix: str, require_masks: bool, image_suffix: str = "") -> None:
        masks: dict[str, str] = {}
        for path in list_images(self.mask_dir):
            stem = _stem(path)
            if mask_suffix:
                if not stem.endswith(mask_suffix):
                    continue
                stem = stem[: -len(mask_suffix)]
            if stem in masks:
                self.problems.append(DataError(f"two masks for sample {stem!r} (also {masks[stem]})", path,
                                               "keep one mask per image", kind="duplicate_mask"))
                continue
            masks[stem] = path
        # files with a mask's name but an extension PIL does not read: named in the error instead of ignored
        others: dict[str, str] = {}
        for path in list_other_files(self.mask_dir):
            others.setdefault(_stem(path), path)

        seen: dict[str, str] = {}
        missing: list[str] = []
        self._image_suffix = image_suffix
        for path in list_images(self.image_dir):
            stem = self._image_stem(path)
            if stem in seen:
                self.problems.append(DataError(f"two images with the stem {stem!r} (also {seen[stem]})", path,
                                               "rename or remove one: images are matched to masks by stem",
                                               kind="duplicate_image"))
                continue
            seen[stem] = path
            mask = masks.get(stem)
            if mask is None and require_masks:
                missing.append(path)
                continue
            self.names.append(stem)
            self.image_paths.append(path)
            self.mask_paths.append(mask)
        no_match = self._explain_missing(missing, masks, others, mask_suffix)

        for stem in sorted(set(masks) - set(seen)) if not no_match else []:  # (no_match already lists them)
            self.warnings.append(DataError("mask has no image (ignored)", masks[stem],
                                           f"add the image as {os.path.join(self.image_dir, stem)}.jpg or remove the mask",
                                           kind="no_image"))
        if not seen and not self.problems:
            self.problems.append(DataError("no images found", self.image_dir,
                                           f"put the images there ({COMMON_EXTENSIONS}, any format PIL reads) or set "
                                           f"{option('image_dir', 'FOLDER')}"))

    def _image_stem(self, path: str) -> str:
        stem, suffix = _stem(path), getattr(self, "_image_suffix", "")
        return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem

    def _explain_missing(self, missing: list[str], masks: dict[str, str], others: dict[str, str], suffix: str) -> bool:
        """One problem per image without a mask, saying what was found instead when something was; True when
        no image matched any mask (then one problem for the whole folder)."""
        if not missing:
            return False
        unlabeled = option("require_masks", False)
        if not self.names and masks and len(missing) > 1:
            # not a single pair: the names follow another pattern (e.g. 21_training.tif and 21_manual1.gif)
            shown_images = ", ".join(os.path.basename(p) for p in missing[:3])
            shown_masks = ", ".join(os.path.basename(p) for p in sorted(masks.values())[:3])
            stems = [self._image_stem(p) for p in missing]
            extras = {m[len(i):] for i in stems for m in masks if m.startswith(i) and m != i}
            if len(extras) == 1:  # mask = image name + an ending (21.jpg, 21_mask.png)
                hint = f"set {option('mask_suffix', extras.pop() + suffix)}"
            else:  # both carry an ending (21_training.tif, 21_manual1.gif)
                hint = _suffix_hint(stems, sorted(masks), self._image_suffix, suffix, "mask_suffix")
            hint = hint or ("rename the files so that a mask has its image's name (common endings are allowed: "
                            f"{option('image_suffix')}, {option('mask_suffix')})")
            self.problems.append(DataError(
                f"no image has a mask of the same name: {len(missing)} images ({shown_images}, ...) and {len(masks)} "
                f"masks ({shown_masks}, ...) in {self.mask_dir}; masks are matched to images by file name"
                + (f" + mask_suffix {suffix!r}" if suffix else ""), self.image_dir, hint, kind="no_match"))
            return True
        for path in missing:
            stem = self._image_stem(path)
            expected = os.path.join(self.mask_dir, stem + suffix + ".png")
            if stem + suffix in others:
                found = others[stem + suffix]
                self.problems.append(DataError(
                    f"image has no mask: {found} has its name, but {os.path.splitext(found)[1] or 'a file without extension'} "
                    f"is not an image format PIL reads (accepted: {COMMON_EXTENSIONS}, ...)", path,
                    f"convert the mask to PNG, remove the image, or set {unlabeled} to use it as unlabeled",
                    kind="mask_format"))
                continue
            longer = sorted(s for s in masks if s.startswith(stem) and s != stem)
            if longer:
                extra = longer[0][len(stem):]
                self.problems.append(DataError(f"image has no mask {os.path.basename(expected)}, but "
                                               f"{os.path.basename(masks[longer[0]])} is there", path,
                                               f"if masks are named NAME{extra}: {option('mask_suffix', extra)}",
                                               kind="no_mask"))
                continue
            self.problems.append(DataError(
                "image has no mask", path,
                f"add {expected} (or any image format), remove the image, or set {unlabeled} to use it as unlabeled",
                kind="no_mask"))
        return False

    def _scan_regions(self, suffix: str) -> None:
        regions = {}
        for path in list_images(self.roi_dir):
            stem = _stem(path)
            if not suffix or stem.endswith(suffix):
                regions[stem[: len(stem) - len(suffix)] if suffix else stem] = path
        self.region_paths = []
        if regions and len(self.names) > 1 and not set(regions) & set(self.names):
            hint = _suffix_hint(list(self.names), sorted(regions), "", suffix, "roi_suffix")
            if hint and "image_suffix" not in hint:  # (the images' names are settled by now)
                self.problems.append(DataError(
                    f"no image has a region mask of the same name (images {', '.join(self.names[:3])}, ...; region "
                    f"masks {', '.join(sorted(regions)[:3])}, ...)", self.roi_dir, hint, kind="no_region"))
                self.region_paths = [None] * len(self.names)
                return
        for name, image in zip(self.names, self.image_paths):
            region = regions.get(name)
            if region is None:
                self.problems.append(DataError("image has no region mask", image,
                                               f"add {os.path.join(self.roi_dir, name + suffix)}.png (non-zero = pixels "
                                               f"to use) or check {option('roi_suffix')}", kind="no_region"))
            self.region_paths.append(region)

    def _hold_out(self, fraction: float) -> None:
        """Split a flat folder: a fixed ``fraction`` of the names (seed 0) is split "val", the rest "train"."""
        if not 0 < fraction < 1:
            raise DataError(f"val_fraction must be between 0 and 1, got {fraction}", self.root,
                            f"e.g. {option('val_fraction', 0.2)}")
        if self.split_dir is not None:
            raise DataError(f"val_fraction holds out images of a folder without split folders, but {self.root} is "
                            f"the split folder {self.split!r}", self.root,
                            f"remove {option('val_fraction')}: the split folders already separate the images")
        if self.split not in ("train", "val"):
            raise DataError(f"with val_fraction the splits are 'train' and 'val', not {self.split!r}", self.root,
                            f"use {option('split', 'val')} or 'train'")
        import numpy as np

        order = np.random.default_rng(0).permutation(len(self.names))
        held = set(order[: max(1, round(fraction * len(self.names)))].tolist())
        keep = [i for i in range(len(self.names)) if (i in held) == (self.split == "val")]
        self.names = [self.names[i] for i in keep]
        self.image_paths = [self.image_paths[i] for i in keep]
        self.mask_paths = [self.mask_paths[i] for i in keep]
        if self.region_paths is not None:
            self.region_paths = [self.region_paths[i] for i in keep]
