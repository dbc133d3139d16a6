"""Loading a trained model from a checkpoint, predicting images, writing palette PNG masks.

Shared by ``semiseg eval``, ``semiseg predict``, ``semiseg export``, the report and the quickstart; the
command-line flags that choose the inference mode are in semiseg/commands/flags.py. :func:`predict_folder` is the
image loop of ``semiseg predict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from semiseg.config import Config, ConfigError, check_code_names, config_from_dict, override_config
from semiseg.data.info import IGNORE_INDEX, DatasetInfo
from semiseg.engine import build
from semiseg.engine.checkpoint import CheckpointError, describe_names, load_checkpoint, nonfinite_tensors, resolve_checkpoint
from semiseg.engine.evaluate import inference_options, predict_logits
from semiseg.runtime import resolve_channels_last, resolve_precision
from semiseg.inference import InferenceOptions


@dataclass
class LoadedModel:
    model: nn.Module
    cfg: Config
    info: DatasetInfo
    checkpoint_path: str
    iteration: int
    device: torch.device
    precision: str
    channels_last: bool
    inference: InferenceOptions  # from cfg.eval (after the command line's overrides)
    precision_reason: str = ""  # why this precision and layout (measured, cached or as configured)
    weights: str = "model"  # "teacher": the EMA teacher of a semi-supervised run (see load_trained_model)
    warned_large: bool = False  # the large-image hint of predict_mask is printed once


# Whole-image inference of an image this many times the training crop's area (and at least LARGE_IMAGE_MIN_PIXELS)
# gets a hint about --mode slide: memory grows with the image (a large photo took 4.4 GB in whole mode).
LARGE_IMAGE_CROP_RATIO = 16
LARGE_IMAGE_MIN_PIXELS = 1_000_000
# From this many images on, a float32 CPU prediction hints at --backend onnxruntime (the export costs 10-20 s once).
ONNX_HINT_MIN_IMAGES = 50


def load_trained_model(path: str, *, device: torch.device, precision: str | None = None,
                       channels_last: bool | str | None = None, overrides: list[str] | tuple[str, ...] = (),
                       allow_code: bool | None = None, teacher: bool = False) -> LoadedModel:
    """The model of a checkpoint file or run folder (``best.pt`` preferred), in eval mode on ``device``.

    ``precision`` / ``channels_last`` default to the run's own settings, so evaluating a checkpoint gives
    the numbers the run reported. ``overrides`` (dotted, e.g. ``eval.mode=slide``) change the run's config.
    ``teacher``: the weights of the run's EMA teacher instead of the trained model's (a consistency run with
    ``method.options.teacher: ema``; Mean-Teacher methods such as UniMatch V2 evaluate both). The teacher is predicted
    with its shared BatchNorm statistics: the per-sequence ones of ``teacher_bn_group_by`` belong to training images.
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
    state = teacher_weights(ckpt, ckpt_path, cfg) if teacher else ckpt["model"]
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(
            f"{ckpt_path} holds non-finite weights or statistics in {len(bad)} tensor(s) ({describe_names(bad)}): it "
            "was saved after its run diverged, and its predictions would be meaningless; use an earlier checkpoint "
            "or retrain with a lower optim.lr")
    info = DatasetInfo(**ckpt["dataset"])
    model = build.build_model(cfg, info.num_classes, pretrained=False)
    model.load_state_dict(state)
    loaded = _for_inference(model, cfg, info, ckpt_path, int(ckpt["iteration"]), device, precision, channels_last)
    loaded.weights = "teacher" if teacher else "model"
    return loaded


def teacher_weights(ckpt: dict[str, Any], ckpt_path: str, cfg: Config) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint's EMA teacher (its ``modules["teacher"]``, an EMATeacher around the model)."""
    from semiseg.engine.methods.teacher import TEACHER_MODULE

    state = (ckpt.get("modules") or {}).get(TEACHER_MODULE)
    if state is None:
        raise CheckpointError(
            f"{ckpt_path} has no EMA teacher (its run: method {cfg.method.name!r}); only a consistency run with "
            "method.options.teacher: ema trains one. Drop --teacher to use the trained model")
    return {k.removeprefix("model."): v for k, v in state.items()}  # EMATeacher holds the model as .model


