"""Build the SBD-augmented PASCAL VOC training set (``voc_aug``) from the two original downloads.

The 10,582-image ``train_aug`` set of DeepLab and AdvSemiSeg combines PASCAL VOC 2012 with the Semantic
Boundaries Dataset (SBD, Hariharan et al. 2011), whose class masks ship as MATLAB files::

    benchmark_RELEASE/dataset/cls/NAME.mat      struct GTcls with field Segmentation (H x W, 0..20)
    benchmark_RELEASE/dataset/{train,val}.txt   8,498 + 2,857 names (all of them VOC images)

:func:`convert_sbd` writes what ``voc_aug`` reads, inside the VOC tree::

    VOC2012/SegmentationClassAug/NAME.png               single-channel index PNGs, 255 = ignore
    VOC2012/ImageSets/SegmentationAug/train_aug.txt     (VOC train + SBD train + SBD val) - VOC val

Where an image has both annotations, VOC's own mask is written (DeepLab's recipe copies the VOC masks over
the converted SBD ones): it is the official ground truth, with the 255 border around objects. Nothing of
VOC's validation images enters ``train_aug``, so the usual val numbers stay uncontaminated.

The masks go into a temporary folder that is renamed into place only when every file is written, so an
interrupted conversion leaves no half-filled ``SegmentationClassAug``; an existing one is replaced only
with ``overwrite=True``. Reading .mat files needs SciPy (``pip install 'semiseg[sbd]'``).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from semiseg.atomic import atomic_write_text

from .errors import DataError
from .io import check_mask_values, read_mask
from .palettes import VOC_CLASSES, VOC_IGNORE_COLOR, VOC_PALETTE
from .splits import read_names
from .voc import find_voc_root

AUG_DIR = "SegmentationClassAug"
AUG_LIST = os.path.join("ImageSets", "SegmentationAug", "train_aug.txt")


def find_sbd_root(root: str) -> str:
    """The SBD folder holding cls/ and train.txt: ``root`` itself, root/dataset or root/benchmark_RELEASE/dataset."""
    for candidate in (root, os.path.join(root, "dataset"), os.path.join(root, "benchmark_RELEASE", "dataset")):
        if os.path.isdir(os.path.join(candidate, "cls")) and os.path.isfile(os.path.join(candidate, "train.txt")):
            return candidate
    raise DataError("no SBD folder with cls/ and train.txt found", root,
                    "point at benchmark_RELEASE (or its dataset/ folder) from the SBD download, benchmark.tgz")


def read_sbd_mask(path: str) -> np.ndarray:
    """(H, W) uint8 class indices from an SBD ``cls/*.mat`` file (``GTcls.Segmentation``)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SBD .mat files needs SciPy", path, "pip install 'semiseg[sbd]' (or pip install scipy)") from None
    try:
        data = loadmat(path, squeeze_me=True, struct_as_record=False)
    except FileNotFoundError:
        raise DataError("SBD mask file does not exist", path, "restore it, or remove its name from SBD's train.txt/val.txt") from None
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError for files that are not MATLAB v5
        raise DataError(f"cannot read the SBD mask ({e})", path, "re-extract it from benchmark.tgz") from None
    gt = data.get("GTcls")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None or np.ndim(segmentation) != 2:
        raise DataError("not an SBD class mask: no 2-D GTcls.Segmentation", path,
                        "use the files of dataset/cls/ (dataset/inst/ holds instance masks)")
    segmentation = np.asarray(segmentation)
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255
                              or not np.array_equal(segmentation, np.round(segmentation))):
        raise DataError(f"GTcls.Segmentation holds values from {segmentation.min()} to {segmentation.max()}; "
                        "class indices 0..20 are expected", path, "re-extract the file from benchmark.tgz")
    return segmentation.astype(np.uint8)  # MATLAB may store it as double; the values are small integers


@dataclass
class SBDConversion:
    """What :func:`convert_sbd` wrote."""

    mask_dir: str
    list_path: str
    from_sbd: int  # masks converted from SBD .mat files
    from_voc: int  # masks taken from VOC's SegmentationClass (VOC-only images, and those VOC wins on)
    train_aug: int  # names in train_aug.txt (10,582 with the full downloads)

    def format(self) -> str:
        return (f"{self.mask_dir}: {self.from_sbd + self.from_voc} masks ({self.from_sbd} from SBD, "
                f"{self.from_voc} from VOC)\n{self.list_path}: {self.train_aug} training images")


def _write_png(mask: np.ndarray, path: str) -> None:
    Image.fromarray(mask, mode="L").save(path)


def convert_sbd(sbd_root: str, voc_root: str, *, overwrite: bool = False, workers: int = 4,
                progress: bool = True) -> SBDConversion:
    """Write VOC2012/SegmentationClassAug and train_aug.txt from SBD + VOC (see the module docstring)."""
    sbd = find_sbd_root(os.fspath(sbd_root))
    voc = find_voc_root(os.fspath(voc_root))
    final_dir = os.path.join(voc, AUG_DIR)
    list_path = os.path.join(voc, AUG_LIST)
    if not overwrite:
        for existing in (final_dir, list_path):
            if os.path.isfile(existing) or (os.path.isdir(existing) and os.listdir(existing)):
                raise DataError("exists already and would be replaced", existing,
                                "keep it (voc_aug reads it as it is), or pass --overwrite to rebuild it")

    sets = os.path.join(voc, "ImageSets", "Segmentation")
    voc_train, voc_val = read_names(os.path.join(sets, "train.txt")), read_names(os.path.join(sets, "val.txt"))
    sbd_names = read_names(os.path.join(sbd, "train.txt"))
    if os.path.isfile(os.path.join(sbd, "val.txt")):
        sbd_names += read_names(os.path.join(sbd, "val.txt"))
    voc_masks = os.path.join(voc, "SegmentationClass")
    voc_names = {n for n in voc_train + voc_val if os.path.isfile(os.path.join(voc_masks, n + ".png"))}
    sbd_only = sorted(set(sbd_names) - voc_names)  # VOC's own mask wins where both exist

    train_aug = sorted((set(voc_train) | set(sbd_names)) - set(voc_val))
    missing_images = [n for n in train_aug if not os.path.isfile(os.path.join(voc, "JPEGImages", n + ".jpg"))]
    if missing_images:
        raise DataError(f"{len(missing_images)} training image(s) missing from JPEGImages, e.g. {missing_images[0]}.jpg",
                        os.path.join(voc, "JPEGImages"), "unpack the full VOC2012 trainval tar (it holds every SBD image)")

    num_classes = len(VOC_CLASSES)

    def from_sbd(name: str) -> None:
        path = os.path.join(sbd, "cls", name + ".mat")
        mask = read_sbd_mask(path)
        check_mask_values(mask, num_classes, 255, path)
        _write_png(mask, os.path.join(tmp_dir, name + ".png"))

    def from_voc(name: str) -> None:
        path = os.path.join(voc_masks, name + ".png")
        mask = read_mask(path, palette=VOC_PALETTE, ignore_colors=(VOC_IGNORE_COLOR,))
        check_mask_values(mask, num_classes, 255, path)
        _write_png(mask, os.path.join(tmp_dir, name + ".png"))

    tmp_dir = os.path.join(voc, f".{AUG_DIR}.partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by an interrupted conversion
    os.makedirs(tmp_dir)
    jobs = [(from_sbd, n) for n in sbd_only] + [(from_voc, n) for n in sorted(voc_names)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="SBD -> PNG", unit="mask")
    try:
        # PNG encoding and .mat parsing release the GIL for most of their time: threads suffice.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(lambda job: job[0](job[1]), jobs):
                if bar is not None:
                    bar.update(1)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    # Swap the finished folder in; the old one is deleted only once the new one is in place.
    old_dir = os.path.join(voc, f".{AUG_DIR}.old")
    shutil.rmtree(old_dir, ignore_errors=True)
    if os.path.isdir(final_dir):
        os.rename(final_dir, old_dir)
    os.rename(tmp_dir, final_dir)
    shutil.rmtree(old_dir, ignore_errors=True)

    os.makedirs(os.path.dirname(list_path), exist_ok=True)
    atomic_write_text(list_path, "\n".join(train_aug) + "\n")
    return SBDConversion(mask_dir=final_dir, list_path=list_path, from_sbd=len(sbd_only), from_voc=len(voc_names),
                         train_aug=len(train_aug))


__all__ = ["SBDConversion", "convert_sbd", "find_sbd_root", "read_sbd_mask"]
