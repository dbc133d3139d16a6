"""``semiseg study STUDY.yaml``: a grid of runs (method arms x label settings x seeds), resumable, and the
table that says whether the unlabeled images help.

    semiseg study configs/synthetic/study_example.yaml                 # run what is missing, then the table
    semiseg study configs/synthetic/study_example.yaml --dry-run       # the runs, their state, the commands
    semiseg study STUDY.yaml --jobs 1 --set train.iterations=4000      # one run at a time, a change for every run
    semiseg study STUDY.yaml --only 'supervised_*'                      # some runs first (shell-style patterns)
    semiseg study STUDY.yaml --table-only                              # table and plot from the finished runs
    semiseg study STUDY.yaml --table-only --only 'supervised_*' 'bcp_*'   # ... of some runs (the arms compared)

The study file format is described in semiseg/engine/study.py and the README. Runs go to
OUT/runs/<arm>_<labels>_s<seed> (OUT: --out, default runs/studies/<study name>), their output to OUT/logs/;
the results to OUT/study.md, OUT/study.json and OUT/study.png. Run the same command again after a crash
or a kill: finished runs are skipped, runs with a last.pt resume, the others start again.
"""

from __future__ import annotations

import argparse
import sys

from semiseg.commands.flags import describe


def configure(parser: argparse.ArgumentParser) -> None:
    describe(parser, __doc__)
    parser.add_argument("study", metavar="STUDY.yaml", help="the study file: recipe, arms, labels, seeds, baseline")
    parser.add_argument("--out", help="study folder (default: runs/studies/<study name>)")
    parser.add_argument("--jobs", "-j", type=int, default=None,
                        help="runs at once (default: the file's jobs, else min(2, cores)); each gets cores // jobs threads")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="recipe overrides for every run, after the file's and the arms' set")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="run only the runs whose name matches (fnmatch); with --table-only, the table of only those")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the runs, their state and the commands; run nothing")
    mode.add_argument("--table-only", action="store_true", help="write the table and plot from the finished runs")


def run(args: argparse.Namespace) -> int:
    from semiseg.config import ConfigError
    from semiseg.engine.study import StudyError, load_study, run_study

    if args.jobs is not None and args.jobs < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        study = load_study(args.study, args.overrides)
        return run_study(study, args.out, jobs=args.jobs, only=args.only, dry_run=args.dry_run,
                         table_only=args.table_only)
    except (StudyError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the runs were stopped; run the same command again to continue", file=sys.stderr)
        return 130
