"""mIoU of trained runs on their own *unlabeled* training images, per group (e.g. per CamVid sequence).

    python benchmarks/unlabeled_miou.py RUN_DIR [RUN_DIR ...] [--sep _]

For each run folder: the model of last.pt (what `semiseg eval` scores, with the run's precision and inference
settings) on the training images split.txt lists as unlabeled, against their true masks, which the dataset has
(CamVid: every frame is labeled; a study hides most labels). One confusion matrix per group, the group being an
image's name up to the first ``--sep``. A development signal for semi-supervised methods that is not the
validation split: it covers every training sequence, a dusk one included, where CamVid's val is one daylight
sequence. Transductive (the method trained on these images, never on their masks), so it rewards a method for
getting its own unlabeled images right, and shows where self-training drifts.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import Subset

from semiseg.data.splits import Split, group_of
from semiseg.engine import build
from semiseg.engine.evaluate import evaluate_groups, make_eval_loader
from semiseg.engine.predict import load_trained_model


def unlabeled_miou(run_dir: str, sep: str) -> dict[str, tuple[int, float]]:
    """{group: (images, mIoU in percent)} over the run's unlabeled training images, with "all"."""
    loaded = load_trained_model(os.path.join(run_dir, "last.pt"), device=torch.device("cpu"))
    cfg = loaded.cfg
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(loaded.info.normalization))
    _, unlabeled = Split.load(os.path.join(run_dir, "split.txt")).indices(list(dataset.names))
    names = [dataset.names[i] for i in unlabeled]
    groups = sorted({group_of(n, sep) for n in names})
    total, per_group = evaluate_groups(
        loaded.model, make_eval_loader(Subset(dataset, unlabeled), batch_size=cfg.eval.batch_size), loaded.info.num_classes,
        groups=groups, group_of=lambda n: group_of(n, sep), precision=loaded.precision,
        channels_last=loaded.channels_last, ignore_index=loaded.info.ignore_index, inference=loaded.inference)
    out = {g: (sum(group_of(n, sep) == g for n in names), 100 * float(per_group[g].compute()["miou"])) for g in groups}
    out["all"] = (len(names), 100 * float(total.compute()["miou"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--sep", default="_", help="the group is an image's name up to the first SEP (default _)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = {run: unlabeled_miou(run, a.sep) for run in a.runs}
    groups = sorted({g for r in results.values() for g in r if g != "all"}) + ["all"]
    print("| run | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for run, r in results.items():
        print(f"| {os.path.basename(os.path.normpath(run))} | "
              + " | ".join(f"{r[g][1]:.1f} ({r[g][0]})" if g in r else "-" for g in groups) + " |")


if __name__ == "__main__":
    main()
