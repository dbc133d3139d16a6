"""mIoU of runs per group of images: e.g. per CamVid sequence (0001TP, Seq05VD, ... = the name's prefix).

    python benchmarks/miou_by_group.py RUN_DIR [RUN_DIR ...] [--split test] [--sep _]
    python benchmarks/miou_by_group.py RUN_DIR [RUN_DIR ...] --unlabeled
    python benchmarks/miou_by_group.py RUN_DIR [RUN_DIR ...] --unlabeled --teacher   # the runs' EMA teachers

For each run folder, the model of last.pt with the run's own precision and inference settings, one confusion matrix
per group (an image's name up to the first ``--sep``: CamVid's ``0001TP_008550`` -> ``0001TP``), in one markdown table,
a row per run, each cell "mIoU (images)":

* ``--split S`` (default test): `semiseg eval RUN_DIR/last.pt --split S --group-by SEP`; "all" is `semiseg eval`'s
  number. Which part of a test set a method wins or loses on.
* ``--unlabeled``: the training images the run's split.txt lists as unlabeled, against their true masks, which the
  dataset has (CamVid labels every frame; a study hides most labels). A development signal for semi-supervised
  methods that is not the validation split: it covers every training sequence, the dusk one included, where CamVid's
  val is one daylight sequence. Transductive (the method trained on these images, never on their masks): it rewards
  getting one's own unlabeled images right and shows where self-training drifts.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import torch
from torch.utils.data import Subset

from semiseg.data.splits import Split, group_of
from semiseg.engine import build
from semiseg.engine.evaluate import evaluate_checkpoint, evaluate_groups, make_eval_loader
from semiseg.engine.predict import load_trained_model


def miou_by_group(run_dir: str, split: str, sep: str, teacher: bool = False) -> dict[str, tuple[int, float]]:
    """{group: (images, mIoU in percent)} on a split, with "all" for the whole split."""
    result = evaluate_checkpoint(os.path.join(run_dir, "last.pt"), split=split, device="cpu", group_by=sep,
                                 teacher=teacher)
    out = {g: (r["images"], 100 * r["metrics"]["miou"]) for g, r in result["groups"].items()}
    out["all"] = (result["data"]["samples"], 100 * result["metrics"]["miou"])
    return out


def unlabeled_miou_by_group(run_dir: str, sep: str, teacher: bool = False) -> dict[str, tuple[int, float]]:
    """{group: (images, mIoU in percent)} over the run's unlabeled training images, with "all"."""
    loaded = load_trained_model(os.path.join(run_dir, "last.pt"), device=torch.device("cpu"), teacher=teacher)
    cfg = loaded.cfg
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(loaded.info.normalization))
    _, unlabeled = Split.load(os.path.join(run_dir, "split.txt")).indices(list(dataset.names))
    images_per_group = Counter(group_of(dataset.names[i], sep) for i in unlabeled)
    loader = make_eval_loader(Subset(dataset, unlabeled), batch_size=cfg.eval.batch_size)
    total, per_group = evaluate_groups(loaded.model, loader, loaded.info.num_classes, groups=sorted(images_per_group),
                                       group_of=lambda n: group_of(n, sep), precision=loaded.precision,
                                       channels_last=loaded.channels_last, ignore_index=loaded.info.ignore_index,
                                       inference=loaded.inference)
    out = {g: (images_per_group[g], 100 * float(m.compute()["miou"])) for g, m in per_group.items()}
    out["all"] = (len(unlabeled), 100 * float(total.compute()["miou"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", default="test")
    p.add_argument("--unlabeled", action="store_true", help="score each run's unlabeled training images instead")
    p.add_argument("--sep", default="_", help="the group is an image's name up to the first SEP (default _)")
    p.add_argument("--teacher", action="store_true", help="score each run's EMA teacher instead of its model")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    score = (lambda run: unlabeled_miou_by_group(run, a.sep, a.teacher)) if a.unlabeled else \
        (lambda run: miou_by_group(run, a.split, a.sep, a.teacher))
    results = {run: score(run) for run in a.runs}
    groups = sorted({g for r in results.values() for g in r if g != "all"}) + ["all"]
    print("| run | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for run, r in results.items():
        print(f"| {os.path.basename(os.path.normpath(run))} | "
              + " | ".join(f"{r[g][1]:.1f} ({r[g][0]})" if g in r else "-" for g in groups) + " |")


if __name__ == "__main__":
    main()
