"""Where each class's pixels go: the top predicted classes per true class, from `semiseg eval --out` files.

    python benchmarks/top_confusions.py RUN/eval_test_last.json [...] [--classes pavement tree] [--top 3]

Reads the confusion matrix each eval JSON holds (rows: true class, columns: predicted; no model is run) and prints
a markdown table, a row per file, a cell per class: the share of that class's labelled pixels predicted as each of
its ``--top`` most frequent predictions (the class itself included, so "pavement 54, road 44" says 44% of the
pavement pixels were called road). Which confusions a method removes and which it leaves (BENCHMARKS.md, CamVid
12 labels: pavement/road and tree/building).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def top_confusions(confusion: np.ndarray, classes: list[str], wanted: list[str],
                   top: int) -> dict[str, list[tuple[str, float]]]:
    """{class: [(predicted class, share of the class's labelled pixels), ...]} for the ``top`` largest shares,
    largest first; a class with no labelled pixel gets an empty list."""
    confusion = np.asarray(confusion, dtype=np.float64)
    out = {}
    for name in wanted:
        row = confusion[classes.index(name)]
        total = row.sum()
        if total == 0:
            out[name] = []
            continue
        order = np.argsort(-row, kind="stable")[:top]
        out[name] = [(classes[j], float(row[j] / total)) for j in order]
    return out


def load_eval(path: str) -> tuple[np.ndarray, list[str]]:
    with open(path) as f:
        result = json.load(f)
    if "confusion_matrix" not in result or "classes" not in result:
        raise SystemExit(f"{path}: no confusion matrix in it; write one with `semiseg eval CHECKPOINT --out {path}`")
    return np.asarray(result["confusion_matrix"]), list(result["classes"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("evals", nargs="+", metavar="EVAL.json", help="files written by `semiseg eval ... --out`")
    p.add_argument("--classes", nargs="+", help="the true classes to show (default: all)")
    p.add_argument("--top", type=int, default=3, help="predicted classes per true class (default 3)")
    a = p.parse_args()
    if a.top < 1:
        p.error("--top must be >= 1")
    wanted = a.classes
    rows = []
    for path in a.evals:
        confusion, classes = load_eval(path)
        wanted = wanted or classes  # the first file's classes when none are named
        unknown = [c for c in wanted if c not in classes]
        if unknown:
            p.error(f"{path}: no class {', '.join(unknown)}; its classes are {', '.join(classes)}")
        shares = top_confusions(confusion, classes, wanted, a.top)
        # A run's eval file is RUN/eval_*.json: the run folder's name says which run the row is.
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
        rows.append((label, shares))
    print("| run | " + " | ".join(wanted) + " |")
    print("|---|" + "---|" * len(wanted))
    for label, shares in rows:
        cells = [", ".join(f"{c} {100 * s:.0f}" for c, s in shares[name]) or "-" for name in wanted]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
