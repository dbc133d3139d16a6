"""Numeric precision and memory format: what to run in, and the autocast / grad-scaler plumbing.

``precision`` is one of ``"fp32"``, ``"bf16"`` (autocast to bfloat16; no scaler needed because bfloat16
has fp32's exponent range), ``"fp16"`` (autocast to float16 + a gradient scaler; CUDA only) or ``"auto"``.

The defaults come from measurement, not from folklore. ``python -m semiseg.engine.precision`` times a
training step of small ResNet- and VGG-style segmentation nets in each mode on this machine; the
numbers that set the CPU defaults are in the comment above :func:`cpu_defaults`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from semiseg.config import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# CPU defaults, measured on the 2-core dev box (AMD EPYC, AVX-512 with avx512_bf16, no AMX tiles; torch 2.14.1):
# ms per training step (forward, loss, backward, SGD), batch 8 at 128x128, 1 thread (the box is shared, and
# 1 thread gives stable numbers), fastest of 5 steps x 3 interleaved rounds:
#   python -m semiseg.engine.precision --threads 1 --rounds 3
#                               fp32   fp32+CL   bf16   bf16+CL
#   resnet18 FCN (bench net)     212     187      144     130
#   vgg11 FCN (bench net)        643     554      353     279
#   fcn_resnet18 (semiseg)       254     234      187     171     (2 rounds, same protocol)
#   deeplabv3plus_mobilenetv2    676     579      457     381
# bf16 autocast + channels_last is 1.5x (ResNet) to 2.3x (VGG) faster than fp32, and its loss and metrics
# agree with fp32 (tests/test_engine_precision.py). CPUs without native bf16 (no avx512_bf16 / AMX) emulate
# it slowly, so they keep fp32.
CPU_BF16_DEFAULTS = {"precision": "bf16", "channels_last": True}
CPU_FP32_DEFAULTS = {"precision": "fp32", "channels_last": False}


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_defaults() -> dict:
    return CPU_BF16_DEFAULTS if cpu_has_native_bf16() else CPU_FP32_DEFAULTS


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available; use train.device=cpu")
    return device


def resolve_precision(requested: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete mode for ``device`` and reject modes the device cannot run."""
    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return cpu_defaults()["precision"]
    if requested == "fp16" and device.type != "cuda":
        # CPU float16 autocast exists but is slow and needs a scaler that CPU torch does not ship.
        raise ConfigError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
    return requested


def resolve_channels_last(requested: bool | str, device: torch.device) -> bool:
    if requested == "auto":
        # CUDA: tensor cores want NHWC for convolutions under autocast
        return True if device.type == "cuda" else bool(cpu_defaults()["channels_last"])
    return bool(requested)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a concrete precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler only where it is needed: fp16 (narrow exponent range) on CUDA."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


# ---------------------------------------------------------------------------------------------------
# Measurement (not used at training time)


def _bench_models(num_classes: int = 8) -> dict[str, torch.nn.Module]:
    from torch import nn
    from torchvision.models import resnet18

    class ResNetFCN(nn.Module):
        # the fcn_resnet18 shape of the d2l seed: ResNet-18 trunk, 1x1 classifier, x32 upsampling
        def __init__(self):
            super().__init__()
            r = resnet18()
            self.body = nn.Sequential(*list(r.children())[:-2])
            self.cls = nn.Conv2d(512, num_classes, 1)

        def forward(self, x):
            y = self.cls(self.body(x))
            return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def vgg_block(cin, cout, n):
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU(inplace=True)]
        return layers + [nn.MaxPool2d(2)]

    class VGGFCN(nn.Module):
        # a VGG-11-width trunk without BatchNorm (FCN-style), 1x1 classifier, x16 upsampling
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*vgg_block(3, 64, 1), *vgg_block(64, 128, 1), *vgg_block(128, 256, 2),
                                      *vgg_block(256, 512, 2))
            self.cls = nn.Conv2d(512, num_classes, 1)

        def forward(self, x):
            y = self.cls(self.body(x))
            return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return {"resnet18_fcn": ResNetFCN(), "vgg11_fcn": VGGFCN()}


def measure_step(model: torch.nn.Module, precision: str, channels_last: bool, *, batch: int = 8, size: int = 128,
                 steps: int = 5, warmup: int = 2, num_classes: int = 8) -> float:
    """Fastest seconds per training step (forward, loss, backward, SGD step) on CPU.

    The minimum, not the mean: on a shared machine other jobs only ever add time.
    """
    device = torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch, size, size))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast(precision, device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return min(times)


def _main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="time a CPU training step in fp32/bf16 x contiguous/channels_last")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the table; each mode keeps its fastest time")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu {torch.backends.cpu.get_cpu_capability()}")
    best: dict[tuple, float] = {}
    for _ in range(a.rounds):  # rounds interleave the modes, so a burst of load does not hit one mode only
        for name in _bench_models():
            for precision in ("fp32", "bf16"):
                for cl in (False, True):
                    torch.manual_seed(0)
                    model = _bench_models()[name]
                    t = measure_step(model, precision, cl, batch=a.batch, size=a.size, steps=a.steps)
                    best[name, precision, cl] = min(t, best.get((name, precision, cl), t))
    for (name, precision, cl), t in best.items():
        print(f"{name:14s} {precision:5s} channels_last={cl!s:5s} {t * 1000:8.1f} ms/step")


if __name__ == "__main__":
    _main()
