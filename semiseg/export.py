"""ONNX export of a model and its onnxruntime parity check (``semiseg export``; its command line is
semiseg/commands/export.py).

The ONNX model takes a normalised float32 batch ``images`` (N, 3, H, W) and returns ``logits`` (N, C, H, W),
exactly what the PyTorch model does (float32, eval mode, NCHW). The file is written atomically. Needs the optional
packages onnx and onnxruntime: pip install 'semiseg[onnx]'.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import os
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


def checkpoint_metadata(loaded) -> dict[str, str]:
    """The ``semiseg.*`` metadata of a file exported from a loaded checkpoint (engine.predict.LoadedModel)."""
    info = loaded.info
    return {
        "semiseg.model": loaded.cfg.model.name,
        "semiseg.checkpoint": os.path.basename(loaded.checkpoint_path),
        "semiseg.iteration": str(loaded.iteration),
        "semiseg.weights": loaded.weights,  # "teacher": the run's EMA teacher
        "semiseg.classes": json.dumps(info.classes),
        "semiseg.palette": json.dumps(info.palette),
        "semiseg.normalization": info.normalization,
        "semiseg.input": input_description(info.normalization),
    }


__all__ = ["ExportError", "export_onnx", "check_onnx", "checkpoint_metadata", "input_description", "INPUT_NAME",
           "OUTPUT_NAME", "DEFAULT_OPSET", "DEFAULT_TOLERANCE"]
