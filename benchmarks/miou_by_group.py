"""Test mIoU of runs, per group of images: e.g. per CamVid sequence (0001TP, Seq05VD, ... = the name's prefix).

    python benchmarks/miou_by_group.py RUN_DIR [RUN_DIR ...] [--split test] [--sep _]

For each run folder: loads last.pt with its own precision and inference settings (as `semiseg eval` does), predicts
every image of the split and keeps one confusion matrix per group, the group being the image name up to the first
``--sep`` (CamVid's ``0001TP_008550`` -> ``0001TP``). Prints mIoU per group and over all images; the last must
equal the run's `semiseg eval` (a check that this script scores as the study does). A diagnostic: which part of a
test set a method wins or loses on.
"""

from __future__ import annotations

import argparse
import os

import torch

from semiseg.data.splits import group_of
from semiseg.engine import build
from semiseg.engine.evaluate import predict_logits
from semiseg.engine.predict import load_trained_model
from semiseg.metrics import ConfusionMatrix


def miou_by_group(run_dir: str, split: str, sep: str) -> dict[str, tuple[int, float]]:
    """{group: (images, mIoU in percent)}, with "all" for the whole split."""
    loaded = load_trained_model(os.path.join(run_dir, "last.pt"), device=torch.device("cpu"))
    dataset = build.build_dataset(loaded.cfg, split, build.eval_transform(loaded.info.normalization),
                                  validation=split == loaded.cfg.data.val_split)
    c, ignore = loaded.info.num_classes, loaded.info.ignore_index
    matrices: dict[str, ConfusionMatrix] = {"all": ConfusionMatrix(c, ignore)}
    counts: dict[str, int] = {"all": 0}
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            logits = predict_logits(loaded.model, sample["image"].unsqueeze(0), precision=loaded.precision,
                                    channels_last=loaded.channels_last, inference=loaded.inference)
            pred = logits.argmax(1)
            group = group_of(os.path.basename(sample["name"]), sep)  # the grouping of a stratified split
            for key in ("all", group):
                matrices.setdefault(key, ConfusionMatrix(c, ignore)).update(pred, sample["mask"].unsqueeze(0))
                counts[key] = counts.get(key, 0) + 1
    return {key: (counts[key], 100 * float(m.compute()["miou"])) for key, m in matrices.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", default="test")
    p.add_argument("--sep", default="_", help="the group is an image's name up to the first SEP (default _)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = {run: miou_by_group(run, a.split, a.sep) for run in a.runs}
    groups = sorted({g for r in results.values() for g in r if g != "all"}) + ["all"]
    first = next(iter(results.values()))
    print("| run | " + " | ".join(f"{g} ({first.get(g, (0,))[0]} images)" for g in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for run, r in results.items():
        print(f"| {os.path.basename(os.path.normpath(run))} | "
              + " | ".join(f"{r[g][1]:.1f}" if g in r else "-" for g in groups) + " |")


if __name__ == "__main__":
    main()
