"""A built-in synthetic segmentation dataset: procedural scenes rendered on the fly from (seed, split, index).

Nothing is stored: sample ``i`` of a split is always the same picture, so runs are reproducible and the
dataset needs no files. Scenes are built to need shape, not just colour:

- 7 object classes (disc, triangle, square, ring, cross, star, bar) on a textured background (class 0).
- Pairs of classes share a colour family (disc/square red, triangle/ring green, cross/bar blue), each
  class has a usual texture (gradient, checker, stripes, dots, ...) but 25% of objects get a random
  colour and 30% a random texture, so neither cue alone identifies a class.
- Clutter labelled background: line segments and irregular blobs in object colours, some drawn over
  the objects; objects overlap each other (the topmost one owns a pixel); sizes vary 3.5x; global
  brightness/contrast jitter and sensor noise.

Rendering is numpy-vectorised per object inside its bounding box (about 5 ms for 128x128 on one core).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

from .base import to_sample
from .errors import DataError

CLASSES = ["background", "disc", "triangle", "square", "ring", "cross", "star", "bar"]
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]],
    dtype=np.uint8,
)
SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}  # independent random streams per split
DEFAULT_LENGTH = {"train": 1000, "val": 200, "test": 200}
# Rendered scenes kept per dataset object and process (each DataLoader worker fills its own): a training run draws
# each scene many times (800 steps of 16 visit 125 labeled scenes ~100 times each), rendering is ~4 ms a scene and
# a scene is a pure function of (seed, split, index). 1,000 default scenes take 64 MiB at 128 px, 16 MiB at 64 px.
RENDER_CACHE_BYTES = 256 * 2**20

# Hue (degrees) family per object class; pairs share one so that shape has to decide.
CLASS_HUE = {1: 0, 2: 120, 3: 0, 4: 120, 5: 220, 6: 50, 7: 220}
TEXTURES = ("solid", "gradient", "stripes", "checker", "dots", "noise")
CLASS_TEXTURE = {1: "gradient", 2: "solid", 3: "checker", 4: "solid", 5: "stripes", 6: "dots", 7: "stripes"}


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, h in degrees, s and v in 0..1 -> float RGB 0..255."""
    h = (h % 360) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _texture(kind: str, u: np.ndarray, v: np.ndarray, d: np.ndarray, r: float, color: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """RGB float (n, 3) for pixels with local coordinates u, v (rotated frame) and distance d."""
    alt = np.clip(color * rng.uniform(0.35, 0.65) + rng.uniform(0, 60), 0, 255)  # second colour of the pattern
    if kind == "solid":
        t = np.zeros_like(u)
    elif kind == "gradient":
        t = np.clip(d / max(r, 1e-3), 0, 1)
    elif kind == "stripes":
        period = rng.uniform(3, 7)
        t = (np.sin(u * (2 * math.pi / period)) > 0).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(3, 7)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        period = rng.uniform(4, 7)
        t = ((np.sin(u * (2 * math.pi / period)) * np.sin(v * (2 * math.pi / period))) > 0.4).astype(np.float32)
    else:  # noise
        t = rng.random(u.shape).astype(np.float32)
    t = t[:, None]
    return color[None, :] * (1 - t) + alt[None, :] * t


def _shape(cls: int, u: np.ndarray, v: np.ndarray, d: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Inside-mask of an object of class ``cls`` with circumradius ``r`` in local coordinates."""
    if cls == 1:  # disc
        return d <= r
    if cls in (2, 6):
        ang = np.arctan2(v, u)
        if cls == 2:  # triangle: regular polygon, inside iff d * cos(angle to nearest edge normal) <= apothem
            sector = 2 * math.pi / 3
            # (circumradius 1.25 r: a triangle covers little of its circle, this keeps class areas comparable)
            return d * np.cos(np.mod(ang, sector) - sector / 2) <= 1.25 * r * math.cos(math.pi / 3)
        # star: radius falls linearly from the 5 tips to the inner radius between them
        tri = np.abs(np.mod(ang * 5 / (2 * math.pi), 1.0) - 0.5) * 2
        inner = rng.uniform(0.38, 0.5)
        return d <= r * (inner + (1 - inner) * tri)
    if cls == 3:  # square
        s = r * 0.78
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    if cls == 4:  # ring
        return (d <= r) & (d >= r * rng.uniform(0.45, 0.65))
    if cls == 5:  # cross
        w = r * rng.uniform(0.22, 0.32)
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if cls == 7:  # bar
        return (np.abs(u) <= 1.3 * r) & (np.abs(v) <= r * rng.uniform(0.22, 0.32))
    raise AssertionError(cls)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency random field (h, w, channels): a coarse grid upsampled bilinearly, rows and columns.

    The field is ``np.einsum("hi,ijc,wj->hwc", rows, grid, cols)``, summed here term by term in the order that
    einsum sums them (grid row i outer, column j inner, each term ``(rows * grid) * cols`` in float32), so it is
    bitwise the einsum's (tests/test_data_synthetic.py checks it) and every scene, and every result made on them, stays
    the same. Why not the einsum: its unoptimised three-operand loop was half of a scene's render time.
    """
    grid = rng.random((cells, cells, channels)).astype(np.float32)

    def interp(n: int) -> np.ndarray:
        pos = np.linspace(0, cells - 1, n, dtype=np.float32)
        lo = np.minimum(np.floor(pos).astype(int), cells - 2)
        frac = pos - lo
        m = np.zeros((n, cells), dtype=np.float32)
        m[np.arange(n), lo] = 1 - frac
        m[np.arange(n), lo + 1] = frac
        return m

    rows, cols = interp(h), interp(w)
    field = np.zeros((channels, h, w), dtype=np.float32)  # channels first: each term is a contiguous outer product
    term = np.empty((h, w), dtype=np.float32)
    for i in range(cells):
        for j in range(cells):
            for c in range(channels):
                np.multiply.outer(rows[:, i] * grid[i, j, c], cols[:, j], out=term)
                field[c] += term
    return np.ascontiguousarray(field.transpose(1, 2, 0))  # (h, w, channels) in memory too, as before


def render_scene(rng: np.random.Generator, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image (H, W, 3) uint8, mask (H, W) uint8)."""
    unit = min(height, width) / 128.0  # sizes below are for 128 px and scale with the image
    # Background: smooth colour field, a faint pattern, later noise.
    base = _smooth_field(rng, height, width, 3, 3) * rng.uniform(60, 200) + rng.uniform(0, 60)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.5:
        ang = rng.uniform(0, math.pi)
        base += 18 * np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * (2 * math.pi / rng.uniform(6, 20)))[..., None]
    image = base
    mask = np.zeros((height, width), dtype=np.uint8)

    def stamp(cls: int, label: int, cy: float, cx: float, r: float) -> None:
        """Draw one object (or distractor, label 0) with its texture; later stamps occlude earlier ones."""
        reach = 1.3 * r * 1.25 + 2  # largest extent of any shape (bar length x aspect)
        y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach))
        x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach))
        if y0 >= y1 or x0 >= x1:
            return
        dy = yy[y0:y1, x0:x1] - cy
        dx = xx[y0:y1, x0:x1] - cx
        theta = rng.uniform(0, 2 * math.pi)
        aspect = rng.uniform(0.8, 1.25)  # mild anisotropy: discs become ellipses, squares rectangles
        u = (dx * math.cos(theta) + dy * math.sin(theta)) * aspect
        v = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
        d = np.sqrt(u * u + v * v)
        inside = _shape(cls, u, v, d, r, rng)
        if not inside.any():
            return
        hue = CLASS_HUE[cls] + rng.uniform(-25, 25) if rng.random() > 0.25 else rng.uniform(0, 360)
        color = _hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0))
        kind = CLASS_TEXTURE[cls] if rng.random() > 0.3 else TEXTURES[rng.integers(len(TEXTURES))]
        region = image[y0:y1, x0:x1]
        region[inside] = _texture(kind, u[inside], v[inside], d[inside], r, color, rng)
        mask[y0:y1, x0:x1][inside] = label

    def clutter(count: int) -> None:
        """Background-labelled distractors: thick line segments and irregular blobs."""
        for _ in range(count):
            color = _hsv_to_rgb(rng.choice(list(CLASS_HUE.values())) + rng.uniform(-30, 30),
                                rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
            if rng.random() < 0.5:  # line segment
                y0, x0 = rng.uniform(0, height), rng.uniform(0, width)
                ang, length = rng.uniform(0, math.pi), rng.uniform(15, 60) * unit
                thick = rng.uniform(0.5, 1.1) * unit  # thinner than any bar, so lines are not bars
                y1, x1 = y0 + length * math.sin(ang), x0 + length * math.cos(ang)
                # distance to the segment, clamped projection
                px, py = xx - x0, yy - y0
                sx, sy = x1 - x0, y1 - y0
                t = np.clip((px * sx + py * sy) / (sx * sx + sy * sy), 0, 1)
                on = (px - t * sx) ** 2 + (py - t * sy) ** 2 <= thick * thick
            else:  # blob: a radius wobbling with a few random harmonics, nothing like the regular classes
                cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 9) * unit
                ang = np.arctan2(yy - cy, xx - cx)
                wobble = sum(rng.uniform(0.2, 0.35) * np.sin(k * ang + rng.uniform(0, 6.3)) for k in (1, 2, 3))
                on = np.hypot(yy - cy, xx - cx) <= r * (1 + wobble)
            image[on] = color
            mask[on] = 0

    clutter(int(rng.integers(2, 6)))
    for _ in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(1, len(CLASSES)))
        r = math.exp(rng.uniform(math.log(8), math.log(28))) * unit
        stamp(cls, cls, rng.uniform(0.05, 0.95) * height, rng.uniform(0.05, 0.95) * width, r)
    clutter(int(rng.integers(0, 4)))  # some clutter occludes objects

    # Global photometric change and sensor noise.
    image = image * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25)
    image += rng.normal(0, rng.uniform(2, 8), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticShapes(Dataset):
    """The built-in dataset (kind "synthetic"). Sample ``i`` is rendered from (seed, split, i).

    Args:
        split: "train", "val" or "test" (independent random streams).
        length: number of samples (default 1000 train, 200 val/test).
        size: image size, int or (height, width); default 128.
        seed: changes every picture of every split.
    """

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = 255
    palette = PALETTE
    kind = "synthetic"  # the data.kind that builds it, for error messages
    too_small = "too small for the shapes"

    def __init__(self, split: str = "train", *, length: int | None = None, size=128, seed: int = 0,
                 transform: Callable | None = None):
        if split not in SPLIT_STREAMS:
            raise DataError(f"unknown {self.kind} split {split!r}", None, f"use one of {', '.join(SPLIT_STREAMS)}")
        self.split = split
        self.length = DEFAULT_LENGTH[split] if length is None else int(length)
        if self.length < 1:
            raise DataError(f"length must be >= 1, got {length}", None, "e.g. length=1000")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if min(self.size) < 32:
            raise DataError(f"size {self.size} is {self.too_small}", None, "use at least 32 pixels")
        self.seed = int(seed)
        self.transform = transform
        self.names = [f"{split}_{i:05d}" for i in range(self.length)]
        self._rendered: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._rendered_bytes = 0

    def __getstate__(self) -> dict:
        # a copy sent to another process (a spawned worker) starts with an empty cache rather than carrying this one
        return {**self.__dict__, "_rendered": {}, "_rendered_bytes": 0}

    def __len__(self) -> int:
        return self.length

    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One sample from its own random stream; subclasses draw other scenes."""
        return render_scene(rng, *self.size)

    def stream(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, SPLIT_STREAMS[self.split], index))

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        scene = self._rendered.get(index)
        if scene is None:
            scene = self.render(self.stream(index))
            size = scene[0].nbytes + scene[1].nbytes
            if self._rendered_bytes + size <= RENDER_CACHE_BYTES:  # past the budget scenes are rendered each time
                self._rendered[index] = scene
                self._rendered_bytes += size
        image, mask = scene
        return image.copy(), mask.copy()  # the caller may write into what it gets; the cached scene stays as drawn

    def __getitem__(self, index: int) -> dict:
        image, mask = self.read(index)
        return to_sample(image, mask, self.names[index], self.transform)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, {self.length} samples of {self.size[0]}x{self.size[1]}, "
                f"seed={self.seed})")


def _build(root, split, **options) -> SyntheticShapes:
    # root is unused: the data is generated, not read.
    return SyntheticShapes(split, **options)
