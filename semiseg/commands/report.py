"""``semiseg report RUN_DIR``: an HTML page of a run, with plots, for reading results and sharing them.

    semiseg report runs/quickstart                       # -> runs/quickstart/report/index.html
    semiseg report runs/camvid --eval runs/camvid/eval_test.json --samples 8 --split test

The page shows the training curves (loss, learning rate, validation mIoU from ``metrics.jsonl``), and for
every evaluation JSON written by ``semiseg eval`` (all ``eval_*.json`` of the run by default) the per-class
IoU as a bar chart, the row-normalised confusion matrix and the numbers; then a few images of a split with
their ground truth, the prediction and an overlay. Plots need matplotlib (``pip install "semiseg[plots]"``);
coloured masks and overlays need only numpy and Pillow.
"""

from __future__ import annotations

import argparse
import sys

from semiseg.commands.flags import add_allow_code_argument, describe
from semiseg.report import REPORT_DIR


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `semiseg train`")
    parser.add_argument("--eval", nargs="+", dest="evals", metavar="JSON",
                        help="evaluation files from `semiseg eval` (default: the run's eval_*.json)")
    parser.add_argument("--samples", type=int, default=4, help="images to predict and show (0: none)")
    parser.add_argument("--split", help="split the samples come from (default: the run's validation split)")
    parser.add_argument("--out", help=f"output folder (default: RUN_DIR/{REPORT_DIR})")
    parser.add_argument("--device", default="auto")
    add_allow_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from semiseg.config import ConfigError
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.report import build_report

    try:
        index = build_report(args.run_dir, evals=args.evals, samples=args.samples, split=args.split,
                             out_dir=args.out, device=args.device, allow_code=args.allow_code)
    except (FileNotFoundError, ValueError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0
