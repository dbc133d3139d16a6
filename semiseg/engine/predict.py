"""Loading a trained model from a checkpoint, predicting images, writing palette PNG masks.

Shared by ``semiseg eval``, ``semiseg predict``, ``semiseg export`` and the quickstart, with the command-line
flags that choose the inference mode (``--mode slide --crop H W --stride H W --scales ... --flip``): they
override the ``eval`` section of the checkpoint's config, and semiseg.inference does the work.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from semiseg.config import ALLOW_CODE_ENV, Config, ConfigError, check_code_names, config_from_dict, override_config
from semiseg.engine import build
from semiseg.engine.checkpoint import CheckpointError, describe_names, load_checkpoint, nonfinite_tensors, resolve_checkpoint
from semiseg.engine.evaluate import inference_options, predict_logits
from semiseg.runtime import resolve_channels_last, resolve_precision
from semiseg.inference import InferenceOptions


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
    inference: InferenceOptions  # from cfg.eval (after the command line's overrides)
    precision_reason: str = ""  # why this precision and layout (measured, cached or as configured)
    warned_large: bool = False  # the large-image hint of predict_mask is printed once


# Whole-image inference of an image this many times the training crop's area (and at least LARGE_IMAGE_MIN_PIXELS)
# gets a hint about --mode slide: memory grows with the image (a large photo took 4.4 GB in whole mode).
LARGE_IMAGE_CROP_RATIO = 16
LARGE_IMAGE_MIN_PIXELS = 1_000_000


def load_trained_model(path: str, *, device: torch.device, precision: str | None = None,
                       channels_last: bool | str | None = None, overrides: list[str] | tuple[str, ...] = (),
                       allow_code: bool | None = None) -> LoadedModel:
    """The model of a checkpoint file or run folder (``best.pt`` preferred), in eval mode on ``device``.

    ``precision`` / ``channels_last`` default to the run's own settings, so evaluating a checkpoint gives
    the numbers the run reported. ``overrides`` (dotted, e.g. ``eval.mode=slide``) change the run's config.
    The checkpoint's config may name registry entries only: a ``module:function`` in it raises
    :class:`~semiseg.config.UntrustedCodeError` unless ``allow_code`` (``--allow-code``; None: the
    ``SEMISEG_ALLOW_CODE`` environment variable) or an override typed by the user sets that key.
    """
    ckpt_path = resolve_checkpoint(path, prefer="best.pt")
    ckpt = load_checkpoint(ckpt_path)
    cfg = config_from_dict(ckpt["config"])
    if overrides:
        cfg = override_config(cfg, overrides)
    check_code_names(cfg, f"the config stored in {ckpt_path}", allow_code=allow_code, typed=overrides)
    bad = nonfinite_tensors(ckpt["model"])
    if bad:
        raise CheckpointError(
            f"{ckpt_path} holds non-finite weights or statistics in {len(bad)} tensor(s) ({describe_names(bad)}): it "
            "was saved after its run diverged, and its predictions would be meaningless; use an earlier checkpoint "
            "or retrain with a lower optim.lr")
    info = build.DatasetInfo(**ckpt["dataset"])
    model = build.build_model(cfg, info.num_classes, pretrained=False)
    model.load_state_dict(ckpt["model"])
    return _for_inference(model, cfg, info, ckpt_path, int(ckpt["iteration"]), device, precision, channels_last)


def _for_inference(model: nn.Module, cfg: Config, info: build.DatasetInfo, path: str, iteration: int,
                   device: torch.device, precision: str | None, channels_last: bool | str | None) -> LoadedModel:
    """The model in eval mode on ``device``, with the run's precision and memory format unless given."""
    from semiseg.engine import distributed as dist

    precision = precision or cfg.train.precision
    channels_last = cfg.train.channels_last if channels_last is None else channels_last
    resolve_precision(precision, device)  # every rank checks before rank 0 chooses
    resolve_channels_last(channels_last, device)
    choice = None
    if dist.is_main():  # "auto" on a CPU: rank 0 times this model's forward (or finds it in the cache)
        choice = build.precision_choice(cfg, model, info.num_classes, device, task="infer", batch=1,
                                        precision=precision, channels_last=channels_last)
        if "auto" in (precision, channels_last):
            print(choice.line, flush=True)
    choice = dist.broadcast_object(choice)
    model.to(device).eval()
    if choice.channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, cfg, info, path, iteration, device, choice.precision, choice.channels_last,
                       inference_options(cfg), choice.reason)


