"""How good are a semi-supervised run's pseudo labels? Per class, on the run's *unlabeled* training images.

    python benchmarks/pseudo_label_quality.py RUN_DIR [RUN_DIR ...] [--threshold 0.8] [--limit 256] [--prefix P]
                                              [--flip]

For each run folder: loads last.pt, the EMA teacher when the run has one (else the model itself), predicts the
unlabeled training images named in split.txt (no augmentation; the way the run's recipe evaluates, so a recipe
with ``eval.scales: [0.5]`` is run at half size, the scale it learned) and compares the pseudo labels with
the true masks, which the dataset has (synthetic data, or any labeled set used as if unlabeled). Prints per class:
its share of the true pixels, its share of the confident pseudo labels, and their precision and recall. A
diagnostic only: the masks of unlabeled images never enter training.

An AdvSemiSeg run selects its pseudo labels the way it trained: the model's argmax where its discriminator's
confidence ``sigmoid(D(softmax))`` exceeds the run's ``mask_T`` (0.2 in the paper), not by the softmax; the
discriminator comes from the same checkpoint. ``--threshold`` then replaces ``mask_T``. ``--flip`` labels each image
with the mean softmax of it and its mirror image (as ``method.options.teacher_flip`` does in training).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch
import torch.nn.functional as F

from semiseg.config import config_from_dict
from semiseg.data.info import DatasetInfo
from semiseg.data.splits import Split
from semiseg.engine import build
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.evaluate import inference_options
from semiseg.engine.methods.teacher import TEACHER_MODULE
from semiseg.engine.predict import teacher_weights
from semiseg.inference import infer

DEFAULT_THRESHOLD = 0.8


def teacher_model(ckpt: dict, ckpt_path: str, cfg, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The run's EMA teacher when it has one (what made its pseudo labels), else its model."""
    model = build.build_model(cfg, num_classes, pretrained=False)
    if TEACHER_MODULE in (ckpt.get("modules") or {}):
        model.load_state_dict(teacher_weights(ckpt, ckpt_path, cfg))
        return model.eval(), "EMA teacher"
    model.load_state_dict(ckpt["model"])
    return model.eval(), "model"


def discriminator_model(ckpt: dict, cfg, num_classes: int) -> tuple[torch.nn.Module, float]:
    """An AdvSemiSeg run's discriminator and its confidence threshold ``mask_T``."""
    from semiseg.engine.methods.advsemiseg import AdvSemiSegOptions
    from semiseg.models.discriminator import FCDiscriminator
    from semiseg.config import dataclass_from_dict

    options = dataclass_from_dict(AdvSemiSegOptions, dict(cfg.method.options), "method.options")
    d = FCDiscriminator(num_classes, options.ndf, upsample=True)
    d.load_state_dict(ckpt["modules"]["discriminator"])
    return d.eval(), options.mask_T


def discriminator_confidence(d: torch.nn.Module, probs: torch.Tensor, scale: float) -> torch.Tensor:
    """sigmoid(D(probs)) at the size of ``probs``; D sees them at the scale the model ran (the first eval scale),
    the scale its training crops had, not upsampled to the image's."""
    if scale == 1:
        return torch.sigmoid(d(probs))[0, 0]
    small = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
    conf = torch.sigmoid(d(small))
    return F.interpolate(conf, size=probs.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def quality(run_dir: str, threshold: float | None, limit: int, prefix: str = "", flip: bool = False) -> None:
    ckpt_path = os.path.join(run_dir, "last.pt")
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    info = DatasetInfo(**ckpt["dataset"])
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(info.normalization))
    split = Split.load(os.path.join(run_dir, "split.txt"))
    names = list(dataset.names)
    _, unlabeled = split.indices(names)
    unlabeled = [i for i in unlabeled if os.path.basename(names[i]).startswith(prefix)][:limit]
    model, source = teacher_model(ckpt, ckpt_path, cfg, info.num_classes)
    discriminator = None
    if cfg.method.name == "advsemiseg":
        discriminator, mask_t = discriminator_model(ckpt, cfg, info.num_classes)
        threshold = mask_t if threshold is None else threshold
        source += f", confidence = its discriminator's, > {threshold}"
    elif threshold is None:
        threshold = DEFAULT_THRESHOLD
    c = info.num_classes
    truth_px = torch.zeros(c)
    pseudo_px = torch.zeros(c)
    right = torch.zeros(c)
    confident = total = 0
    options = inference_options(cfg)
    if flip:
        options = dataclasses.replace(options, flip=True)
        source += ", flip-averaged"
    precision = "bf16" if cfg.train.precision == "bf16" else "fp32"
    with torch.no_grad():
        for i in unlabeled:
            sample = dataset[i]
            probs = infer(model, sample["image"].unsqueeze(0), options, precision=precision).softmax(1)
            conf, label = probs[0].max(0)
            if discriminator is not None:  # AdvSemiSeg's indicator: sigmoid(D(softmax)) > mask_T
                conf = discriminator_confidence(discriminator, probs, options.scales[0])
            mask = sample["mask"]
            valid = mask != info.ignore_index
            keep = valid & (conf > threshold if discriminator is not None else conf >= threshold)
            truth_px += torch.bincount(mask[valid], minlength=c)[:c].float()
            pseudo_px += torch.bincount(label[keep], minlength=c)[:c].float()
            right += torch.bincount(label[keep & (label == mask)], minlength=c)[:c].float()
            confident += int(keep.sum())
            total += int(valid.sum())
    print(f"\n{run_dir}: {source} at iteration {ckpt['iteration']}, {len(unlabeled)} unlabeled images{' ' + prefix + '*' if prefix else ''}, "
          f"threshold {threshold}: {100 * confident / max(total, 1):.1f}% of pixels confident, "
          f"{100 * float(right.sum()) / max(confident, 1):.1f}% of those right")
    print(f"{'class':<14}{'true share':>11}{'pseudo share':>13}{'precision':>10}{'recall':>8}")
    for k, name in enumerate(info.classes):
        precision = right[k] / pseudo_px[k] if pseudo_px[k] else float("nan")
        recall = right[k] / truth_px[k] if truth_px[k] else float("nan")
        print(f"{name:<14}{100 * truth_px[k] / max(total, 1):>10.1f}%{100 * pseudo_px[k] / max(confident, 1):>12.1f}%"
              f"{100 * precision:>9.1f}%{100 * recall:>7.1f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"confidence a pseudo label needs (default {DEFAULT_THRESHOLD}; an AdvSemiSeg run's mask_T)")
    p.add_argument("--limit", type=int, default=256, help="at most this many unlabeled images")
    p.add_argument("--prefix", default="", help="only the unlabeled images whose names start with this (e.g. a "
                                                 "CamVid sequence, 0001TP)")
    p.add_argument("--flip", action="store_true", help="the mean prediction of each image and its mirror image")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for run in a.runs:
        quality(run, a.threshold, a.limit, a.prefix, a.flip)


if __name__ == "__main__":
    main()
