"""Milliseconds to render one scene of the built-in synthetic datasets (they are drawn on the fly, in the data loader).

    python benchmarks/synthetic_render_speed.py [--images 50] [--threads 1]

A scene is drawn from (seed, split, index) every time it is read, so its cost is paid every epoch by each loader
worker; it should stay small next to a training step (tens to hundreds of ms on a CPU).
"""

from __future__ import annotations

import argparse
import time

import torch

from semiseg.data import build_dataset


def ms_per_scene(kind: str, images: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per scene; CPU time is the one to compare on a box that runs other jobs."""
    ds = build_dataset(kind, split="train")
    ds.read(0)  # first-call setup (noise tables, fonts) out of the timing
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(1, images + 1):
        ds.read(i)
    return 1000 * (time.perf_counter() - start) / images, 1000 * (time.process_time() - cpu) / images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for kind in ("synthetic", "synthetic_thin"):
        wall, cpu = ms_per_scene(kind, a.images)
        print(f"{kind}: {wall:.1f} ms wall, {cpu:.1f} ms CPU per 128x128 scene ({a.images} scenes)")


if __name__ == "__main__":
    main()
