"""Checkpoints: atomic writes, data-only loading, and RNG state as plain tensors.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs when opening a file someone sent you). The RNG
states of torch, numpy and ``random`` are converted to tensors and ints for that reason.

Writes go through :mod:`semiseg.atomic` (a temporary file in the same directory, fsynced, renamed over the
target with ``os.replace``): a run killed at any moment leaves either the old or the new checkpoint, never half
of one. A stale temporary file from a killed write is harmless and is removed on the next write.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from semiseg.atomic import atomic_write, atomic_write_text  # noqa: F401 (re-exported: the run files use them)

FORMAT = "semiseg-checkpoint/1"
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not a semiseg checkpoint."""


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save(obj, path)`` so that ``path`` is never observed half-written."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def resolve_checkpoint(path: str | os.PathLike, prefer: str = LAST) -> str:
    """A checkpoint file from a file path or a run folder (``prefer`` inside it, else the other one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (prefer, BEST if prefer == LAST else LAST):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"no checkpoint in {path}: expected {LAST} or {BEST} (did the run write one yet?)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _other_checkpoint_hint(path: str) -> str:
    """What else the run folder of ``path`` offers when ``path`` itself cannot be read."""
    directory, name = os.path.split(os.path.abspath(path))
    other = {LAST: BEST, BEST: LAST}.get(name)
    if other is None or not os.path.isfile(os.path.join(directory, other)):
        return ""
    other_path = os.path.join(directory, other)
    if name == LAST:
        return (f" The run's other checkpoint, {other_path} (its best evaluation), can be used instead: "
                f"`semiseg eval {other_path}`; to resume from it, copy it over last.pt (cp {other_path} {path}) and "
                "run --resume again.")
    return f" The run's other checkpoint, {other_path} (its latest state), can be used instead."


def _read_failure(path: str, e: BaseException) -> str:
    """Why ``torch.load`` failed, in words: the unpickler's own messages are long, or empty (EOFError)."""
    import pickle

    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        first = next((line for line in str(e).splitlines() if "Unsupported" in line or "global" in line.lower()), "")
        return ("it needs code to unpickle, and semiseg loads checkpoints as data only (weights_only=True), so it "
                f"was refused{': ' + first.strip() if first else ''}")
    size = os.path.getsize(path) if os.path.isfile(path) else -1
    if size == 0:
        return "the file is empty (a copy or a write that never happened?)"
    import zipfile

    text = str(e).strip().split(". ")[0] or type(e).__name__
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end of the file
        return (f"the file is truncated or not a PyTorch file ({size} bytes, no complete zip archive; a copy or "
                f"download that did not finish?) (torch: {text})")
    return f"{type(e).__name__}: {text}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a semiseg checkpoint as data only (``weights_only=True``)."""
    path = os.fspath(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except PermissionError as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: permission denied ({e.strerror}); the file is not damaged, but this user "
            f"may not read it: check its permissions and owner (ls -l {path})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder; give a .pt file or a run folder holding last.pt / best.pt") from None
    except Exception as e:  # truncated or foreign files fail in many ways inside the unpickler
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_failure(path, e)}.{_other_checkpoint_hint(path)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a semiseg training checkpoint (no 'format': {FORMAT!r}); to start from plain "
            "weights set model.weights=PATH instead"
        )
    return ckpt


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors holding NaN or inf in a (nested) state dict: a diverged run's weights,
    BatchNorm statistics or optimizer moments. Such a checkpoint is never written, and refused when read."""
    bad: list[str] = []
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "tensor")
    elif isinstance(state, dict):
        for k, v in state.items():
            bad += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            bad += nonfinite_tensors(v, f"{prefix}[{i}]")
    return bad


def describe_names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------
# RNG state as weights_only-loadable data


def capture_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


__all__ = [
    "atomic_write", "atomic_write_text",
    "FORMAT", "LAST", "BEST", "CheckpointError", "atomic_save", "resolve_checkpoint", "load_checkpoint",
    "nonfinite_tensors", "describe_names",
    "capture_rng_state", "restore_rng_state",
]
