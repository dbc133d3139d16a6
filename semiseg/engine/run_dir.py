"""The run folder: what it holds, and the rule that an existing run is never overwritten by accident.

Layout (all written by rank 0)::

    RUN_DIR/config.yaml     the resolved config (every value, defaults included)
    RUN_DIR/split.txt       the labeled/unlabeled sample names (semiseg.data.splits format)
    RUN_DIR/last.pt         the latest checkpoint (model, optimizer, scheduler, RNG, data position)
    RUN_DIR/best.pt         the checkpoint with the best validation mIoU so far
    RUN_DIR/metrics.jsonl   one JSON object per log / evaluation event
    RUN_DIR/tb/             TensorBoard events (when tensorboard is installed)
"""

from __future__ import annotations

import os
import shutil

CONFIG = "config.yaml"
SPLIT = "split.txt"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
# Files whose presence marks a folder as a semiseg run (and so as safe to delete with --overwrite).
RUN_MARKERS = (CONFIG, SPLIT, "last.pt", "best.pt", METRICS)


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (exists, or has nothing to resume)."""


def is_run_dir(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in RUN_MARKERS)


def has_checkpoint(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("last.pt", "best.pt"))


def prepare_run_dir(path: str, *, resume: bool = False, overwrite: bool = False) -> str:
    """Create ``path`` for a new run, or check it for a resume. Returns the absolute path.

    * new run, folder missing or empty: created;
    * new run, folder has content: refused, unless ``overwrite`` and the folder is a semiseg run folder
      (then its content is deleted; any other folder is never deleted); a run folder without any
      checkpoint (a run that failed before its first one) is replaced without asking;
    * resume: the folder must hold ``last.pt``.
    """
    path = os.path.abspath(path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: resume continues the run, overwrite deletes it")
    if resume:
        if not os.path.isfile(os.path.join(path, "last.pt")):
            raise RunDirError(
                f"nothing to resume in {path}: no last.pt (the run stopped before its first checkpoint, or the "
                "path is wrong); start it again without --resume (add --overwrite if the folder exists)"
            )
        return path
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite and is_run_dir(path) and not has_checkpoint(path):
            # A run that failed before its first checkpoint left config/split/log files but nothing to resume:
            # refusing would ask for a --resume that cannot work. Start again in its place.
            print(f"note: {path} holds a run that stopped before its first checkpoint; starting it again there")
            overwrite = True
        if not overwrite:
            raise RunDirError(
                f"run folder {path} already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another folder (--run-dir DIR or name=NEW_NAME)"
            )
        if not is_run_dir(path):
            raise RunDirError(
                f"refusing to overwrite {path}: it is not empty and does not look like a semiseg run folder "
                f"(none of {', '.join(RUN_MARKERS)}); choose another --run-dir"
            )
        shutil.rmtree(path)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"{path} exists and is a file, not a folder; choose another --run-dir")
    os.makedirs(path, exist_ok=True)
    return path


def unique_run_dir(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``... the first that does not exist yet (for the quickstart)."""
    if not os.path.exists(path):
        return path
    i = 2
    while os.path.exists(f"{path}-{i}"):
        i += 1
    return f"{path}-{i}"


__all__ = ["CONFIG", "SPLIT", "METRICS", "TENSORBOARD", "RunDirError", "is_run_dir", "prepare_run_dir", "unique_run_dir"]
