"""The pictures and pieces of ``semiseg report``: coloured masks, overlays, sample panels, training curves,
per-class IoU and confusion-matrix plots, and the HTML of an evaluation. The page of a run folder is assembled by
engine/report.py (it reads checkpoints and predicts samples); the command line is commands/report.py.

Plots need matplotlib (``pip install "semiseg[plots]"``, drawn on a ``Figure``, no pyplot); coloured masks and
overlays need only numpy and Pillow.
"""

from __future__ import annotations

import html
import math
import os
from typing import Any, Sequence

import numpy as np

from semiseg.data.palettes import index_to_colors

REPORT_DIR = "report"


# ---------------------------------------------------------------------------------------------------
# images (numpy + Pillow only)


def overlay(image: np.ndarray, mask: np.ndarray, palette: Any, *, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the coloured ``mask`` (H, W) over the RGB ``image`` (H, W, 3) uint8; ignored pixels stay as they are."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    colours = index_to_colors(mask, palette).astype(np.float32)
    out = image.astype(np.float32)
    keep = (np.asarray(mask) != ignore_index)[..., None]
    out = np.where(keep, (1 - alpha) * out + alpha * colours, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def sample_panel(image: np.ndarray, target: np.ndarray | None, prediction: np.ndarray, palette: Any) -> np.ndarray:
    """image | ground truth | prediction | overlay of the prediction, side by side with a 4-pixel gap."""
    tiles = [image]
    if target is not None:
        tiles.append(index_to_colors(target, palette))
    tiles += [index_to_colors(prediction, palette), overlay(image, prediction, palette)]
    h = image.shape[0]
    gap = np.full((h, 4, 3), 255, dtype=np.uint8)
    parts = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


# ---------------------------------------------------------------------------------------------------
# plots (matplotlib, without pyplot: no display or global state needed)


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError('semiseg report draws its plots with matplotlib: pip install "semiseg[plots]"') from e
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


# What the semi-supervised methods log per step, as shares in [0, 1]; plotted in % when a run has them.
PSEUDO_LABEL_CURVES = {
    "mask_ratio": "confident share (kept pseudo labels)",
    "pseudo_acc": "kept pseudo labels right",   # only when the unlabeled images' masks are known (diagnostics)
    "semi_ratio": "self-taught share (AdvSemiSeg)",
}


def curves_figure(records: list[dict]):
    """Training loss, learning rate and validation mIoU against the iteration, plus a fourth panel with the pseudo
    labels' confident share and accuracy when a semi-supervised run logged them; None when there is nothing to plot."""
    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("miou") is not None]
    if not train and not evals:
        return None
    pseudo = [k for k in PSEUDO_LABEL_CURVES if any(k in r for r in train)]
    fig = _figure(16 if pseudo else 12, 3.2)
    axes = fig.subplots(1, 4 if pseudo else 3)
    ax_loss, ax_lr, ax_miou = axes[:3]
    its = [r["iteration"] for r in train]
    if train:
        for key in sorted({k for r in train for k in r if k.startswith("loss")}):
            ax_loss.plot(its, [r.get(key, math.nan) for r in train], label=key, linewidth=1)
        ax_loss.legend(fontsize=7)
        ax_lr.plot(its, [r.get("lr", math.nan) for r in train], color="tab:orange")
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_lr.set(title="learning rate", xlabel="iteration")
    if evals:
        ax_miou.plot([r["iteration"] for r in evals], [100 * r["miou"] for r in evals], marker="o", color="tab:green")
    ax_miou.set(title="validation mIoU (%)", xlabel="iteration")
    if pseudo:
        ax_pseudo = axes[3]
        for key in pseudo:  # steps without the key (the supervised warm-up) are gaps, not zeros
            ax_pseudo.plot(its, [100 * r.get(key, math.nan) for r in train], label=PSEUDO_LABEL_CURVES[key], linewidth=1)
        ax_pseudo.legend(fontsize=7)
        ax_pseudo.set(title="pseudo labels (%)", xlabel="iteration", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def plot_curves(records: list[dict], path: str) -> bool:
    """Save :func:`curves_figure` to ``path``; False when there is nothing to plot."""
    fig = curves_figure(records)
    if fig is None:
        return False
    fig.savefig(path)
    return True


def plot_iou(classes: Sequence[str], iou: Sequence[float | None], path: str, *, title: str = "IoU per class") -> None:
    """Horizontal bars of the per-class IoU in %; classes absent from the data (None/NaN) are marked."""
    values = [math.nan if v is None else 100 * float(v) for v in iou]
    fig = _figure(6, 0.3 * len(classes) + 1.2)
    ax = fig.subplots()
    y = np.arange(len(classes))
    ax.barh(y, [0 if math.isnan(v) else v for v in values], color="tab:blue")
    for i, v in enumerate(values):
        ax.text(1 if math.isnan(v) else v + 1, i, "absent" if math.isnan(v) else f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, labels=list(classes), fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 105), xlabel="IoU (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str) -> None:
    """The confusion matrix normalised per row (each ground-truth class sums to 1), as a heat map."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 0.35 * len(classes) + 2.5
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels=list(classes), fontsize=7)
    ax.set(xlabel="predicted", ylabel="ground truth", title="confusion matrix (row-normalised)")
    if len(classes) <= 25:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------------
# the page


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _eval_section(index: int, result: dict, out_dir: str, plots: bool) -> str:
    name = os.path.basename(result.get("_path", f"eval {index}"))
    data = result.get("data", {})
    metrics = result["metrics"]
    classes = result.get("classes") or [str(i) for i in range(len(metrics["iou"]))]
    what = " / ".join(str(data[k]) for k in ("kind", "split") if data.get(k))
    if data.get("samples"):
        what += f" ({data['samples']} images)"
    if result.get("weights") == "teacher":
        what += ", the EMA teacher"
    parts = [f"<h2>{html.escape(name)}: {html.escape(what)}, iteration {result.get('iteration', '?')}</h2>",
             f"<p><b>mIoU {_pct(metrics.get('miou'))}</b> &middot; aAcc {_pct(metrics.get('acc'))} &middot; "
             f"mAcc {_pct(metrics.get('macc'))} &middot; fwIoU {_pct(metrics.get('fwiou'))}</p>"]
    if plots:
        iou_png, cm_png = f"iou_{index}.png", f"confusion_{index}.png"
        plot_iou(classes, metrics["iou"], os.path.join(out_dir, iou_png), title=f"IoU per class ({data.get('split', '')})")
        parts.append(f'<img src="{iou_png}" alt="IoU per class">')
        if result.get("confusion_matrix"):
            plot_confusion(result["confusion_matrix"], classes, os.path.join(out_dir, cm_png))
            parts.append(f'<img src="{cm_png}" alt="confusion matrix">')
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{_pct(metrics['iou'][i])}</td>"
        f"<td>{_pct(metrics.get('class_acc', [None] * len(classes))[i])}</td></tr>"
        for i, c in enumerate(classes))
    parts.append(f"<table><tr><th>class</th><th>IoU</th><th>accuracy</th></tr>{rows}</table>")
    return "\n".join(parts)


__all__ = ["overlay", "sample_panel", "curves_figure", "plot_curves", "plot_iou", "plot_confusion", "REPORT_DIR"]
