"""Checks before the first training step, so that a mistake stops a run in seconds, in the user's terms.

Two passes, each raising one error that says what is wrong and how to fix it with the recipe keys the user
typed (``data.options.binary=true``, not a Python argument or a CLI flag):

1. :func:`check_config`, before anything is built: the names a recipe gives (``data.kind``, ``model.name``,
   ``loss.name``, ``method.name`` and its options, ``data.check``) exist, and file datasets have a ``data.root``.
2. :func:`check_data`, once the datasets are listed and before the model is built:
   - validation must not read the training images (a flat ``ROOT/images`` layout without split folders, or a
     ``data.val_split`` that is the training folder, would score the model on what it trained on);
   - the files themselves (``semiseg.data.check``): every file opens, masks match their image's size and hold
     only class indices, no dataset-wide 0/255 binary mix-up; problems are grouped (counts + a few files).
     How much is read is ``data.check``: ``auto`` (default) decodes every image and mask when a split has at
     most :data:`FULL_CHECK_LIMIT` images (CamVid's 468 take about a second), and above that reads the image
     headers (sizes, formats) and every mask in full, which skips only truncated image data; ``full`` always
     decodes everything, ``headers`` never decodes images, ``off`` skips the file check;
   - ``loss.class_weights`` has one weight per class.
   Warnings (classes never seen in the training masks) are printed, not raised.
Datasets that are not files (the synthetic scenes, ``module:function`` datasets without file lists) skip the
file check.
"""

from __future__ import annotations

import os
import warnings

from semiseg.config import Config, ConfigError

CHECK_MODES = ("auto", "full", "headers", "off")
FULL_CHECK_LIMIT = 3000  # images per split decoded in full by data.check=auto


def check_mode(cfg: Config) -> str:
    """``data.check`` as one of :data:`CHECK_MODES` (YAML reads a bare ``off`` as false)."""
    value = cfg.data.check
    return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


def _fix(message: str, fix: str) -> ConfigError:
    return ConfigError(f"{message}\n  fix: {fix}")


def check_config(cfg: Config) -> None:
    """The names a recipe gives exist (cheap: nothing is built but the method's options)."""
    from semiseg.data import DATASETS
    from semiseg.losses import LOSS_NAMES
    from semiseg.models import available_models

    d = cfg.data
    if ":" not in d.kind and d.kind not in DATASETS:
        raise _fix(f"unknown data.kind {d.kind!r}", f"use one of {', '.join(DATASETS)} (or 'package.module:function')")
    if not d.kind.startswith("synthetic") and ":" not in d.kind and not d.root:
        raise _fix(f"data.kind={d.kind} reads files but data.root is not set", "data.root=PATH/TO/DATASET")
    if check_mode(cfg) not in CHECK_MODES:
        raise _fix(f"unknown data.check {d.check!r}", f"use one of {', '.join(CHECK_MODES)}")
    if ":" not in cfg.model.name and cfg.model.name not in available_models():
        raise _fix(f"unknown model.name {cfg.model.name!r}", f"use one of {', '.join(available_models())}")
    if cfg.loss.name.replace(" ", "").lower() not in LOSS_NAMES:
        raise _fix(f"unknown loss.name {cfg.loss.name!r}", f"use one of {', '.join(LOSS_NAMES)}")
    from semiseg.engine.methods import build_method

    build_method(cfg.method)  # unknown names and option typos raise ConfigError listing the valid ones


def _files(dataset) -> list[str] | None:
    paths = getattr(dataset, "image_paths", None)
    return [os.path.abspath(p) for p in paths] if paths is not None else None


def _where(cfg: Config, split_key: str, split: str) -> str:
    return f"data.root={cfg.data.root}, {split_key}={split}"


def check_overlap(cfg: Config, train_set, val_set) -> None:
    """Validation that reads training images is an error (scores would measure memorisation)."""
    train_files, val_files = _files(train_set), _files(val_set)
    if not train_files or not val_files:
        return
    shared = set(train_files) & set(val_files)
    if not shared:
        return
    d = cfg.data
    same = len(shared) == len(val_files)
    flat = getattr(val_set, "split_dir", "") is None
    why = (f"{d.root} has no {d.val_split!r} folder, so both splits read the whole folder" if flat
           else "both splits point at the same folder" if same else "the split folders share files")
    raise _fix(
        f"validation reads training images: {len(shared)} of the {len(val_files)} images of data.val_split={d.val_split} "
        f"are training images of data.train_split={d.train_split} ({why}); every validation score would be "
        "inflated",
        "put the images in ROOT/train/ and ROOT/val/ (each with images/ and masks/), or hold out a fixed part of one "
        "folder: data.options.val_fraction=0.2, or point validation at other folders: "
        "data.val_options={image_dir: VAL_IMAGES, mask_dir: VAL_MASKS}",
    )


