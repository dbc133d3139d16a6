"""``semiseg quickstart``: do unlabeled images help? Supervised vs semi-supervised on one seeded split, on a CPU.

Trains a small U-Net (from scratch: no download) twice on the built-in synthetic scenes of 7 shape classes, on
the same seeded split of 1,000 training scenes where 1/8 (125) keep their labels: supervised on the 125 labeled
scenes only, and semi-supervised (consistency training with a moving-average teacher, per-class selection of its
pseudo labels and Bidirectional Copy-Paste) on the 125 labeled plus the 875 unlabeled ones, with the same seed,
data order and number of steps; each is then scored on 200 held-out test scenes with its last checkpoint. It
prints both mIoUs and the gain, and leaves a study folder:

    runs/quickstart/study.md, study.json   the table: mIoU per run, the gain (`semiseg study` made it)
    runs/quickstart/study.yaml, recipe.yaml the study and its base recipe: `semiseg study runs/quickstart/study.yaml`
    runs/quickstart/runs/<arm>_1-8_s0/     each run: config, split, checkpoints, metrics (`semiseg report` it)
    runs/quickstart/predictions/           a few test scenes: image | truth | supervised | semi-supervised

The default is the shortest regime measured where the unlabeled scenes pay: 64 px scenes and 800 iterations,
+3.0 / +8.0 / +5.8 test mIoU over three seeds with one thread per run, +2.9 / +6.8 / +6.7 with two; about 5
minutes on a 2-core CPU without bf16. The two runs go one after the other on all cores, or side by side, whichever
a few seconds' timing of this machine's threads says is sooner (cached; `--jobs` decides instead).
`--large-scenes` runs the payoff study's 128 px scenes and recipes: 200 iterations by default, too few for the
unlabeled scenes to pay; `--large-scenes --iters 3000` and `--iters 1500` are that study's schedules
(configs/synthetic/study_payoff_unet.yaml), where they did (56% and 32% of the gap to the all-label model closed
with 125 labels, over two seeds).
One seed is a demonstration, not a result: BENCHMARKS.md has the comparison over seeds and label fractions.
An existing runs/quickstart is kept: the next run goes to runs/quickstart-2 and so on.
"""

from __future__ import annotations

import argparse

from semiseg.commands.flags import describe

from semiseg.engine.quickstart import DEFAULT_RUN_DIR, FAST_ITERATIONS, LARGE_SCENES, SMALL_SCENES


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="change both runs' config, e.g. train.precision=fp32")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="where to write (default: runs/quickstart)")
    parser.add_argument("--iters", type=int, help=f"training iterations of each run (default {SMALL_SCENES['train.iterations']}; "
                        f"{LARGE_SCENES['train.iterations']} with --large-scenes)")
    regime = parser.add_mutually_exclusive_group()
    regime.add_argument("--large-scenes", action="store_true",
                        help="the payoff study's 128 px scenes and recipes (with --iters 1500 or 3000: its schedules)")
    regime.add_argument("--small-scenes", action="store_true", help=argparse.SUPPRESS)  # the default since Q10
    parser.add_argument("--fast", action="store_true", help=f"{FAST_ITERATIONS} iterations on less data: checks the pipeline, not the model")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: measured on 2+ cores: 1 when a run on all of them is fast enough)")
    parser.add_argument("--predictions", type=int, default=4, help="test scenes to render into predictions/")
    parser.add_argument("--no-progress", action="store_true", help="accepted for compatibility; the runs log to files")


def run(args: argparse.Namespace) -> int:
    from semiseg.engine.quickstart import run_quickstart

    return run_quickstart(args.overrides, run_dir=args.run_dir, iterations=args.iters, fast=args.fast, jobs=args.jobs,
                          predictions=args.predictions, large_scenes=args.large_scenes)
