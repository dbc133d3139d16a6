"""What every file-backed dataset shares: a list of (name, image, mask) paths and one way to read them.

Subclasses (folder, VOC) only find the files. Reading, validation and the sample dict live here so the
datasets and ``semiseg data check`` agree on what a good sample is. Problems found while scanning
(an image without a mask, two images with one stem, ...) are collected as DataError objects: a strict
dataset raises them all at once (grouped: 300 files with one problem are one entry), a non-strict one
keeps them in ``problems`` for the checker.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .errors import DataError, Problem, current_style, format_problems, option, option_style
from .io import (IMAGE_EXTENSIONS, check_mask_values, looks_like_binary_0_255, read_image, read_mask, read_region,
                 warn_binary_0_255)
from .label_map import label_lut

MATCH_SIZE = (None, "resize_mask", "resize_image")


def to_sample(image: np.ndarray, mask: np.ndarray, name: str, transform: Callable | None) -> dict:
    """numpy (H, W, 3) uint8 + (H, W) mask -> the sample dict of the data contract (docs/internals.md)."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long())
    if transform is not None:
        img, msk = transform(img, msk)
    return {"image": img, "mask": msk, "name": name}


def raise_problems(problems: list[DataError], what: str, max_examples: int = 5) -> None:
    """Raise one DataError that lists every problem, grouped by kind (a few files of each, with the fix)."""
    if not problems:
        return
    lines = format_problems([Problem.from_error(p) for p in problems], max_examples)
    err = DataError(f"{len(problems)} problem(s) in {what}:\n" + "\n".join(lines))
    err.problems = problems
    raise err


