"""Prediction with an exported ONNX file under onnxruntime (``semiseg predict --backend onnxruntime``).

    predictor = OnnxPredictor("voc.onnx", threads=1)        # a file written by ``semiseg export --dynamic``
    mask = predictor.predict_mask(image)                     # uint8 (H, W, 3) RGB -> uint8 (H, W) class indices
    logits = predictor.logits(images)                        # normalised (N, 3, H, W) -> float32 (N, C, H, W)

The file's metadata (written by ``semiseg export``) gives the input normalisation, the classes and the palette,
so the predictor needs no checkpoint. :meth:`OnnxPredictor.as_module` wraps the session as an ``nn.Module`` for
semiseg.inference.infer: sliding windows, multi-scale and flip then work as with the PyTorch model (the file must
accept those sizes: exported with ``--dynamic``, or every window at its traced size).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from semiseg.export import ExportError, _require
from semiseg.inference import InferenceOptions, infer


class _SessionModule(nn.Module):
    """An onnxruntime session called like the model: normalised float32 (N, 3, H, W) -> float32 logits."""

    def __init__(self, predictor: "OnnxPredictor"):
        super().__init__()
        self._predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._predictor.logits(x)


class OnnxPredictor:
    """Logits and masks from an ONNX file exported by semiseg, on the CPU (onnxruntime's CPUExecutionProvider).

    ``threads``: onnxruntime's intra-op threads (None: torch's thread count, so ``--threads`` and
    ``OMP_NUM_THREADS`` apply alike); the graph runs sequentially with all of onnxruntime's graph optimisations.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = os.fspath(path)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for missing or broken files
            raise ExportError(f"cannot load {self.path} with onnxruntime: {e}") from None
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if "semiseg.normalization" not in meta:
            raise ExportError(f"{self.path} has no semiseg.normalization metadata: it was not written by semiseg "
                              "export, so its input normalisation is unknown; export the checkpoint with semiseg export")
        self.normalization = meta["semiseg.normalization"]
        self.classes = json.loads(meta["semiseg.classes"]) if "semiseg.classes" in meta else None
        self.palette = json.loads(meta["semiseg.palette"]) if "semiseg.palette" in meta else None
        self.model_name = meta.get("semiseg.model", "")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, C, H, W) of a normalised float32 batch (N, 3, H, W)."""
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])

    def as_module(self) -> nn.Module:
        return _SessionModule(self)

    def predict_logits(self, images: torch.Tensor, inference: InferenceOptions | None = None) -> torch.Tensor:
        """Like semiseg.inference.infer with the PyTorch model (whole image unless ``inference`` says otherwise)."""
        if inference is None or (inference.mode == "whole" and inference.single_view):
            return self.logits(images)
        return infer(self.as_module(), images.to(torch.float32), inference)

    def predict_mask(self, image: np.ndarray | torch.Tensor, inference: InferenceOptions | None = None) -> np.ndarray:
        """Class indices (H, W) uint8 for one RGB image: (H, W, 3) uint8 array or (3, H, W) uint8 tensor."""
        from semiseg.data.transforms import normalize

        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        x = normalize(image, self.normalization).unsqueeze(0)
        return self.predict_logits(x, inference).argmax(1)[0].to(torch.uint8).numpy()


__all__ = ["OnnxPredictor"]
