"""A built-in thin-structure dataset: curvy vessels/cracks 1-3 px wide on a textured background, binary.

Kind ``synthetic_thin`` (classes background, vessel). Like ``synthetic``, sample ``i`` of a split is rendered
from (seed, split, i): nothing is stored. It stands in for retina vessels, membranes, cracks and poles, the
tasks where a recipe made for large objects fails (the foreground is a few per cent of the pixels, one to three
pixels wide, and disappears when images are scaled down or predicted at a coarse output stride):

- 3-7 smooth random curves per scene, some branching, 1-3 px wide (tapering), darker than their surroundings
  by a contrast that varies per curve (faint ones included);
- distractors labelled background: dark round blobs and a few short, wide, soft streaks, so that "dark" alone
  is not "vessel";
- background: a smooth uneven illumination, a fine mottled texture, a colour tint and sensor noise.

Rendering is numpy-vectorised (a few ms for 128x128 on one core).
"""

from __future__ import annotations

import math

import numpy as np

from .synthetic import SPLIT_STREAMS, SyntheticShapes

CLASSES = ["background", "vessel"]
PALETTE = np.array([[0, 0, 0], [255, 60, 60]], dtype=np.uint8)


def _curve(rng: np.random.Generator, h: int, w: int, start=None, heading=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (y, x) every 0.5 px along a smooth random walk, and the half-width at each point."""
    length = rng.uniform(0.4, 1.4) * (h + w) / 2
    n = max(8, int(length / 0.5))
    y, x = start if start is not None else (rng.uniform(0, h), rng.uniform(0, w))
    angle = heading if heading is not None else rng.uniform(0, 2 * math.pi)
    # the heading turns gently: low-pass filtered noise as the turning rate (bends, no spirals)
    turn = np.convolve(rng.normal(0, 0.06, n + 40), np.ones(40) / 40, mode="valid")[:n] + rng.normal(0, 0.004)
    angles = angle + np.cumsum(turn)
    ys = y + np.cumsum(0.5 * np.sin(angles))
    xs = x + np.cumsum(0.5 * np.cos(angles))
    width0 = rng.uniform(1.0, 3.0)
    width1 = rng.uniform(1.0, width0)  # tapering towards the end
    half = np.linspace(width0, width1, n) / 2
    inside = (ys > -4) & (ys < h + 4) & (xs > -4) & (xs < w + 4)
    return ys[inside], xs[inside], half[inside]


def _field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field (h, w) in 0..1: a coarse grid upsampled bilinearly by two matrix products."""
    grid = rng.random((cells, cells))

    def interp(n: int) -> np.ndarray:
        pos = np.linspace(0, cells - 1, n)
        lo = np.minimum(np.floor(pos).astype(int), cells - 2)
        m = np.zeros((n, cells))
        m[np.arange(n), lo] = 1 - (pos - lo)
        m[np.arange(n), lo + 1] = pos - lo
        return m

    return interp(h) @ grid @ interp(w).T


def _rasterise(ys: np.ndarray, xs: np.ndarray, half: np.ndarray, h: int, w: int,
               value: np.ndarray | None = None) -> np.ndarray:
    """The largest ``value`` (default 1) of the curve points whose half-width + 0.25 reaches each pixel centre
    (a 1 px curve stays connected); 0 elsewhere. All points of all curves at once."""
    out = np.zeros(h * w, dtype=np.float64)
    value = np.ones_like(ys) if value is None else value
    reach2 = (half + 0.25) ** 2
    ry, rx = np.round(ys), np.round(xs)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            py, px = ry + dy, rx + dx
            ok = ((py - ys) ** 2 + (px - xs) ** 2 <= reach2) & (py >= 0) & (py < h) & (px >= 0) & (px < w)
            np.maximum.at(out, (py[ok] * w + px[ok]).astype(np.int64), value[ok])
    return out.reshape(h, w)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (edge padding) as a sum of shifted copies: fast for the small sigmas used here."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = a.shape
    p = np.pad(a, r, mode="edge")
    rows = sum(k[i] * p[i:i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * r + 1))


def render_thin_scene(rng: np.random.Generator, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image (H, W, 3) uint8, mask (H, W) uint8 with 1 = vessel)."""
    h, w = height, width
    light = _field(rng, h, w, 3) * rng.uniform(40, 90) + rng.uniform(90, 140)
    mottle = (_field(rng, h, w, max(4, min(h, w) // 6)) - 0.5) * rng.uniform(10, 30)
    grey = light + mottle
    points: list[tuple[np.ndarray, ...]] = []
    for _ in range(int(rng.integers(3, 8))):
        ys, xs, half = _curve(rng, h, w)
        contrast = rng.uniform(12, 55)  # faint and strong vessels
        points.append((ys, xs, half, np.full(len(ys), contrast)))
        if len(ys) > 20 and rng.random() < 0.5:  # a branch leaving somewhere along the curve
            k = int(rng.integers(len(ys) // 4, 3 * len(ys) // 4))
            by, bx, bh = _curve(rng, h, w, start=(ys[k], xs[k]), heading=rng.uniform(0, 2 * math.pi))
            points.append((by, bx, np.minimum(bh, half[k]), np.full(len(by), contrast)))
    ys, xs, half, value = (np.concatenate(parts) for parts in zip(*points))
    contrast_map = _rasterise(ys, xs, half, h, w, value)
    mask = contrast_map > 0
    darkening = np.minimum(1.4 * _blur(contrast_map, 0.55), contrast_map.max())

    distract = np.zeros((h, w), dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(2, 7))):  # dark blobs
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 6)
        blob = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1)
        distract = np.maximum(distract, rng.uniform(15, 50) * blob)
    for _ in range(int(rng.integers(0, 3))):  # short, wide, soft streaks: dark and elongated but not thin
        ys, xs, _ = _curve(rng, h, w)
        keep = slice(0, max(1, len(ys) // 3))
        wide = _rasterise(ys[keep], xs[keep], np.full(len(ys[keep]), 2.0), h, w)
        streak = _blur(wide, 1.8)
        distract = np.maximum(distract, rng.uniform(15, 40) * streak / max(streak.max(), 1e-6))
    grey = grey - np.maximum(darkening, distract)

    tint = np.array([rng.uniform(0.9, 1.15), rng.uniform(0.55, 0.8), rng.uniform(0.35, 0.6)])  # fundus-like
    image = grey[..., None] * tint[None, None, :] * rng.uniform(0.8, 1.2)
    image = image + rng.normal(0, rng.uniform(2, 6), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)


class SyntheticThin(SyntheticShapes):
    """The built-in thin-structure dataset (kind "synthetic_thin"): SyntheticShapes' options and splits, other
    scenes (curvy 1-3 px vessels) from a random stream of their own."""

    classes = CLASSES
    num_classes = len(CLASSES)
    palette = PALETTE
    kind = "synthetic_thin"
    too_small = "too small"

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return render_thin_scene(rng, *self.size)

    def stream(self, index: int) -> np.random.Generator:
        # a stream apart from the shapes dataset's: (seed, split, index, 7)
        return np.random.default_rng((self.seed, SPLIT_STREAMS[self.split], index, 7))


def _build(root, split, **options) -> SyntheticThin:
    return SyntheticThin(split, **options)  # root is unused: the data is generated
