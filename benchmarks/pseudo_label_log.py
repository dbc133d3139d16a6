"""What a semi-supervised run logged about its pseudo labels, per window of steps, and its training wall time.

    python benchmarks/pseudo_label_log.py RUN_DIR [RUN_DIR ...] [--windows 400-800 800-1000 1500-2000 3500-4000]

Reads each run's metrics.jsonl (no model is run): the mean of the logged ``pseudo_acc`` (the share of kept pseudo
labels that are right, logged with ``method.options.log_pseudo_accuracy`` when the unlabeled images' masks are on
disk) and ``mask_ratio`` (the share of unlabeled pixels kept) over the train records whose step is in (lo, hi].
How BENCHMARKS.md follows pseudo labels over training (issue 11 item 5); ``semiseg report`` plots the same curves and
``semiseg study`` lists each run's last 10% of steps.
"""

from __future__ import annotations

import argparse
import os

from semiseg.engine.logger import read_metrics
from semiseg.engine.study_report import format_share, mean_logged, train_seconds


def window_means(records: list[dict], key: str, windows: list[tuple[int, int]]) -> list[float | None]:
    """Mean of ``key`` over the train records with lo < iteration <= hi, per window; None where nothing was logged
    (NaN values - a step with no kept pixel - are left out: ``mean_logged``, which the study's table uses too)."""
    return [mean_logged(records, key, lo, hi) for lo, hi in windows]


def parse_window(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) >= int(hi):
        raise argparse.ArgumentTypeError(f"{text!r}: a window is LO-HI in steps, e.g. 800-1000")
    return int(lo), int(hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--windows", nargs="+", type=parse_window, metavar="LO-HI",
                   default=[(400, 800), (800, 1000), (1500, 2000), (3500, 4000)])
    a = p.parse_args()
    names = [f"{lo}-{hi}" for lo, hi in a.windows]
    print("| run | kept right, steps " + " / ".join(names) + " | kept share, same steps | train time |")
    print("|---|---|---|---|")
    for run in a.runs:
        records = read_metrics(run)
        seconds = train_seconds(records)
        print(f"| {os.path.basename(os.path.normpath(run))} | "
              + " / ".join(format_share(v) for v in window_means(records, "pseudo_acc", a.windows)) + " | "
              + " / ".join(format_share(v) for v in window_means(records, "mask_ratio", a.windows)) + " | "
              + ("-" if seconds is None else f"{seconds / 60:.1f} min") + " |")


if __name__ == "__main__":
    main()
