"""Validate a whole dataset and report everything at once: counts, sizes, class pixel frequencies and
every problem found (the scan does not stop at the first bad file). Used by ``semiseg data check``."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .base import PairDataset
from .errors import DEFAULT_EXAMPLES, DataError, Problem, format_problems, option, option_style
from .io import check_mask_values, looks_like_binary_0_255


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

    def format(self, max_examples: int | None = DEFAULT_EXAMPLES) -> str:
        """The report as text; problems are grouped by kind with ``max_examples`` files each (0: all)."""
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
            lines += format_problems(self.problems, max_examples)
        return "\n".join(lines)


def _check_one(dataset, index: int, decode_images: bool = True) -> tuple:
    """-> (size or None, histogram or None, problems). Never raises for data problems."""
    problems: list[Problem] = []
    pair = isinstance(dataset, PairDataset)
    try:
        if pair:
            image, mask = dataset.read(index, validate=False, decode_image=decode_images)
            mask_path = dataset.mask_paths[index]
        else:
            image, mask = dataset.read(index)
            mask_path = None
    except DataError as e:
        return None, None, [Problem.from_error(e)]
    size = (image.shape[1], image.shape[0])
    if pair and mask_path is None:
        return size, None, problems
    try:
        with option_style(getattr(dataset, "style", {})):
            hist = check_mask_values(mask, dataset.num_classes, dataset.ignore_index, mask_path,
                                     binary=getattr(dataset, "binary", False))
    except DataError as e:
        return size, None, [Problem.from_error(e)]
    if looks_like_binary_0_255(hist, dataset.ignore_index) and not getattr(dataset, "binary", False):
        with option_style(getattr(dataset, "style", {})):
            fix = (f"if this is a binary mask stored as 0/255, set {option('binary', True)} so that 255 reads as "
                   "class 1")
        problems.append(Problem(
            "warning",
            f"mask holds only the values 0 and 255; with 255 as the ignore index all its "
            f"{100.0 * hist[255] / hist.sum():.1f}% non-zero pixels would be ignored",
            mask_path, fix, kind="binary_0_255",
        ))
    return size, hist, problems


def _dataset_problems(dataset, report: CheckReport) -> list[Problem]:
    """Problems no single file shows: every labelled pixel is class 0 while others are ignored (an unflagged
    0/255 binary dataset: the scores would measure the background only and read 100%)."""
    k = len(report.classes)
    labelled = report.class_pixels is not None and report.class_pixels.sum() > 0
    partial = report.num_checked < report.num_samples  # (--limit: the unread masks may hold the other classes)
    if partial or not labelled or k < 2 or report.class_pixels[1:].sum() > 0 or report.ignore_pixels == 0:
        return []
    with option_style(getattr(dataset, "style", {})):
        if k == 2 and not getattr(dataset, "binary", False):
            fix = (f"if the masks are binary (0 = {report.classes[0]}, 255 = {report.classes[1]}), set "
                   f"{option('binary', True)}")
        else:
            fix = f"check the class list ({option('classes')}) and the values the masks store for each class"
    unseen = ", ".join(repr(c) for c in report.classes[1:4]) + (", ..." if k > 4 else "")
    return [Problem("error", f"no mask holds any class but {report.classes[0]!r} (index 0); the other pixels are "
                    f"the ignore index {report.ignore_index}, so training would never see {unseen} and the scores "
                    "would measure the background only (mIoU 100)", getattr(dataset, "root", None), fix,
                    kind="only_background")]


def check_dataset(dataset, *, description: str | None = None, limit: int | None = None, workers: int = 2,
                  decode_images: bool = True) -> CheckReport:
    """Read every sample (or the first ``limit``) of ``dataset`` and collect statistics and problems.

    ``dataset`` should be built with ``strict=False`` so that scan problems (images without masks, ...)
    land in ``dataset.problems`` instead of stopping the construction. ``decode_images=False`` reads the
    images' headers only (sizes, formats) and the masks in full: truncated image data goes unnoticed.
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
        for size, hist, problems in pool.map(lambda i: _check_one(dataset, i, decode_images), range(n)):
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
    whole = _dataset_problems(dataset, report)
    if whole:  # one dataset-level error says it better than a warning per mask
        report.problems = [p for p in report.problems if p.kind != "binary_0_255"] + whole
    if report.num_samples == 0 and not report.errors:
        report.problems.append(Problem("error", "the dataset has no samples", getattr(dataset, "root", None),
                                       "check the path, the layout and the split name"))
    return report


__all__ = ["CheckReport", "Problem", "check_dataset"]