def _for_inference(model: nn.Module, cfg: Config, info: DatasetInfo, path: str, iteration: int,
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
    info = DatasetInfo.of(dataset, build.model_normalization(cfg, model))
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


def onnxruntime_hint(loaded: LoadedModel, n_images: int) -> str | None:
    """A hint to try ``--backend onnxruntime`` when PyTorch predicts many images in float32 on a CPU (a CPU without
    native bf16, or precision fp32 asked for), where onnxruntime ran the three benchmark models 1.3-2x faster; not
    for a few images, which exporting the model (10-20 s) would not repay, nor without onnxruntime installed."""
    import importlib.util

    if loaded.device.type != "cpu" or loaded.precision != "fp32" or n_images < ONNX_HINT_MIN_IMAGES:
        return None
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    return (f"hint: this CPU runs the model in float32 ({n_images} images); onnxruntime ran float32 models 1.3-2x "
            "faster than PyTorch on CPUs (BENCHMARKS.md, CPU inference): add --backend onnxruntime")


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


def palette_image(mask: np.ndarray, palette: Any, ignore_index: int = IGNORE_INDEX) -> Image.Image:
    """A PIL "P" image of class indices with the dataset palette (``ignore_index``, a ``DatasetInfo``'s, shows white
    when it is not a class)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    flat = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:255]
    flat[: len(pal)] = pal
    if len(pal) <= ignore_index < 256:
        flat[ignore_index] = 255
    img.putpalette(flat.reshape(-1).tolist())
    return img


def save_mask_png(mask: np.ndarray, palette: Any, path: str, ignore_index: int = IGNORE_INDEX) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    palette_image(mask, palette, ignore_index).save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# a folder of images -> a folder of palette masks (semiseg predict)


class PredictResult(list):
    """The written mask paths (a list), and ``failed``: (image path, reason) for each image that could not be read."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str]] = []


def mask_names(images: list[str]) -> dict[str, str]:
    """The mask file name of each image: ``stem.png``, or ``name.ext.png`` when stems collide (``x.jpg``, ``x.png``;
    compared without case, for case-insensitive file systems)."""
    from collections import Counter

    from semiseg.data.errors import DataError

    stems = Counter(os.path.splitext(os.path.basename(p))[0].lower() for p in images)
    names = {}
    for p in images:
        base = os.path.basename(p)
        stem = os.path.splitext(base)[0]
        names[p] = (base if stems[stem.lower()] > 1 else stem) + ".png"
    clashes = Counter(n.lower() for n in names.values())
    same = sorted(os.path.basename(p) for p, n in names.items() if clashes[n.lower()] > 1)
    if same:
        raise DataError(f"these images would write the same mask file: {', '.join(same)}", os.path.dirname(images[0]),
                        "rename one of them")
    return names


def predict_folder(checkpoint: str, input_dir: str, output_dir: str, *, device: str = "auto",
                   precision: str | None = None, progress: bool = True, inference_overrides=(),
                   allow_code: bool | None = None, backend: str = "torch", teacher: bool = False,
                   stored_values=None) -> list[str]:
    """Write one palette PNG per image of ``input_dir``; returns the written paths (a :class:`PredictResult`, whose
    ``failed`` lists the images that could not be read: they are skipped, the others written).
    ``stored_values``: a label map (preset name or dict; semiseg/data/label_map.py) whose inverse turns the class
    indices into the values the dataset stores, written as grayscale PNGs (``"cityscapes"``: label ids).

    ``inference_overrides``: dotted ``eval.*`` overrides of the run's inference settings (``eval.mode=slide``).
    ``backend``: "torch", or "onnxruntime" (the model exported to ONNX, on the CPU; see :func:`open_for_predict`).
    ``teacher``: predict with the run's EMA teacher (see :func:`load_trained_model`).
    """
    import sys

    from semiseg.data.base import list_images
    from semiseg.data.errors import DataError
    from semiseg.data.io import read_image
    from semiseg.runtime import resolve_device

    if not os.path.isdir(input_dir):
        raise DataError("input folder not found", input_dir, "pass a folder of images")
    images = list_images(input_dir)
    if not images:
        raise DataError("no images in the input folder", input_dir, "put .jpg/.png files there")
    names = mask_names(images)
    if backend == "onnxruntime":  # whole image or the run's/flags' inference mode, through onnxruntime
        predictor, options = open_for_predict(checkpoint, inference_overrides=inference_overrides, allow_code=allow_code,
                                              teacher=teacher)
        palette, ignore_index = predictor.palette, IGNORE_INDEX  # an .onnx file does not carry it
        predict = lambda image, name: predictor.predict_mask(image, options)  # noqa: E731
    else:
        loaded = load_trained_model(checkpoint, device=resolve_device(device), precision=precision,
                                    overrides=inference_overrides, allow_code=allow_code, teacher=teacher)
        palette, ignore_index = loaded.info.palette, loaded.info.ignore_index
        predict = lambda image, name: predict_mask(loaded, image, name)  # noqa: E731
        hint = onnxruntime_hint(loaded, len(images))
        if hint:
            print(hint, file=sys.stderr)
    to_stored = None
    if stored_values is not None:
        from semiseg.data.label_map import stored_values_lut

        to_stored = stored_values_lut(stored_values, len(palette), ignore_index)
    if os.path.abspath(output_dir) == os.path.abspath(input_dir):
        raise DataError("the output folder is the input folder", output_dir, "masks would overwrite PNG inputs; choose another")
    os.makedirs(output_dir, exist_ok=True)
    report = print
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="predict", dynamic_ncols=True)
        report = tqdm.write
    written = PredictResult()
    for path in images:
        try:
            image = read_image(path)
        except DataError as e:  # one unreadable file does not stop the batch
            written.failed.append((path, str(e)))
            report(f"skipped: {e}", file=sys.stderr)
            continue
        mask = predict(image, os.path.basename(path))
        out = os.path.join(output_dir, names[path])
        if to_stored is not None:  # the dataset's own values, grayscale (a palette would colour them as classes)
            Image.fromarray(to_stored[np.asarray(mask).astype(np.uint8)]).save(out)
            written.append(out)
        else:
            written.append(save_mask_png(mask, palette, out, ignore_index))
    return written


