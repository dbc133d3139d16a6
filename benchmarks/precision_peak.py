"""How much faster are this CPU's bf16 kernels than its fp32 ones? The ceiling for a bf16 training speed-up.

A training step is mostly convolutions (forward, input gradient, weight gradient) and matrix products. If the
bf16 versions of those kernels are only ~2x their fp32 versions on this CPU, no choice of autocast, layout or
optimizer can make a whole training step 3x faster; the memory-bound rest (BatchNorm, ReLU, the loss) gains at
most the 2x of moving half the bytes. This script measures the kernels alone, fp32 and bf16 interleaved in one
process (so background load hits both alike), and prints GFLOP/s and the ratio.

    python benchmarks/precision_peak.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _kernels(dtype: torch.dtype) -> dict[str, tuple[float, Callable[[], object]]]:
    """name -> (FLOPs per call, call). Shapes are typical of the recipes' backbones (ResNet / VGG stages)."""
    torch.manual_seed(0)
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)

    # a ResNet-18 stage-2 3x3 convolution at a 320x480 crop (1/8 resolution), batch 8, channels_last as the
    # engine runs it
    batch, ch, h, w = 8, 128, 40, 60
    x = torch.randn(batch, ch, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(ch, ch, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv_flops = 2.0 * batch * ch * ch * 9 * h * w

    xg = x.detach().clone().requires_grad_(True)
    wg = weight.detach().clone().requires_grad_(True)

    def conv_train() -> None:
        out = F.conv2d(xg, wg, padding=1)
        out.backward(torch.ones_like(out))  # input gradient + weight gradient: 2 more convolutions' worth

    return {
        f"matmul {n}x{n}x{n}": (2.0 * n**3, lambda: a @ b),
        f"conv3x3 {ch}->{ch} {h}x{w} batch {batch}, forward": (conv_flops, lambda: F.conv2d(x, weight, padding=1)),
        f"conv3x3 {ch}->{ch} {h}x{w} batch {batch}, forward+backward": (3 * conv_flops, conv_train),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per kernel and dtype (interleaved)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    kernels = {name: _kernels(dtype) for name, dtype in dtypes.items()}
    names = list(kernels["fp32"])
    times: dict[str, dict[str, list[float]]] = {k: {d: [] for d in dtypes} for k in names}
    for kernel in names:
        for d in dtypes:  # warm-up: oneDNN builds its primitives on the first call
            kernels[d][kernel][1]()
        for _ in range(args.rounds):
            for d in dtypes:
                times[kernel][d].append(_time(kernels[d][kernel][1]))

    rows = []
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    print(f"{'kernel':<52} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} {'bf16/fp32':>10}")
    for kernel in names:
        flops = kernels["fp32"][kernel][0]
        rate = {d: flops / statistics.median(times[kernel][d]) / 1e9 for d in dtypes}
        ratio = rate["bf16"] / rate["fp32"]
        rows.append({"kernel": kernel, "gflops": rate, "ratio": ratio, "times_s": times[kernel]})
        print(f"{kernel:<52} {rate['fp32']:>13.1f} {rate['bf16']:>13.1f} {ratio:>9.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
