"""Atomic file writes: a reader (or a run killed at any moment) sees the old file or the new one, never half.

The one recipe every file semiseg writes for keeps goes through: a temporary file in the target's own directory
(``.NAME.tmp-PID``, so the rename never crosses a file system), flushed and fsynced, then ``os.replace``d over the
target (atomic on POSIX and Windows), then the directory fsynced so the rename itself is durable. A stale
temporary file left by a killed writer is removed by the next write. A leaf: standard library only.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import IO, Callable, Iterator


def _fsync_dir(path: str) -> None:
    # The rename itself is only durable once the directory entry is on disk (POSIX; a no-op elsewhere).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, makedirs: bool = True) -> Iterator[str]:
    """A temporary path beside ``path`` for code that writes by file name (``torch.onnx.export``); on a clean exit
    it is fsynced and renamed over ``path``, on an exception removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(os.path.basename(path))}.tmp-*")):
        with contextlib.suppress(OSError):
            os.remove(stale)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = True) -> str:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``; returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
    return os.fspath(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text"]
