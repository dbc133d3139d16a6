"""Test mIoU of runs, per group of images: e.g. per CamVid sequence (0001TP, Seq05VD, ... = the name's prefix).

    python benchmarks/miou_by_group.py RUN_DIR [RUN_DIR ...] [--split test] [--sep _]

For each run folder: `semiseg eval RUN_DIR/last.pt --split SPLIT --group-by SEP` (the run's own precision and
inference settings; its "all" column is `semiseg eval`'s number), gathered into one markdown table, a row per run.
A diagnostic: which part of a test set a method wins or loses on.
"""

from __future__ import annotations

import argparse
import os

import torch

from semiseg.engine.evaluate import evaluate_checkpoint


def miou_by_group(run_dir: str, split: str, sep: str) -> dict[str, tuple[int, float]]:
    """{group: (images, mIoU in percent)}, with "all" for the whole split."""
    result = evaluate_checkpoint(os.path.join(run_dir, "last.pt"), split=split, device="cpu", group_by=sep)
    out = {g: (r["images"], 100 * r["metrics"]["miou"]) for g, r in result["groups"].items()}
    out["all"] = (result["data"]["samples"], 100 * result["metrics"]["miou"])
    return out


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