def same_aspect_ratio(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """True when size (w, h) ``a`` is ``b`` scaled by one factor (up to a pixel of rounding per side) that is
    not about 1 (sizes a pixel apart are a wrong export, not another resolution)."""
    (aw, ah), (bw, bh) = a, b
    if a == b or min(aw, ah, bw, bh) < 1:
        return False
    low = max((aw - 1) / bw, (ah - 1) / bh)  # the factors that explain both sides overlap
    high = min((aw + 1) / bw, (ah + 1) / bh)
    return low <= high and abs((low + high) / 2 - 1) > 0.05


def size_mismatch(image_path: str, mask_path: str, image_wh: tuple[int, int], mask_wh: tuple[int, int], *,
                  what: str = "mask", exif_turned: bool = False) -> DataError:
    """The error for a mask (or region mask) whose size is not its image's, saying which kind of mismatch it is."""
    (iw, ih), (mw, mh) = image_wh, mask_wh
    text = f"{what} is {mw}x{mh} (WxH) but its image {image_path} is {iw}x{ih}"
    region = what != "mask"
    if same_aspect_ratio(image_wh, mask_wh):
        factor = iw / mw
        return DataError(
            f"{text}: the same picture at {'1/' + format(factor, '.3g') if factor >= 1 else format(1 / factor, '.3g') + 'x'} "
            "the resolution",
            mask_path,
            f"resize while reading: {option('match_size', 'resize_mask')} (the {what} to its image, nearest neighbour) "
            f"or {option('match_size', 'resize_image')} (the image to its {what}); or re-export the {what}s at the "
            "images' size",
            kind="region_size" if region else "size_scale",
        )
    if (mw, mh) == (ih, iw):
        why = (" semiseg turns the image upright by its EXIF orientation tag, as viewers and annotation tools do; "
               f"if the {what} was drawn on the stored pixels, set {option('exif', False)}") if exif_turned else ""
        return DataError(f"{text}: turned by 90 degrees.{why}", mask_path,
                         f"rotate the {what} to the image's orientation" + ("" if exif_turned else
                                                                            ", or check that the pair belongs together"),
                         kind="region_size" if region else "size_turned")
    return DataError(text, mask_path,
                     f"{what}s must have exactly the size of their image; re-export the {what} at the image's size "
                     "(nearest-neighbour resize), or check that the pair really belongs together",
                     kind="region_size" if region else "size")


def _resize(array: np.ndarray, wh: tuple[int, int], *, nearest: bool) -> np.ndarray:
    from PIL import Image

    return np.array(Image.fromarray(array).resize(wh, Image.NEAREST if nearest else Image.BILINEAR))


class PairDataset(Dataset):
    """Base for datasets of image files paired with mask files. See docs/internals.md for the contract."""

    def __init__(
        self,
        *,
        classes: list[str],
        palette: np.ndarray,
        ignore_index: int = 255,
        transform: Callable | None = None,
        binary: bool = False,
        mask_palette: np.ndarray | None = None,
        ignore_colors: tuple = (),
        ignore_value: int | None = None,
        match_size: str | None = None,
        image_range=None,
        exif: bool = True,
        label_map=None,
    ):
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.ignore_index = int(ignore_index)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.transform = transform
        self.binary = binary
        self.mask_palette = mask_palette  # colours used to decode RGB masks, None = RGB masks are an error
        self.ignore_colors = tuple(ignore_colors)
        if match_size not in MATCH_SIZE:
            raise DataError(f"unknown match_size {match_size!r}", None,
                            f"use {option('match_size', 'resize_mask')}, {option('match_size', 'resize_image')} or leave it unset")
        if ignore_value is not None and not binary:
            raise DataError("ignore_value marks ignored pixels of binary masks, but binary is not set", None,
                            f"set {option('binary', True)}, or store ignored pixels as {option('ignore_index')} in index masks")
        if image_range is not None and (len(image_range) != 2 or not image_range[0] < image_range[1]):
            raise DataError(f"image_range must be [low, high] with low < high, got {image_range}", None,
                            f"e.g. {option('image_range', [0, 4095])} for 12-bit images")
        if label_map is not None and binary:
            raise DataError("label_map maps stored class values, but binary masks are read as foreground/background",
                            None, f"use {option('binary', True)} or {option('label_map')}, not both")
        self.label_lut = label_lut(label_map, self.num_classes, self.ignore_index)  # stored value -> class, or None
        self.ignore_value = ignore_value
        self.match_size = match_size
        self.image_range = None if image_range is None else tuple(image_range)
        self.exif = bool(exif)
        self.style = current_style()  # how this dataset's errors spell options, also in DataLoader workers
        self.names: list[str] = []
        self.image_paths: list[str] = []
        self.mask_paths: list[str | None] = []  # None: no mask (unlabeled image), all pixels ignored
        self.region_paths: list[str | None] | None = None  # region-of-interest masks (roi_dir): outside = ignore
        self.problems: list[DataError] = []  # scan problems, kept when strict=False
        self.warnings: list[DataError] = []  # suspicious but usable (a mask without an image, ...)
        self._warned_binary = False

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int, *, validate: bool = True, decode_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, mask (H, W) uint8) of one sample, checked; raises DataError.

        ``decode_image=False`` (for fast checks) reads only the image's header: the image comes back as an
        empty (H, W, 0) array, the mask as usual."""
        with option_style(self.style):
            return self._read(index, validate, decode_image)

    def _read(self, index: int, validate: bool, decode_image: bool = True) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        if decode_image:
            image = read_image(image_path, image_range=self.image_range, exif=self.exif)
        else:
            from .io import header_size

            w, h, _, _ = header_size(image_path, exif=self.exif)
            image = np.zeros((h, w, 0), dtype=np.uint8)
        if mask_path is None:
            mask = np.full(image.shape[:2], self.ignore_index, dtype=np.uint8)
        else:
            mask = read_mask(mask_path, palette=self.mask_palette, ignore_colors=self.ignore_colors,
                             ignore_index=self.ignore_index, binary=self.binary, ignore_value=self.ignore_value,
                             exif=self.exif)
            if self.label_lut is not None:
                mask = self.label_lut[mask]
            image, mask = self._match(image, mask, image_path, mask_path, "mask")
        region_path = self.region_paths[index] if self.region_paths is not None else None
        if region_path is not None:
            region = read_region(region_path, exif=self.exif)
            _, region = self._match(image, region.astype(np.uint8), image_path, region_path, "region mask")
            mask = np.where(region.astype(bool), mask, np.uint8(self.ignore_index))
        if validate and mask_path is not None:
            hist = check_mask_values(mask, self.num_classes, self.ignore_index, mask_path, binary=self.binary)
            # A 2-class dataset whose mask is exactly {0, 255} is almost surely an unflagged binary mask.
            if self.num_classes == 2 and not self._warned_binary and looks_like_binary_0_255(hist, self.ignore_index):
                self._warned_binary = True
                warn_binary_0_255(mask_path)
        return image, mask

    def _match(self, image: np.ndarray, mask: np.ndarray, image_path: str, mask_path: str, what: str):
        """Make ``mask`` the image's size as ``match_size`` allows, or raise the size-mismatch error."""
        (ih, iw), (mh, mw) = image.shape[:2], mask.shape
        if (ih, iw) == (mh, mw):
            return image, mask
        if self.match_size is not None and same_aspect_ratio((iw, ih), (mw, mh)):
            if self.match_size == "resize_mask" or what != "mask":  # region masks always follow their image
                return image, _resize(mask, (iw, ih), nearest=True)
            if image.shape[2] == 0:  # a header-only read: nothing to resize
                return np.zeros((mh, mw, 0), dtype=np.uint8), mask
            return _resize(image, (mw, mh), nearest=False), mask
        from .io import exif_rotation
        from PIL import Image

        turned = False
        if self.exif:
            with Image.open(image_path) as img:
                turned = exif_rotation(img) in (5, 6, 7, 8)
        raise size_mismatch(image_path, mask_path, (iw, ih), (mw, mh), what=what, exif_turned=turned)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.read(index)
        return to_sample(image, mask, self.names[index], self.transform)

    def _finish_scan(self, strict: bool, what: str) -> None:
        if not self.names and not self.problems:
            self.problems.append(DataError("no samples found", what, "check the path, the layout and the split name"))
        if strict:
            raise_problems(self.problems, what)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes, ignore_index={self.ignore_index})"


def find_root(root: str, markers: tuple[str, ...], inside: tuple[str, ...], problem: str, fix: str) -> str:
    """The dataset folder: ``root`` or ``root/<one of inside>``, the first that holds every ``markers`` subfolder;
    else a DataError with ``problem`` and ``fix`` (VOC, Cityscapes and ADE20K accept their parent folders too)."""
    for candidate in (root, *(os.path.join(root, sub) for sub in inside)):
        if all(os.path.isdir(os.path.join(candidate, marker)) for marker in markers):
            return candidate
    raise DataError(problem, root, fix)


def list_images(folder: str) -> list[str]:
    """Image files directly inside ``folder`` (any extension PIL reads), sorted by name."""
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def list_other_files(folder: str) -> list[str]:
    """Files in ``folder`` that :func:`list_images` leaves out (not an image extension), sorted."""
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if not f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )
