"""Would a model's BatchNorm statistics of one image group (AdaBN) fix its predictions on that group?

    python benchmarks/bn_adaptation_probe.py RUN_DIR [RUN_DIR ...] [--sep _] [--threads 1]

A diagnostic for semi-supervised runs whose unlabeled images come in groups that look different (CamVid's video
sequences: the dusk one, 0001TP, is much darker). For each run folder and each group of its unlabeled training
images (the names split.txt lists as unlabeled, grouped by the name up to the first ``--sep``), the mIoU against
their true masks (CamVid labels every frame; the study hides most labels):

* as trained: the model of last.pt with its running BatchNorm statistics (what a teacher uses for pseudo labels);
* adapted: the same weights with every BatchNorm layer's running mean and variance recomputed from that group's
  own unlabeled images (Li et al. 2016, "Revisiting Batch Normalization For Practical Domain Adaptation"), at the
  run's inference settings; no label is read for this.

If the adapted number is much higher on a group no label came from, the model's errors there are partly a shift of
the feature statistics, and a teacher with per-group statistics would give better pseudo labels there. Transductive
by design (the images are the run's own unlabeled ones); never the split a result is reported on.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from torch import nn
from torch.utils.data import Subset

from semiseg.data.splits import Split, group_of
from semiseg.engine import build
from semiseg.engine.evaluate import evaluate, make_eval_loader, same_size_groups
from semiseg.engine.predict import load_trained_model
from semiseg.inference import infer


@torch.no_grad()
def with_group_statistics(model: nn.Module, loader, *, precision: str, channels_last: bool, inference) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the (equal-weight) average over ``loader``."""
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches, not an exponential one
        bn.train()
    for batch in loader:
        for images, _, _ in same_size_groups(batch):
            if images.shape[0] < 2:  # a pooled 1x1 feature (ASPP's image branch) has one value per channel
                continue
            infer(adapted, images, inference, precision=precision, channels_last=channels_last)
    return adapted.eval()


def probe(run_dir: str, sep: str) -> dict[str, tuple[int, float, float]]:
    """{group: (unlabeled images, mIoU as trained, mIoU with the group's own BN statistics)}, in percent."""
    loaded = load_trained_model(os.path.join(run_dir, "last.pt"), device=torch.device("cpu"))
    cfg = loaded.cfg
    dataset = build.build_dataset(cfg, cfg.data.train_split, build.eval_transform(loaded.info.normalization))
    _, unlabeled = Split.load(os.path.join(run_dir, "split.txt")).indices(list(dataset.names))
    groups: dict[str, list[int]] = {}
    for i in unlabeled:
        groups.setdefault(group_of(dataset.names[i], sep), []).append(i)
    modes = dict(precision=loaded.precision, channels_last=loaded.channels_last, inference=loaded.inference)
    out = {}
    for group, indices in sorted(groups.items()):
        loader = make_eval_loader(Subset(dataset, indices), batch_size=cfg.eval.batch_size)
        scores = []
        for model in (loaded.model, with_group_statistics(loaded.model, loader, **modes)):
            cm = evaluate(model, loader, loaded.info.num_classes, ignore_index=loaded.info.ignore_index, **modes)
            scores.append(100 * float(cm.compute()["miou"]))
        out[group] = (len(indices), *scores)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--sep", default="_", help="the group is an image's name up to the first SEP (default _)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print("| run | group (unlabeled images) | as trained | own BN statistics | change |")
    print("|---|---|---|---|---|")
    for run in a.runs:
        for group, (n, before, after) in probe(run, a.sep).items():
            print(f"| {os.path.basename(os.path.normpath(run))} | {group} ({n}) | {before:.1f} | {after:.1f} | "
                  f"{after - before:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
