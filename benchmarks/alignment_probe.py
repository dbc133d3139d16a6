"""Would distribution alignment per group of images keep the pseudo labels of a group the labels miss closer to the
truth than one alignment for all? An offline probe of finished runs (no training).

    python benchmarks/alignment_probe.py RUN_DIR [RUN_DIR ...] [--sep _] [--keep 0.5] [--threads 1]

For each run folder: the model of last.pt predicts the run's unlabeled training images (split.txt; whole images the
way the recipe evaluates, e.g. at ``eval.scales: [0.5]``; probabilities pooled 2x2 to save memory) and, per group
(an image's name up to the first ``--sep``: CamVid's sequences), prints the mean predicted and the true class
distribution, then for three variants of the teacher's probabilities - no alignment, one alignment for all
(``labeled / mean prediction over all unlabeled images``, the recipe's ``distribution_alignment``) and one per group
(``labeled / the group's mean prediction``, ``da_group_by``) - the argmax's mIoU per group and the share and accuracy
of the pixels per-class selection keeps (``per_class_keep``; thresholds over all images pooled). ``labeled``: the
class frequencies of the run's labeled images. The masks of unlabeled images are only compared with, as in
pseudo_label_quality.py. Offline means the means are of the finished model, not the running means of training.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from semiseg.data.splits import Split, group_of
from semiseg.engine import build
from semiseg.engine.evaluate import make_eval_loader, predict_logits, same_size_groups
from semiseg.engine.methods.teacher import class_thresholds
from semiseg.engine.predict import load_trained_model
from semiseg.metrics import ConfusionMatrix


def _pct(values: torch.Tensor) -> str:
    return " / ".join(f"{100 * v:.0f}" for v in values.tolist())


def probe(run_dir: str, sep: str, keep: float) -> None:
    loaded = load_trained_model(os.path.join(run_dir, "last.pt"), device=torch.device("cpu"))
    cfg, info = loaded.cfg, loaded.info
    c, ignore = info.num_classes, info.ignore_index
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(info.normalization))
    labeled, unlabeled = Split.load(os.path.join(run_dir, "split.txt")).indices(list(dataset.names))

    counts = torch.zeros(c)
    for i in labeled:
        mask = dataset[i]["mask"]
        counts += torch.bincount(mask[(mask != ignore) & (mask < c)].flatten(), minlength=c).float()
    prior = counts / counts.sum()

    probs, masks, groups = [], [], []
    loaded.model.eval()
    with torch.no_grad():
        for batch in make_eval_loader(Subset(dataset, unlabeled), batch_size=4):
            for images, batch_masks, names in same_size_groups(batch):
                logits = predict_logits(loaded.model, images, precision=loaded.precision,
                                        channels_last=loaded.channels_last, inference=loaded.inference)
                probs.append(F.avg_pool2d(logits.float().softmax(1), 2))
                masks.append(batch_masks[:, ::2, ::2])
                groups += [group_of(n, sep) for n in names]
    p, m = torch.cat(probs), torch.cat(masks)
    names = sorted(set(groups))
    index = torch.tensor([names.index(g) for g in groups])
    valid = (m != ignore) & (m < c)

    print(f"\n## {run_dir}\n\nclasses: {', '.join(info.classes)}; labeled frequencies (%): {_pct(prior)}\n")
    print("| group | images | predicted (%) | true (%) |\n|---|---|---|---|")
    group_mean = []
    for j, g in enumerate(names):
        rows = index == j
        group_mean.append(p[rows].mean(dim=(0, 2, 3)))
        true = torch.bincount(m[rows][valid[rows]], minlength=c).float()
        print(f"| {g} | {int(rows.sum())} | {_pct(group_mean[-1])} | {_pct(true / true.sum())} |")

    variants = {"none": torch.ones(len(groups), c),
                "one for all": (prior / p.mean(dim=(0, 2, 3))).expand(len(groups), c),
                "per group": torch.stack([prior / group_mean[j] for j in range(len(names))])[index]}
    print("\n| alignment | " + " | ".join(f"{g}: mIoU, kept, kept right" for g in names) + " | all: mIoU |")
    print("|---|" + "---|" * (len(names) + 1))
    for variant, ratio in variants.items():
        aligned = p * ratio.view(-1, c, 1, 1)
        conf, label = (aligned / aligned.sum(1, keepdim=True)).max(1)
        kept = conf >= class_thresholds(conf, label, torch.ones_like(valid), c, keep)[label]
        total = ConfusionMatrix(c, ignore_index=ignore)
        total.update(label, m)
        cells = []
        for j in range(len(names)):
            rows = index == j
            cm = ConfusionMatrix(c, ignore_index=ignore)
            cm.update(label[rows], m[rows])
            k = kept[rows] & valid[rows]
            right = (label[rows][k] == m[rows][k]).float().mean().item()
            cells.append(f"{100 * float(cm.compute()['miou']):.1f}, {k.sum().item() / valid[rows].sum().item():.2f}, "
                         f"{100 * right:.0f}%")
        print(f"| {variant} | " + " | ".join(cells) + f" | {100 * float(total.compute()['miou']):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--sep", default="_", help="the group is an image's name up to the first SEP (default _)")
    parser.add_argument("--keep", type=float, default=0.5, help="per-class share of pseudo labels kept (default 0.5)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        probe(run, args.sep, args.keep)


if __name__ == "__main__":
    main()
