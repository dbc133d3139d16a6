"""A fixed benchmark of two stand-in nets: one CPU training step in fp32 / bf16 x contiguous / channels_last.

Not what runs use: ``train.precision=auto`` times the run's own model (``semiseg.runtime.choose_precision``).
This script is the table that motivated that measurement (BENCHMARKS.md): a ResNet-18 FCN and a VGG-11-width
FCN, fastest of ``--steps`` steps per mode, the modes interleaved over ``--rounds``.

    python benchmarks/precision_modes.py --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from semiseg.runtime import autocast


def _bench_models(num_classes: int = 8) -> dict[str, Callable[[], torch.nn.Module]]:
    """Name -> constructor, so that each measurement builds only the net it times."""
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

    return {"resnet18_fcn": ResNetFCN, "vgg11_fcn": VGGFCN}


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
        for name, build in _bench_models().items():
            for precision in ("fp32", "bf16"):
                for cl in (False, True):
                    torch.manual_seed(0)
                    model = build()
                    t = measure_step(model, precision, cl, batch=a.batch, size=a.size, steps=a.steps)
                    best[name, precision, cl] = min(t, best.get((name, precision, cl), t))
    for (name, precision, cl), t in best.items():
        print(f"{name:14s} {precision:5s} channels_last={cl!s:5s} {t * 1000:8.1f} ms/step")


if __name__ == "__main__":
    _main()
