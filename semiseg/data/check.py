"""Validate a whole dataset and report everything at once: counts, sizes, class pixel frequencies and
every problem found (the scan does not stop at the first bad file). Used by ``semiseg data check``."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .base import PairDataset
from .errors import DataError
from .io import check_mask_values, looks_like_binary_0_255


@dataclass
class Problem:
    severity: str  # "error": the sample cannot be used as is; "warning": usable but probably wrong
    message: str
    path: str | None = None
    fix: str | None = None

    @classmethod
    def from_error(cls, err: DataError, severity: str = "error") -> Problem:
        message = str(err).split("\n  fix:")[0]
        if err.path and message.startswith(err.path + ": "):
            message = message[len(err.path) + 2:]
        return cls(severity, message, err.path, err.fix)

    def __str__(self) -> str:
        text = f"{self.severity}: " + (f"{self.path}: " if self.path else "") + self.message
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass
class CheckReport:
    description: str
    classes: list[str]
    ignore_index: int
    num_samples: int = 0  # samples the dataset lists
    num_checked: int = 0
    num_unlabeled: int = 0  # samples without a mask (require_masks=False)
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    class_pixels: np.ndarray | None = None  # (num_classes,) labelled pixels per class
    class_images: np.ndarray | None = None  # (num_classes,) images that contain the class
    ignore_pixels: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"dataset: {self.description}",
                 f"classes: {len(self.classes)} (ignore index {self.ignore_index})",
                 f"images: {self.num_samples} listed, {self.num_checked} checked"
                 + (f", {self.num_unlabeled} without mask" if self.num_unlabeled else "")]
        if self.sizes:
            shown = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(5))
            more = f" and {len(self.sizes) - 5} more sizes" if len(self.sizes) > 5 else ""
            lines.append(f"sizes (WxH): {shown}{more}")
            if len(self.sizes) > 1:
                by_area = sorted(self.sizes, key=lambda wh: (wh[0] * wh[1], wh))
                (w0, h0), (w1, h1) = by_area[0], by_area[-1]
                lines.append(f"size spread: {len(self.sizes)} sizes from {w0}x{h0} to {w1}x{h1} (evaluation batches "
                             "images of equal size together; training crops them to data.crop_size)")
        if self.class_pixels is not None:
            labelled = int(self.class_pixels.sum())
            total = labelled + self.ignore_pixels
            lines.append("class pixel frequencies (share of labelled pixels; images containing the class):")
            width = max(len(c) for c in self.classes)
            for i, name in enumerate(self.classes):
                share = 100.0 * self.class_pixels[i] / max(labelled, 1)
                lines.append(f"  {i:>3} {name:<{width}} {int(self.class_pixels[i]):>13,} {share:6.2f}%  in {int(self.class_images[i])} images")
            share = 100.0 * self.ignore_pixels / max(total, 1)
            lines.append(f"  {self.ignore_index:>3} {'(ignore)':<{width}} {self.ignore_pixels:>13,} {share:6.2f}% of all pixels")
            absent = [c for c, n in zip(self.classes, self.class_images) if n == 0]
            if absent and self.num_checked:
                lines.append(f"  classes never seen: {', '.join(absent)}")
        if not self.problems:
            lines.append("problems: none")
        else:
            lines.append(f"problems: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _check_one(dataset, index: int) -> tuple:
    """-> (size or None, histogram or None, problems). Never raises for data problems."""
    problems: list[Problem] = []
    try:
        if isinstance(dataset, PairDataset):
            image, mask = dataset.read(index, validate=False)
            mask_path = dataset.mask_paths[index]
        else:
            image, mask = dataset.read(index)
            mask_path = None
    except DataError as e:
        return None, None, [Problem.from_error(e)]
    size = (image.shape[1], image.shape[0])
    if isinstance(dataset, PairDataset) and mask_path is None:
        return size, None, problems
    try:
        hist = check_mask_values(mask, dataset.num_classes, dataset.ignore_index, mask_path,
                                 binary=getattr(dataset, "binary", False))
    except DataError as e:
        return size, None, [Problem.from_error(e)]
    if looks_like_binary_0_255(hist, dataset.ignore_index) and not getattr(dataset, "binary", False):
        problems.append(Problem(
            "warning",
            f"mask holds only the values 0 and 255; with 255 as the ignore index all its "
            f"{100.0 * hist[255] / hist.sum():.1f}% non-zero pixels would be ignored",
            mask_path,
            "if this is a binary mask stored as 0/255, use the binary option (CLI --binary, "
            "folder option binary=True) so 255 reads as class 1",
        ))
    return size, hist, problems


def check_dataset(dataset, *, description: str | None = None, limit: int | None = None, workers: int = 2) -> CheckReport:
    """Read every sample (or the first ``limit``) of ``dataset`` and collect statistics and problems.

    ``dataset`` should be built with ``strict=False`` so that scan problems (images without masks, ...)
    land in ``dataset.problems`` instead of stopping the construction.
    """
    report = CheckReport(description or repr(dataset), list(dataset.classes), dataset.ignore_index)
    report.problems += [Problem.from_error(e) for e in getattr(dataset, "problems", [])]
    report.problems += [Problem.from_error(e, "warning") for e in getattr(dataset, "warnings", [])]
    report.num_samples = len(dataset)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    k = dataset.num_classes
    report.class_pixels = np.zeros(k, dtype=np.int64)
    report.class_images = np.zeros(k, dtype=np.int64)
    # Decoding releases the GIL, so a few threads overlap file reads and PIL decoding.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for size, hist, problems in pool.map(lambda i: _check_one(dataset, i), range(n)):
            report.num_checked += 1
            report.problems += problems
            if size is not None:
                report.sizes[size] += 1
            if hist is not None:
                report.class_pixels += hist[:k]
                report.class_images += hist[:k] > 0
                if 0 <= dataset.ignore_index < 256:
                    report.ignore_pixels += int(hist[dataset.ignore_index])
            elif size is not None and not problems:
                report.num_unlabeled += 1
    if report.num_samples == 0 and not report.errors:
        report.problems.append(Problem("error", "the dataset has no samples", getattr(dataset, "root", None),
                                       "check the path, the layout and the split name"))
    return report