def load_weights_with_recipe(weights: str, recipe: str, *, device: torch.device, overrides: list[str] | tuple[str, ...] = (),
                             precision: str | None = None, channels_last: bool | str | None = None) -> LoadedModel:
    """A model built from a recipe, with weights from any file ``load_weights`` reads: the released checkpoints of
    AdvSemiSeg, pytorch-fcn, bubbliiiing, ... or a semiseg checkpoint. How a paper's number is checked here.

    Every tensor of the model must receive a value (``strict=True``): a half-loaded model would print plausible
    but wrong numbers. The class list and palette come from the recipe's dataset (its validation split).
    """
    from semiseg.config import load_config
    from semiseg.models import load_weights

    cfg = load_config(recipe, list(overrides))
    dataset = build.build_dataset(cfg, cfg.data.val_split, validation=True)
    model = build.build_model(cfg, int(dataset.num_classes), pretrained=False)
    try:
        report = load_weights(model, weights, strict=True, mode=cfg.model.weights_mode)
    except ValueError as e:  # wrong model, options (e.g. legacy_aspp) or class count for these weights
        raise ConfigError(f"{weights} does not fit the model of {recipe} ({cfg.model.name}, {dataset.num_classes} "
                          f"classes): {e}") from None
    print(report)
    info = build.DatasetInfo.of(dataset, build.model_normalization(cfg, model))
    return _for_inference(model, cfg, info, os.fspath(weights), 0, device, precision, channels_last)


def large_image_hint(loaded: LoadedModel, height: int, width: int, name: str = "an image") -> str | None:
    """A hint to use sliding windows when whole-image inference gets an image much larger than the training crop."""
    if loaded.inference.mode != "whole":
        return None
    ch, cw = loaded.cfg.data.crop_size
    pixels = height * width
    if pixels < max(LARGE_IMAGE_MIN_PIXELS, LARGE_IMAGE_CROP_RATIO * ch * cw):
        return None
    return (f"warning: {name} is {width}x{height} ({pixels / 1e6:.1f} megapixels, {pixels / (ch * cw):.0f}x the "
            f"training crop) and is predicted as one whole image (eval.mode=whole); memory grows with the image "
            f"(gigabytes at this size). If it runs out of memory or is slow, predict in windows of the training "
            f"crop: --mode slide --crop {ch} {cw}")


@torch.no_grad()
def predict_mask(loaded: LoadedModel, image: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray:
    """Class indices (H, W) uint8 for one RGB image (H, W, 3) uint8 array or (3, H, W) uint8 tensor.

    The first image far larger than the training crop in whole mode prints a hint about ``--mode slide``."""
    import sys

    from semiseg.data.transforms import normalize

    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not loaded.warned_large:
        hint = large_image_hint(loaded, int(image.shape[-2]), int(image.shape[-1]), name or "an image")
        if hint:
            loaded.warned_large = True
            print(hint, file=sys.stderr)
    x = normalize(image, loaded.info.normalization).unsqueeze(0).to(loaded.device)
    logits = predict_logits(loaded.model, x, precision=loaded.precision, channels_last=loaded.channels_last,
                            inference=loaded.inference)
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


# ---------------------------------------------------------------------------------------------------
# command-line flags of the inference mode (semiseg eval, semiseg predict)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inference (default: the run's eval settings; see semiseg.inference)")
    group.add_argument("--mode", choices=["whole", "slide"], help="whole image at once, or sliding windows")
    group.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"),
                       help="sliding window size (implies --mode slide; default: the training crop)")
    group.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"),
                       help="sliding window step (implies --mode slide; default: 2/3 of the window)")
    group.add_argument("--scales", nargs="+", type=float, metavar="S",
                       help="multi-scale test: resize ratios, e.g. 0.5 0.75 1 1.25 1.5 1.75 (softmax averaged)")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="also run the mirror image of every scale and average it in")


def add_allow_code_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-code``: the one opt-in for a checkpoint or run folder whose config names code to import."""
    parser.add_argument("--allow-code", action="store_true", default=None,
                        help="trust the checkpoint / run folder: import the 'package.module:function' names its "
                             "config holds (model.name, data.kind, method.name), which runs that code. Without it "
                             f"such a config is refused (also allowed by {ALLOW_CODE_ENV}=1)")


def inference_overrides(args: argparse.Namespace) -> list[str]:
    """The flags of :func:`add_inference_arguments` as dotted config overrides (``eval.mode=slide`` ...)."""
    mode = args.mode
    if args.crop or args.stride:
        if mode == "whole":
            raise ConfigError("--crop and --stride set the sliding window; use them with --mode slide")
        mode = "slide"
    out = [f"eval.mode={mode}"] if mode else []
    if args.crop:
        out.append(f"eval.crop_size=[{args.crop[0]},{args.crop[1]}]")
    if args.stride:
        out.append(f"eval.stride=[{args.stride[0]},{args.stride[1]}]")
    if args.scales:
        out.append(f"eval.scales=[{','.join(repr(float(s)) for s in args.scales)}]")
    if args.flip is not None:
        out.append(f"eval.flip={str(args.flip).lower()}")
    return out


__all__ = [
    "LoadedModel", "load_trained_model", "load_weights_with_recipe", "predict_mask", "large_image_hint", "palette_image",
    "save_mask_png",
    "add_inference_arguments", "add_allow_code_argument", "inference_overrides",
]
