"""What every file-backed dataset shares: a list of (name, image, mask) paths and one way to read them.

Subclasses (folder, VOC) only find the files. Reading, validation and the sample dict live here so the
datasets and ``semiseg data check`` agree on what a good sample is. Problems found while scanning
(an image without a mask, two images with one stem, ...) are collected as DataError objects: a strict
dataset raises them all at once, a non-strict one keeps them in ``problems`` for the checker.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .errors import DataError
from .io import IMAGE_EXTENSIONS, check_mask_values, looks_like_binary_0_255, read_image, read_mask, warn_binary_0_255

MAX_LISTED = 20


def to_sample(image: np.ndarray, mask: np.ndarray, name: str, transform: Callable | None) -> dict:
    """numpy (H, W, 3) uint8 + (H, W) mask -> the sample dict of the data contract (docs/internals.md)."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long())
    if transform is not None:
        img, msk = transform(img, msk)
    return {"image": img, "mask": msk, "name": name}


def raise_problems(problems: list[DataError], what: str) -> None:
    """Raise one DataError that lists every problem (the first MAX_LISTED of them)."""
    if not problems:
        return
    lines = [str(p) for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more (run `semiseg data check` for the full list)")
    err = DataError(f"{len(problems)} problem(s) in {what}:\n" + "\n".join(lines))
    err.problems = problems
    raise err


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
    ):
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.ignore_index = int(ignore_index)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.transform = transform
        self.binary = binary
        self.mask_palette = mask_palette  # colours used to decode RGB masks, None = RGB masks are an error
        self.ignore_colors = tuple(ignore_colors)
        self.names: list[str] = []
        self.image_paths: list[str] = []
        self.mask_paths: list[str | None] = []  # None: no mask (unlabeled image), all pixels ignored
        self.problems: list[DataError] = []  # scan problems, kept when strict=False
        self.warnings: list[DataError] = []  # suspicious but usable (a mask without an image, ...)
        self._warned_binary = False

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int, *, validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, mask (H, W) uint8) of one sample, checked; raises DataError."""
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)
        if mask_path is None:
            return image, np.full(image.shape[:2], self.ignore_index, dtype=np.uint8)
        mask = read_mask(mask_path, palette=self.mask_palette, ignore_colors=self.ignore_colors,
                         ignore_index=self.ignore_index, binary=self.binary)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}",
                mask_path,
                "masks must have exactly the size of their image; re-export the mask at the image's size "
                "(nearest-neighbour resize), or check that the pair really belongs together",
            )
        if validate:
            hist = check_mask_values(mask, self.num_classes, self.ignore_index, mask_path, binary=self.binary)
            # A 2-class dataset whose mask is exactly {0, 255} is almost surely an unflagged binary mask.
            if self.num_classes == 2 and not self._warned_binary and looks_like_binary_0_255(hist, self.ignore_index):
                self._warned_binary = True
                warn_binary_0_255(mask_path)
        return image, mask

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


def list_images(folder: str) -> list[str]:
    """Image files directly inside ``folder`` (any known image extension), sorted by name."""
    return sorted(
        os.path.join(folder, f) for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )
