"""Loading a trained model from a checkpoint, predicting whole images, writing palette PNG masks.

Shared by ``semiseg eval``, ``semiseg predict`` and the quickstart. (Sliding-window / multi-scale
inference and reports come with inference.py and report.py.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from semiseg.config import Config, config_from_dict
from semiseg.engine import build
from semiseg.engine.checkpoint import load_checkpoint, resolve_checkpoint
from semiseg.engine.evaluate import predict_logits
from semiseg.engine.precision import resolve_channels_last, resolve_precision


@dataclass
class LoadedModel:
    model: nn.Module
    cfg: Config
    info: build.DatasetInfo
    checkpoint_path: str
    iteration: int
    device: torch.device
    precision: str
    channels_last: bool


def load_trained_model(path: str, *, device: torch.device, precision: str | None = None,
                       channels_last: bool | str | None = None) -> LoadedModel:
    """The model of a checkpoint file or run folder (``best.pt`` preferred), in eval mode on ``device``.

    ``precision`` / ``channels_last`` default to the run's own settings, so evaluating a checkpoint gives
    the numbers the run reported.
    """
    ckpt_path = resolve_checkpoint(path, prefer="best.pt")
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    info = build.DatasetInfo(**ckpt["dataset"])
    model = build.build_model(cfg, info.num_classes, pretrained=False)
    model.load_state_dict(ckpt["model"])
    precision = resolve_precision(precision or cfg.train.precision, device)
    channels_last = resolve_channels_last(cfg.train.channels_last if channels_last is None else channels_last, device)
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, cfg, info, ckpt_path, int(ckpt["iteration"]), device, precision, channels_last)


@torch.no_grad()
def predict_mask(loaded: LoadedModel, image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class indices (H, W) uint8 for one RGB image (H, W, 3) uint8 array or (3, H, W) uint8 tensor."""
    from semiseg.data.transforms import normalize

    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    x = normalize(image, loaded.info.normalization).unsqueeze(0).to(loaded.device)
    logits = predict_logits(loaded.model, x, precision=loaded.precision, channels_last=loaded.channels_last)
    return logits.argmax(1)[0].to("cpu", torch.uint8).numpy()


def palette_image(mask: np.ndarray, palette: Any) -> Image.Image:
    """A PIL "P" image of class indices with the dataset palette (index 255 = ignore shows white)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    flat = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:255]
    flat[: len(pal)] = pal
    flat[255] = 255
    img.putpalette(flat.reshape(-1).tolist())
    return img


def save_mask_png(mask: np.ndarray, palette: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    palette_image(mask, palette).save(path)
    return path


__all__ = ["LoadedModel", "load_trained_model", "predict_mask", "palette_image", "save_mask_png"]
