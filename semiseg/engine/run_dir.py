"""The run folder: what it holds, the rule that an existing run is never overwritten by accident, and its lock.

Layout (all written by rank 0)::

    RUN_DIR/.semiseg-run    marker: semiseg created this folder (only such a folder is cleared by --overwrite)
    RUN_DIR/.semiseg.lock   held (flock) by the training process that uses the folder; holds its PID
    RUN_DIR/config.yaml     the resolved config (every value, defaults included)
    RUN_DIR/split.txt       the labeled/unlabeled sample names (semiseg.data.splits format)
    RUN_DIR/last.pt         the latest checkpoint (model, optimizer, scheduler, RNG, data position)
    RUN_DIR/best.pt         the checkpoint with the best validation mIoU so far
    RUN_DIR/metrics.jsonl   one JSON object per log / evaluation event
    RUN_DIR/tb/             TensorBoard events (when tensorboard is installed)

Later commands may add ``eval_<split>.json`` (semiseg eval), ``last.onnx`` / ``best.onnx`` (semiseg export),
``report/`` (semiseg report) and ``predictions/`` (the quickstart). ``--overwrite`` deletes exactly these
files (:data:`RUN_FILES`, :data:`RUN_SUBDIRS`) in a folder holding the marker; anything else in the folder is
kept and named. A folder without the marker (not made by semiseg, or by a semiseg before the marker existed)
is never cleared.
"""

from __future__ import annotations

import fnmatch
import os
import sys

CONFIG = "config.yaml"
SPLIT = "split.txt"
METRICS = "metrics.jsonl"
TENSORBOARD = "tb"
MARKER = ".semiseg-run"
LOCK = ".semiseg.lock"
# Files whose presence makes a folder look like a semiseg run (used in messages; --overwrite needs MARKER).
RUN_MARKERS = (CONFIG, SPLIT, "last.pt", "best.pt", METRICS)
# What semiseg writes at the top of a run folder (glob patterns), and the temporary names of its atomic writes.
_WRITTEN = (CONFIG, SPLIT, "last.pt", "best.pt", METRICS, "eval_*.json", "last.onnx", "best.onnx")
RUN_FILES = (MARKER, *_WRITTEN, *(f".{p}.tmp-*" for p in _WRITTEN), f"{CONFIG}.tmp-*", f"{SPLIT}.tmp")
# Sub-folders semiseg writes, with the files it puts in them; a sub-folder is removed once it is empty.
RUN_SUBDIRS = {
    TENSORBOARD: ("events.out.tfevents.*",),
    "report": ("index.html", ".index.html.tmp-*", "curves.png", "iou_*.png", "confusion_*.png", "sample_*.png"),
    "predictions": ("*_pred.png", "*_panel.png"),
}


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (exists, in use, not a run, or has nothing to resume)."""


def is_run_dir(path: str) -> bool:
    """The folder looks like a semiseg run (any of its files). Only :func:`has_marker` folders are overwritten."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in (MARKER, *RUN_MARKERS))


def has_checkpoint(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("last.pt", "best.pt"))


