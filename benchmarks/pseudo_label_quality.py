"""How good are a semi-supervised run's pseudo labels? Per class, on the run's *unlabeled* training images.

    python benchmarks/pseudo_label_quality.py RUN_DIR [RUN_DIR ...] [--threshold 0.8] [--limit 256]

For each run folder: loads last.pt, the EMA teacher when the run has one (else the model itself), predicts the
unlabeled training images named in split.txt (no augmentation; the way the run's recipe evaluates, so a recipe
with ``eval.scales: [0.5]`` is run at half size, the scale it learned) and compares the pseudo labels with
the true masks, which the dataset has (synthetic data, or any labeled set used as if unlabeled). Prints per class:
its share of the true pixels, its share of the confident pseudo labels, and their precision and recall. A
diagnostic only: the masks of unlabeled images never enter training.
"""

from __future__ import annotations

import argparse
import os

import torch

from semiseg.config import config_from_dict
from semiseg.data.info import DatasetInfo
from semiseg.data.splits import Split
from semiseg.engine import build
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.evaluate import inference_options
from semiseg.inference import infer


def teacher_model(ckpt: dict, cfg, num_classes: int) -> tuple[torch.nn.Module, str]:
    model = build.build_model(cfg, num_classes, pretrained=False)
    teacher = (ckpt.get("modules") or {}).get("teacher")
    if teacher:
        model.load_state_dict({k.removeprefix("model."): v for k, v in teacher.items()})
        return model.eval(), "EMA teacher"
    model.load_state_dict(ckpt["model"])
    return model.eval(), "model"


def quality(run_dir: str, threshold: float, limit: int) -> None:
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"))
    cfg = config_from_dict(ckpt["config"])
    info = DatasetInfo(**ckpt["dataset"])
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(info.normalization))
    split = Split.load(os.path.join(run_dir, "split.txt"))
    _, unlabeled = split.indices(list(dataset.names))
    unlabeled = unlabeled[:limit]
    model, source = teacher_model(ckpt, cfg, info.num_classes)
    c = info.num_classes
    truth_px = torch.zeros(c)
    pseudo_px = torch.zeros(c)
    right = torch.zeros(c)
    confident = total = 0
    options = inference_options(cfg)
    precision = "bf16" if cfg.train.precision == "bf16" else "fp32"
    with torch.no_grad():
        for i in unlabeled:
            sample = dataset[i]
            probs = infer(model, sample["image"].unsqueeze(0), options, precision=precision).softmax(1)[0]
            conf, label = probs.max(0)
            mask = sample["mask"]
            valid = mask != info.ignore_index
            keep = valid & (conf >= threshold)
            truth_px += torch.bincount(mask[valid], minlength=c)[:c].float()
            pseudo_px += torch.bincount(label[keep], minlength=c)[:c].float()
            right += torch.bincount(label[keep & (label == mask)], minlength=c)[:c].float()
            confident += int(keep.sum())
            total += int(valid.sum())
    print(f"\n{run_dir}: {source} at iteration {ckpt['iteration']}, {len(unlabeled)} unlabeled images, "
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
    p.add_argument("--threshold", type=float, default=0.8, help="confidence a pseudo label needs (default 0.8)")
    p.add_argument("--limit", type=int, default=256, help="at most this many unlabeled images")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for run in a.runs:
        quality(run, a.threshold, a.limit)


if __name__ == "__main__":
    main()
