"""How fast does evaluation count pixels? ``ConfusionMatrix.update`` against plain ``np.bincount``.

Class-index predictions and targets (what ``engine/evaluate.py`` passes: ``logits.argmax(1)`` and the int64
masks of the data pipeline), VOC-like by default: 21 classes, ignore 255 on ~10% of the pixels, 4x512x512.
Rows, in Mpix/s (best of ``--repeats`` calls, one thread unless ``--threads``):

  np.bincount (index only)   ``np.bincount`` of a ready-made flat index: the floor of counting itself
  np.bincount (fast_hist)    the classic baseline of FCN / torchvision-style code: mask the valid pixels,
                             ``np.bincount(n * t[m] + p[m])``
  update (boolean mask)      the previous ``ConfusionMatrix.update``: validate with boolean masks,
                             select the valid pixels, bincount (copied here as ``old_update``)
  update                     ``semiseg.metrics.ConfusionMatrix.update`` as it is now

All four must give the same matrix (checked before timing).

    OMP_NUM_THREADS=1 python benchmarks/confusion_matrix_speed.py
    python benchmarks/confusion_matrix_speed.py --classes 19 --size 1024 2048 --batch 1   # Cityscapes-sized
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import numpy as np
import torch

from semiseg.metrics import ConfusionMatrix


def old_update(mat: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, n: int, ignore: int) -> None:
    """The previous algorithm of ``ConfusionMatrix.update`` for class indices (its validation included)."""
    pred, target = pred.long(), target.long()
    valid = target != ignore
    if bool((valid & ((target < 0) | (target >= n))).any()):
        raise ValueError("target out of range")
    if bool((valid & ((pred < 0) | (pred >= n))).any()):
        raise ValueError("pred out of range")
    pred, target = pred.reshape(-1), target.reshape(-1)
    valid = valid.reshape(-1)
    idx = target[valid] * n + pred[valid]
    mat += torch.bincount(idx, minlength=n * n).reshape(n, n)


def fast_hist(t: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    m = (t >= 0) & (t < n)
    return np.bincount(n * t[m].astype(int) + p[m], minlength=n * n).reshape(n, n)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, first-call dispatch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, nargs="+", default=[512], help="H [W]")
    p.add_argument("--ignore", type=int, default=255)
    p.add_argument("--ignore-fraction", type=float, default=0.1)
    p.add_argument("--target-dtype", choices=["int64", "uint8"], default="int64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    n, ignore = a.classes, a.ignore
    h, w = (a.size * 2)[:2]
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, n, (a.batch, h, w), generator=g)
    target[torch.rand(a.batch, h, w, generator=g) < a.ignore_fraction] = ignore
    target = target.to(getattr(torch, a.target_dtype))
    pred = torch.randint(0, n, (a.batch, h, w), generator=g)
    pixels = pred.numel()

    t_np, p_np = target.numpy().astype(np.int64), pred.numpy()
    flat = np.where(t_np == ignore, n * n, t_np * n + p_np).reshape(-1)  # ignored pixels in one extra bin

    old = torch.zeros(n, n, dtype=torch.int64)
    old_update(old, pred, target, n, ignore)
    new = ConfusionMatrix(n, ignore_index=ignore)
    new.update(pred, target)
    ref = np.bincount(flat, minlength=n * n + 1)[: n * n].reshape(n, n)
    assert np.array_equal(fast_hist(t_np.reshape(-1), p_np.reshape(-1), n), ref)
    assert np.array_equal(old.numpy(), ref) and np.array_equal(new.mat.numpy(), ref), "the counts differ"

    cases = {
        "np.bincount (index only)": lambda: np.bincount(flat, minlength=n * n + 1),
        "np.bincount (fast_hist)": lambda: fast_hist(t_np.reshape(-1), p_np.reshape(-1), n),
        "update (boolean mask)": lambda: old_update(old, pred, target, n, ignore),
        "update": lambda: new.update(pred, target),
    }
    print(f"{cpu_name()}, torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}; "
          f"{a.batch}x{h}x{w} px, {n} classes, ignore {ignore} on {a.ignore_fraction:.0%}, target {a.target_dtype}")
    times = {name: float("inf") for name in cases}
    for _ in range(3):  # interleaved rounds: a burst of background load does not hit one row only
        for name, fn in cases.items():
            times[name] = min(times[name], best_time(fn, max(1, a.repeats // 3)))
    for name, t in times.items():
        print(f"  {name:26s} {pixels / t / 1e6:8.1f} Mpix/s  {t * 1e3:7.2f} ms per batch")


if __name__ == "__main__":
    main()