def has_marker(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


# ---------------------------------------------------------------------------------------------------
# lock


class RunLock:
    """An exclusive lock on a run folder for the life of a training process.

    ``fcntl.flock`` on ``RUN_DIR/.semiseg.lock``: the operating system releases it when the process ends in any way
    (kill -9 included), so a lock is never stale; the file stays and holds the PID of the last holder, for the
    message. On systems without ``fcntl`` (Windows) the lock is a no-op.
    """

    def __init__(self, run_dir: str):
        self.run_dir = os.path.abspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunDirError(
                f"run folder {self.run_dir} is in use by another semiseg training process (PID {holder}); wait for "
                f"it to finish or stop it (kill {holder}) before you resume, or train into another folder "
                "(name=NEW_NAME or --run-dir DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # a Trainer dropped without finishing releases its folder
        try:
            self.release()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------------
# creating, checking and clearing


def _entries(path: str) -> list[str]:
    return sorted(e for e in os.listdir(path) if e != LOCK) if os.path.isdir(path) else []


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def clear_run_dir(path: str) -> list[str]:
    """Delete what semiseg wrote in the run folder ``path`` (:data:`RUN_FILES`, :data:`RUN_SUBDIRS`); the marker
    and the lock file stay. Returns the entries it kept because semiseg did not write them."""
    kept = []
    for name in _entries(path):
        full = os.path.join(path, name)
        if name == MARKER:
            continue
        if name in RUN_SUBDIRS and os.path.isdir(full) and not os.path.islink(full):
            for inner in sorted(os.listdir(full)):
                inner_full = os.path.join(full, inner)
                if _matches(inner, RUN_SUBDIRS[name]) and (os.path.islink(inner_full) or os.path.isfile(inner_full)):
                    os.remove(inner_full)
                else:
                    kept.append(os.path.join(name, inner))
            if not os.listdir(full):
                os.rmdir(full)
        elif _matches(name, RUN_FILES) and (os.path.islink(full) or os.path.isfile(full)):
            os.remove(full)  # a symlink is removed, never what it points to
        else:
            kept.append(name)
    return kept


def prepare_run_dir(path: str, *, resume: bool = False, overwrite: bool = False, lock: RunLock | None = None) -> str:
    """Create ``path`` for a new run, or check it for a resume. Returns the absolute path.

    * new run, folder missing or empty: created, with the marker file;
    * new run, folder has content: refused, unless ``overwrite`` and the folder holds the marker (semiseg made
      it): then the files semiseg wrote are deleted (anything else is kept and named on stderr); a marked folder
      without any checkpoint (a run that failed before its first one) is started again without asking;
    * resume: the folder must hold ``last.pt``.

    ``lock`` (a :class:`RunLock` of ``path``) is acquired before anything is deleted or written, and the folder is
    checked again under it, so two processes never start in one folder.
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
        if lock is not None:
            lock.acquire()
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"{path} exists and is a file, not a folder; choose another --run-dir")

    def check(entries: list[str]) -> None:
        nonlocal overwrite
        if not entries:
            return
        if not overwrite and MARKER in entries and not has_checkpoint(path):
            # A run that failed before its first checkpoint left config/split/log files but nothing to resume:
            # refusing would ask for a --resume that cannot work. Start again in its place (semiseg's files only).
            print(f"note: {path} holds a run that stopped before its first checkpoint; starting it again there")
            overwrite = True
        if not overwrite:
            raise RunDirError(
                f"run folder {path} already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another folder (--run-dir DIR or name=NEW_NAME)"
            )
        if MARKER not in entries:
            looks = is_run_dir(path)
            raise RunDirError(
                f"refusing to overwrite {path}: it was not created by semiseg (no {MARKER} marker), so --overwrite "
                "cannot tell its files from yours"
                + (" (a run folder of a semiseg older than the marker: delete it yourself if you mean to replace it)"
                   if looks else "") + "; choose another folder (--run-dir DIR or name=NEW_NAME)"
            )

    check(_entries(path))  # before anything is created: a refused folder is left exactly as it was
    os.makedirs(path, exist_ok=True)
    if lock is not None:
        lock.acquire()
    try:
        entries = _entries(path)  # again, under the lock: another process may have started here meanwhile
        check(entries)
        if entries:
            kept = clear_run_dir(path)
            if kept:
                print(f"--overwrite: deleted the run files of {path}; kept what semiseg did not write: "
                      f"{', '.join(kept)}", file=sys.stderr)
        with open(os.path.join(path, MARKER), "w", encoding="utf-8") as f:
            f.write("semiseg run folder: --overwrite may delete the files semiseg wrote here, nothing else\n")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return path


def remove_if_unused(path: str, *, created: bool) -> None:
    """After a new run failed to start: remove the marker and lock file if nothing else was written, and the
    folder itself when this run ``created`` it."""
    if not os.path.isdir(path) or set(_entries(path)) - {MARKER}:
        return
    for name in (MARKER, LOCK):
        try:
            os.remove(os.path.join(path, name))
        except FileNotFoundError:
            pass
    if created and not os.listdir(path):
        os.rmdir(path)


def unique_run_dir(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``... the first that does not exist yet (for the quickstart)."""
    if not os.path.exists(path):
        return path
    i = 2
    while os.path.exists(f"{path}-{i}"):
        i += 1
    return f"{path}-{i}"


__all__ = ["CONFIG", "SPLIT", "METRICS", "TENSORBOARD", "MARKER", "LOCK", "RUN_FILES", "RUN_SUBDIRS", "RunDirError",
           "RunLock", "is_run_dir", "has_marker", "clear_run_dir", "prepare_run_dir", "remove_if_unused",
           "unique_run_dir"]
