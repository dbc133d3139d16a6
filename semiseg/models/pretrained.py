"""Fetching backbone weights: torchvision's weight enums (download + cache) or a local file.

Every model family calls :func:`backbone_state_dict` so that the offline error is the same everywhere:
it names the exact file to put where, because users on clusters without internet hit this first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum


class PretrainedWeightsError(RuntimeError):
    """The requested weights are neither cached nor downloadable, or their file cannot be used."""


class WeightsFileNotFound(PretrainedWeightsError, FileNotFoundError):
    """A weights file given by path does not exist."""


def cache_path(weights: WeightsEnum) -> Path:
    """Where torch.hub looks for (and stores) the file of a torchvision weight enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint as data only (``weights_only=True``); never unpickle arbitrary code.

    Returns the state dict, unwrapping the common containers ``{"state_dict": ...}`` and ``{"model": ...}``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileNotFound(
            f"weights file not found: {path} (relative paths start from the current folder, {os.getcwd()}); "
            "check model.weights / model.pretrained_backbone in the recipe or on the command line")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise PretrainedWeightsError(
            f"cannot read {path}: permission denied ({exc.strerror}); check the file's permissions and owner "
            f"(ls -l {path})") from None
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError from the weights-only unpickler
        raise PretrainedWeightsError(
            f"{path} could not be loaded as plain tensors (torch.load with weights_only=True): {exc}\n"
            "semiseg refuses checkpoints that need arbitrary code to unpickle. If you trust the file, re-save "
            "its state dict: torch.save(torch.load(path, weights_only=False).state_dict(), 'clean.pth')"
        ) from exc
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def backbone_state_dict(source: bool | str | os.PathLike, default: WeightsEnum) -> dict[str, Any]:
    """State dict for ``pretrained_backbone=source``.

    ``True`` uses ``default`` (a torchvision weight enum) through torch.hub's cache, downloading when the
    network allows; a path loads that local file.
    """
    if source is True:
        target = cache_path(default)
        try:
            return default.get_state_dict(progress=False, map_location="cpu", weights_only=True)
        except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not available here"
            raise PretrainedWeightsError(
                f"could not download {default} from {default.url} ({exc.__class__.__name__}: {exc}).\n"
                f"Without network access, copy that file to {target} (torch.hub's cache; set TORCH_HOME to move "
                "it), or pass pretrained_backbone='/path/to/file.pth'."
            ) from exc
    return load_checkpoint_file(source)
