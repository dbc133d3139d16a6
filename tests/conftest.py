"""Test-session setup, and the tiny model and in-memory dataset of the engine tests.

The engine tests plug the tiny model and dataset in through ``module:function`` names
(``model.name=conftest:tiny_model``, ``data.kind=conftest:tiny_dataset``; tests import the helpers with
``from conftest import ...``; subprocess tests put this folder on PYTHONPATH). Those names end up in the checkpoints
and run configs the tests evaluate and resume. semiseg refuses such names when it reads them back from a file unless
the user allows code (``--allow-code`` / ``SEMISEG_ALLOW_CODE=1``); the test session is that user (set in
:func:`pytest_configure`, so a subprocess that imports this module for the tiny model does not allow code by itself;
subprocesses inherit the session's environment). Tests of the refusal itself remove the variable
(``monkeypatch.delenv``) or pass an environment without it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors


def pytest_configure(config):
    os.environ["SEMISEG_ALLOW_CODE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def precision_cache_in_a_temporary_folder(tmp_path_factory):
    """`precision: auto` caches its CPU timings; tests must neither read the user's cache (a cached choice would
    hide the code path) nor write to it. Set in os.environ so that `python -m semiseg` children inherit it."""
    before = os.environ.get("SEMISEG_CACHE")
    os.environ["SEMISEG_CACHE"] = str(tmp_path_factory.mktemp("semiseg_cache"))
    yield
    if before is None:
        os.environ.pop("SEMISEG_CACHE", None)
    else:
        os.environ["SEMISEG_CACHE"] = before


# ---------------------------------------------------------------------------------------------------
# the tiny model and dataset

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)


def load_benchmark(name: str) -> types.ModuleType:
    """benchmarks/NAME.py as a module (benchmarks/ is not a package). It is registered in sys.modules first, as an
    import would, so that dataclasses in it can look their module up."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

CLASSES = ["background", "red", "green", "blue"]
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


class TinyShapes(Dataset):
    """Squares of a class colour (plus noise) on a dark background; sample i is fixed by (seed, split, i)."""

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = 255
    palette = PALETTE

    def __init__(self, split: str = "train", *, length: int = 16, size: int = 32, seed: int = 0, transform=None,
                 ignore_border: bool = False, ignore_index: int = 255):
        self.split, self.length, self.size, self.seed = split, length, size, seed
        self.transform = transform
        self.ignore_border = ignore_border
        self.ignore_index = ignore_index  # the value of pixels without a label (the first row with ignore_border)
        self.names = [f"{split}_{i:03d}" for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.seed, {"train": 1, "val": 2}.get(self.split, 3), i))
        s = self.size
        image = rng.integers(0, 60, (s, s, 3)).astype(np.uint8)
        mask = np.zeros((s, s), dtype=np.int64)
        for _ in range(2):
            c = int(rng.integers(1, len(CLASSES)))
            h, w = rng.integers(s // 4, s // 2, 2)
            y, x = rng.integers(0, s - h), rng.integers(0, s - w)
            image[y:y + h, x:x + w] = np.clip(PALETTE[c].astype(int) * 0.8 + rng.integers(0, 50, 3), 0, 255)
            mask[y:y + h, x:x + w] = c
        if self.ignore_border:
            mask[0, :] = self.ignore_index
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        msk = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return {"image": img, "mask": msk, "name": self.names[i]}


def tiny_dataset(root, split, *, transform=None, **options) -> TinyShapes:
    return TinyShapes(split, transform=transform, **options)


class TinyNet(nn.Module):
    """A BatchNorm-free conv net (so DDP with split batches equals one big batch), logits at input size.

    ``nan_at``: the ``nan_at``-th training-mode forward call returns NaN logits (for the divergence test).
    ``dropout``: channel dropout probability (exercises the RNG in the resume test).
    """

    normalization = "imagenet"

    def __init__(self, num_classes: int, *, width: int = 8, nan_at: int | None = None, dropout: float = 0.0,
                 batchnorm: bool = False):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), norm(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), norm(2 * width), nn.ReLU(),
            nn.Dropout2d(dropout),
        )
        self.head = nn.Conv2d(2 * width, num_classes, 1)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.body(x))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.training and self.nan_at is not None:  # (a plain counter would make torch.compile recompile)
            self.calls += 1
            if self.calls >= self.nan_at:
                y = y * float("nan")
        return y

    def param_groups(self) -> list[dict]:
        return [
            {"name": "backbone", "params": list(self.body.parameters()), "lr_mult": 1.0},
            {"name": "head", "params": list(self.head.parameters()), "lr_mult": 10.0},
        ]


def tiny_model(num_classes: int, *, pretrained_backbone=False, **options) -> TinyNet:
    return TinyNet(num_classes, **options)


def tiny_overrides(**extra) -> list[str]:
    """Overrides for a run of the tiny model on the tiny data, fast and deterministic."""
    base = {
        "model.name": "conftest:tiny_model",
        "model.pretrained_backbone": "false",
        "data.kind": "conftest:tiny_dataset",
        "data.crop_size": "[24,24]",
        "data.scale_range": "[0.75,1.25]",
        "data.batch_size": "4",
        "data.num_workers": "0",
        "optim.lr": "0.01",
        "train.iterations": "12",
        "train.eval_interval": "6",
        "train.checkpoint_interval": "4",
        "train.log_interval": "2",
        "train.precision": "fp32",
        "train.channels_last": "false",
        "train.tensorboard": "false",
        "train.device": "cpu",
        "train.threads": "1",  # fixed: bit-exact comparisons between runs (auto may switch thread counts)
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def subprocess_env() -> dict:
    """Environment for `python -m semiseg ...` children: this folder importable, few threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, REPO, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PYTHON = sys.executable