def open_for_predict(checkpoint: str, *, inference_overrides=(), allow_code: bool | None = None,
                     threads: int | None = None, teacher: bool = False) -> tuple["OnnxPredictor", "InferenceOptions"]:
    """The predictor and inference options of ``semiseg predict --backend onnxruntime``.

    ``checkpoint``: an ``.onnx`` file from ``semiseg export --dynamic`` (the inference flags alone choose the mode;
    ``--mode slide`` then needs ``--crop``), or a checkpoint / run folder, exported here to a temporary file
    (dynamic axes, float32) with the run's ``eval`` settings (after the flags).
    """
    import tempfile

    from semiseg.config import load_config
    from semiseg.export import ExportError, checkpoint_metadata, export_onnx
    from semiseg.onnx_predict import OnnxPredictor

    if os.fspath(checkpoint).lower().endswith(".onnx"):
        if teacher:
            raise ConfigError(f"{checkpoint} is an exported model: it has one set of weights; export with "
                              "`semiseg export --teacher` for the teacher's, and drop --teacher here")
        cfg = load_config(None, list(inference_overrides))
        if cfg.eval.mode == "slide" and not cfg.eval.crop_size:
            raise ConfigError("--mode slide with an .onnx file needs --crop H W (it has no training crop to default to)")
        predictor = OnnxPredictor(checkpoint, threads=threads)
        if predictor.palette is None:
            raise ExportError(f"{checkpoint} has no semiseg.palette metadata for the masks' colours; export the "
                              "checkpoint with semiseg export")
        return predictor, inference_options(cfg)
    loaded = load_trained_model(checkpoint, device=torch.device("cpu"), precision="fp32", channels_last=False,
                                overrides=inference_overrides, allow_code=allow_code, teacher=teacher)
    height, width = loaded.cfg.data.crop_size
    with tempfile.TemporaryDirectory() as folder:  # onnxruntime holds the graph in memory once loaded
        path = export_onnx(loaded.model, os.path.join(folder, "model.onnx"), height=height, width=width, dynamic=True,
                           metadata=checkpoint_metadata(loaded))
        return OnnxPredictor(path, threads=threads), loaded.inference


__all__ = [
    "LoadedModel", "load_trained_model", "teacher_weights", "load_weights_with_recipe", "predict_mask", "large_image_hint",
    "palette_image", "save_mask_png", "PredictResult", "mask_names", "predict_folder", "open_for_predict",
]