def check_command(cfg: Config, split: str, split_key: str) -> str:
    """The `semiseg data check` command that reads the split as the recipe does (folder datasets)."""
    from semiseg.data.errors import option, option_style

    d = cfg.data
    options = {**d.options, **(d.val_options if split_key == "data.val_split" else {})}
    parts = ["semiseg data check", str(d.root), f"--split {split}"]
    if d.kind in ("camvid", "cityscapes", "ade20k"):
        parts.append(f"--kind {d.kind}")
    with option_style("cli"):
        for key, value in options.items():
            if value is False and key == "require_masks":
                parts.append(option(key, value))
            elif value is False and key == "exif":
                parts.append("--no-exif")
            elif value not in (None, False, "") and key not in ("require_masks", "exif"):
                parts.append(option(key, value))
    return " ".join(parts)


def _decode_images(mode: str, dataset) -> bool:
    return mode == "full" or (mode == "auto" and len(dataset) <= FULL_CHECK_LIMIT)


def check_files(cfg: Config, dataset, split_key: str, split: str, *, workers: int = 2) -> list[str]:
    """Check the files of one split; raises a DataError listing the problems, returns warnings."""
    from semiseg.data import DataError
    from semiseg.data.base import PairDataset
    from semiseg.data.check import check_dataset
    from semiseg.data.errors import format_problems

    mode = check_mode(cfg)
    if mode == "off" or not isinstance(dataset, PairDataset):
        return []
    decode = _decode_images(mode, dataset)
    report = check_dataset(dataset, description=_where(cfg, split_key, split), workers=workers,
                           decode_images=decode)
    if report.errors:
        where = f"found before training in the data of {_where(cfg, split_key, split)}"
        if len(report.errors) == 1:
            p = report.errors[0]
            raise DataError(f"{p.message} ({where})", p.path, p.fix)
        how = "" if decode else " (image headers only; data.check=full decodes them)"
        raise DataError(
            f"{len(report.errors)} problems {where}{how}:\n" + "\n".join(format_problems(report.errors, 3)),
            None,
            f"correct the files or set the options named above; `{check_command(cfg, split, split_key)} "
            "--max-errors 0` lists every file",
        )
    notes = []
    if split_key == "data.train_split" and report.class_images is not None and report.num_checked:
        unseen = [c for c, n in zip(report.classes, report.class_images) if n == 0]
        if unseen and len(unseen) < len(report.classes):
            notes.append(f"no training mask contains the class(es) {', '.join(unseen)} "
                         f"({_where(cfg, split_key, split)}): the model cannot learn them")
    notes += [f"{p.path}: {p.message}" if p.path else p.message for p in report.warnings[:3]]
    if len(report.warnings) > 3:
        notes.append(f"... and {len(report.warnings) - 3} more warnings (`semiseg data check` lists them)")
    return notes


def check_data(cfg: Config, train_set, val_set, *, workers: int = 2) -> None:
    """Everything about the data that can be known before the first step (see the module docstring)."""
    check_overlap(cfg, train_set, val_set)
    notes = check_files(cfg, train_set, "data.train_split", cfg.data.train_split, workers=workers)
    notes += check_files(cfg, val_set, "data.val_split", cfg.data.val_split, workers=workers)
    weights = cfg.loss.class_weights
    if weights is not None and len(weights) != train_set.num_classes:
        raise _fix(f"loss.class_weights has {len(weights)} values but the dataset has {train_set.num_classes} classes "
                   f"({', '.join(train_set.classes)})", f"give one weight per class, or loss.class_weights=null")
    for note in notes:
        warnings.warn(note, stacklevel=2)


__all__ = ["CHECK_MODES", "FULL_CHECK_LIMIT", "check_config", "check_overlap", "check_files", "check_data"]
