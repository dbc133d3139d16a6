"""``semiseg export CHECKPOINT|RUN_DIR``: the model as an ONNX file, checked against onnxruntime.

    semiseg export runs/quickstart --out quickstart.onnx --dynamic --check
    semiseg export runs/voc/best.pt --out voc.onnx --height 512 --width 512 --opset 17

The ONNX model takes a normalised float32 batch ``images`` (N, 3, H, W) and returns ``logits`` (N, C, H, W),
exactly what the PyTorch model does (float32, eval mode, NCHW). The input size defaults to the run's training
crop; with --dynamic the batch, height and width are free (the export traces one size, and --check then also
runs a second, odd size). The normalisation, classes and palette are stored in the file's metadata
(``semiseg.*`` keys). --check runs onnxruntime on random inputs and fails when the largest difference from
PyTorch exceeds --tolerance. The file is written atomically and an existing one is kept unless --force.
Needs the optional packages onnx and onnxruntime: pip install 'semiseg[onnx]'.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import json
import os
import sys
import warnings
from typing import Mapping

import numpy as np
import torch
from torch import nn

from semiseg.atomic import atomic_path

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17  # onnxruntime >= 1.14 runs it; new enough for every op of the semiseg models
DEFAULT_TOLERANCE = 1e-3  # float32 kernels of PyTorch and onnxruntime differ by rounding (~1e-5 here)


class ExportError(RuntimeError):
    """A missing optional dependency, an output that does not match, or a file that cannot be written."""


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; ONNX export and checks need the optional packages onnx "
                          f"and onnxruntime: pip install 'semiseg[onnx]'") from None


@contextlib.contextmanager
def _float32_eval(model: nn.Module):
    """The model in eval mode, float32, on the CPU, without changing the caller's model.

    A model that is already float32 on the CPU is used as it is (only its mode is switched, and restored);
    otherwise a converted copy is made.
    """
    params = list(model.parameters()) + list(model.buffers())
    if all(p.device.type == "cpu" and (p.dtype == torch.float32 or not p.is_floating_point()) for p in params):
        was_training = model.training
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)
    else:
        yield copy.deepcopy(model).float().cpu().eval()


@contextlib.contextmanager
def _quiet_export_warnings():
    with warnings.catch_warnings():
        # We choose the TorchScript exporter on purpose (see export_onnx); its deprecation notice is not news.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*", category=DeprecationWarning)
        # The semiseg models' only Python conditions on tensor shapes are input checks (4 dims, 3 channels),
        # true for any valid input; check_onnx (--check) verifies the traced graph, at other sizes too.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"semiseg\.models\.")
        yield


def export_onnx(model: nn.Module, path: str | os.PathLike, *, height: int, width: int, dynamic: bool = True,
                opset: int = DEFAULT_OPSET, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``model`` (float32, eval mode, NCHW) to ``path`` as ONNX, atomically; returns the path.

    The graph is traced with one (1, 3, ``height``, ``width``) input. ``dynamic``: batch, height and width
    are symbolic (the models work at any size); otherwise the file accepts exactly that shape.
    ``metadata``: string key/values stored in the file (``metadata_props``).

    The TorchScript-based exporter is used (``dynamo=False``): the torch.export-based default of torch >= 2.9
    needs the onnxscript package, which semiseg does not depend on. With this exporter every model of
    ``semiseg.models.available_models()`` matches onnxruntime at other input sizes (tests/test_export.py),
    the FCN crops included (their slice ends are traced as functions of the input size).
    """
    onnx = _require("onnx")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(f"cannot write {path}: the folder {directory} does not exist; create it or choose another --out")
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    if dynamic:
        axes = {0: "batch", 2: "height", 3: "width"}
        kwargs["dynamic_axes"] = {INPUT_NAME: axes, OUTPUT_NAME: axes}
    example = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with atomic_path(path, makedirs=False) as tmp:
        with _float32_eval(model) as m, torch.no_grad(), _quiet_export_warnings():
            torch.onnx.export(m, (example,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, do_constant_folding=True, **kwargs)
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        if metadata:
            onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
            onnx.save(proto, tmp)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, images: torch.Tensor) -> float:
    """Largest absolute difference between the PyTorch logits (float32, eval) and onnxruntime's for ``images``."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    # the CPU thread budget the caller gave torch (e.g. OMP_NUM_THREADS=1 on a busy machine), not every core
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    images = images.detach().to("cpu", torch.float32).contiguous()
    expected_shape = session.get_inputs()[0].shape  # ints for fixed axes, names for dynamic ones
    if any(isinstance(d, int) and d != n for d, n in zip(expected_shape, images.shape)):
        raise ExportError(f"{path} takes inputs of shape {expected_shape}, not {tuple(images.shape)} "
                          "(it was exported without --dynamic; export again with --dynamic, or use that shape)")
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with _float32_eval(model) as m, torch.no_grad():
        expected = m(images).float().numpy()
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime returned shape {got.shape} where PyTorch gives {expected.shape} "
                          f"for an input of {tuple(images.shape)}")
    return float(np.abs(got.astype(np.float32) - expected).max())


def input_description(normalization: str) -> str:
    """How to turn an RGB uint8 image into the model's input, for the file's metadata."""
    from semiseg.data.transforms import describe_normalization

    return f"float32 NCHW, {describe_normalization(normalization)}"


# ---------------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR", help="a .pt file, or a run folder (best.pt, else last.pt)")
    parser.add_argument("--out", help="the .onnx file to write (default: the checkpoint's name with .onnx)")
    parser.add_argument("--height", type=int, help="input height to trace (default: the run's data.crop_size)")
    parser.add_argument("--width", type=int, help="input width to trace (default: the run's data.crop_size)")
    parser.add_argument("--dynamic", action="store_true", help="free batch, height and width axes")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset version (default {DEFAULT_OPSET})")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch on random inputs")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest absolute logit difference --check accepts (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    from semiseg.engine.predict import add_allow_code_argument

    add_allow_code_argument(parser)


def check_sizes(height: int, width: int, dynamic: bool) -> list[tuple[int, int, int]]:
    """(batch, height, width) inputs --check runs: the traced shape, and with --dynamic another, odd one."""
    sizes = [(1, height, width)]
    if dynamic:
        sizes.append((2, height // 2 + 7, width // 2 + 5))
    return sizes


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from semiseg.config import ConfigError
    from semiseg.engine.checkpoint import CheckpointError
    from semiseg.engine.predict import load_trained_model

    try:
        loaded = load_trained_model(args.checkpoint, device=torch.device("cpu"), precision="fp32", channels_last=False,
                                    allow_code=args.allow_code)
        out = args.out or os.path.splitext(loaded.checkpoint_path)[0] + ".onnx"
        if os.path.exists(out) and not args.force:
            raise ExportError(f"{out} exists; pass --force to overwrite it, or choose another --out")
        height = args.height or loaded.cfg.data.crop_size[0]
        width = args.width or loaded.cfg.data.crop_size[1]
        if min(height, width) < 1:
            raise ExportError(f"--height and --width must be positive, got {height} x {width}")
        info = loaded.info
        metadata = {
            "semiseg.model": loaded.cfg.model.name,
            "semiseg.checkpoint": os.path.basename(loaded.checkpoint_path),
            "semiseg.iteration": str(loaded.iteration),
            "semiseg.classes": json.dumps(info.classes),
            "semiseg.palette": json.dumps(info.palette),
            "semiseg.normalization": info.normalization,
            "semiseg.input": input_description(info.normalization),
        }
        export_onnx(loaded.model, out, height=height, width=width, dynamic=args.dynamic, opset=args.opset,
                    metadata=metadata)
        shape = "(batch, 3, height, width)" if args.dynamic else f"(1, 3, {height}, {width})"
        print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MiB): {INPUT_NAME} {shape} float32, "
              f"{info.normalization}-normalised -> {OUTPUT_NAME} with {info.num_classes} classes, opset {args.opset}")
        if args.check:
            worst = 0.0
            generator = torch.Generator().manual_seed(0)
            for n, h, w in check_sizes(height, width, args.dynamic):
                diff = check_onnx(loaded.model, out, torch.randn(n, 3, h, w, generator=generator))
                print(f"check {n}x3x{h}x{w}: max |onnxruntime - PyTorch| = {diff:.3g}")
                worst = max(worst, diff)
            if not worst <= args.tolerance:
                print(f"error: {out} differs from PyTorch by {worst:.3g} > --tolerance {args.tolerance}", file=sys.stderr)
                return 1
        return 0
    except (CheckpointError, ConfigError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = ["ExportError", "export_onnx", "check_onnx", "input_description", "configure", "run"]
