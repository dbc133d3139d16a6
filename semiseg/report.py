"""``semiseg report RUN_DIR``: an HTML page of a run, with plots, for reading results and sharing them.

    semiseg report runs/quickstart                       # -> runs/quickstart/report/index.html
    semiseg report runs/camvid --eval runs/camvid/eval_test.json --samples 8 --split test

The page shows the training curves (loss, learning rate, validation mIoU from ``metrics.jsonl``), and for
every evaluation JSON written by ``semiseg eval`` (all ``eval_*.json`` of the run by default) the per-class
IoU as a bar chart, the row-normalised confusion matrix and the numbers; then a few images of a split with
their ground truth, the prediction and an overlay. Plots need matplotlib (``pip install "semiseg[plots]"``);
coloured masks and overlays need only numpy and Pillow.
"""

from __future__ import annotations

import argparse
import glob
import html
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image

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


def plot_curves(records: list[dict], path: str) -> bool:
    """Training loss, learning rate and validation mIoU against the iteration; False when nothing to plot."""
    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("miou") is not None]
    if not train and not evals:
        return False
    fig = _figure(12, 3.2)
    ax_loss, ax_lr, ax_miou = fig.subplots(1, 3)
    if train:
        its = [r["iteration"] for r in train]
        for key in sorted({k for r in train for k in r if k.startswith("loss")}):
            ax_loss.plot(its, [r.get(key, math.nan) for r in train], label=key, linewidth=1)
        ax_loss.legend(fontsize=7)
        ax_lr.plot(its, [r.get("lr", math.nan) for r in train], color="tab:orange")
    ax_loss.set(title="training loss", xlabel="iteration")
    ax_lr.set(title="learning rate", xlabel="iteration")
    if evals:
        ax_miou.plot([r["iteration"] for r in evals], [100 * r["miou"] for r in evals], marker="o", color="tab:green")
    ax_miou.set(title="validation mIoU (%)", xlabel="iteration")
    for ax in (ax_loss, ax_lr, ax_miou):
        ax.grid(alpha=0.3)
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


def _samples_section(run_dir: str, split: str | None, count: int, out_dir: str, device: str,
                     allow_code: bool | None = None) -> str:
    """Predict ``count`` images of the run's dataset and save panels; a note instead when the data is absent."""
    import torch

    from semiseg.data import DataError
    from semiseg.engine import build
    from semiseg.engine.predict import load_trained_model, predict_mask
    from semiseg.runtime import resolve_device

    loaded = load_trained_model(run_dir, device=resolve_device(device), allow_code=allow_code)
    split = split or loaded.cfg.data.val_split
    try:
        dataset = build.build_dataset(loaded.cfg, split, validation=split == loaded.cfg.data.val_split)
    except (DataError, OSError) as e:
        return f"<h2>Samples</h2><p>Not shown: the dataset could not be opened ({html.escape(str(e))}).</p>"
    dataset.transform = None
    n = min(count, len(dataset))
    # evenly spread over the split, so consecutive video frames do not fill the page
    picks = sorted({round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)})
    palette = loaded.info.palette
    figures = []
    for k, i in enumerate(picks):
        sample = dataset[i]
        image = torch.as_tensor(sample["image"]).permute(1, 2, 0).numpy().astype(np.uint8)
        target = sample.get("mask")
        target = None if target is None else torch.as_tensor(target).numpy()
        pred = predict_mask(loaded, image)
        png = f"sample_{k}.png"
        Image.fromarray(sample_panel(image, target, pred, palette)).save(os.path.join(out_dir, png))
        name = sample.get("name", str(i))
        figures.append(f'<figure><img src="{png}" alt="{html.escape(str(name))}"><figcaption>{html.escape(str(name))}: '
                       f"image | ground truth | prediction | overlay</figcaption></figure>")
    legend = "".join(
        f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>{html.escape(c)} '
        for c, (r, g, b) in zip(loaded.info.classes, palette))
    return f"<h2>Samples ({html.escape(split)}, {os.path.basename(loaded.checkpoint_path)})</h2><p>{legend}</p>" + "\n".join(figures)


def _logged_result(run_dir: str, record: dict) -> dict:
    """An evaluation record of metrics.jsonl in the shape of an eval JSON (class names from the checkpoint)."""
    from semiseg.engine.checkpoint import load_checkpoint, resolve_checkpoint

    classes = load_checkpoint(resolve_checkpoint(run_dir, prefer="best.pt"))["dataset"]["classes"]
    return {"_path": "metrics.jsonl", "data": {"split": record.get("split", "val")}, "iteration": record["iteration"],
            "classes": classes, "metrics": record}


STYLE = """body{font-family:sans-serif;max-width:1250px;margin:1em auto;padding:0 1em}
img{max-width:100%;margin:4px 0}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}
.swatch{display:inline-block;width:12px;height:12px;margin:0 3px 0 10px;border:1px solid #888}"""


def build_report(run_dir: str, *, evals: Sequence[str] | None = None, samples: int = 4, split: str | None = None,
                 out_dir: str | None = None, device: str = "auto", plots: bool | None = None,
                 allow_code: bool | None = None) -> str:
    """Write the report of ``run_dir`` and return the path of its index.html.

    ``evals``: evaluation JSON files (default: the run's ``eval_*.json``). ``samples``: images to predict
    (0: none). ``plots``: None draws them when matplotlib is installed; True requires it. ``allow_code``:
    let the run's config import ``module:function`` names for the samples (see ``load_trained_model``).
    """
    from semiseg.engine.logger import read_metrics

    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run folder (give the folder `semiseg train` wrote)")
    out_dir = out_dir or os.path.join(run_dir, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    if plots is None:
        try:
            import matplotlib  # noqa: F401

            plots = True
        except ImportError:
            plots = False

    title = os.path.basename(os.path.abspath(run_dir))
    body = [f"<h1>{html.escape(title)}</h1>"]
    if not plots:
        body.append('<p>Plots skipped: matplotlib is not installed (pip install "semiseg[plots]").</p>')
    records = read_metrics(run_dir) if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []
    evals_logged = [r for r in records if r.get("kind") == "eval" and r.get("miou") is not None]
    if evals_logged:
        best = max(evals_logged, key=lambda r: r["miou"])
        body.append(f"<p>{len(evals_logged)} validation passes; best mIoU {_pct(best['miou'])} at iteration "
                    f"{best['iteration']}, last {_pct(evals_logged[-1]['miou'])} at iteration {evals_logged[-1]['iteration']}.</p>")
    if plots and plot_curves(records, os.path.join(out_dir, "curves.png")):
        body.append('<img src="curves.png" alt="training curves">')

    paths = list(evals) if evals is not None else sorted(glob.glob(os.path.join(run_dir, "eval_*.json")))
    if not paths and evals_logged:  # no `semiseg eval` file yet: the run's own last validation, without the matrix
        body.append(_eval_section(0, _logged_result(run_dir, evals_logged[-1]), out_dir, plots))
        body.append(f"<p>For the confusion matrix and other splits: <code>semiseg eval {html.escape(run_dir)} "
                    "[--split test]</code>, then run the report again.</p>")
    for i, path in enumerate(paths):
        try:
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not an evaluation JSON ({e}); write one with `semiseg eval {run_dir} --out FILE`") from e
        if "metrics" not in result:
            raise ValueError(f"{path}: no 'metrics' in this JSON; write one with `semiseg eval {run_dir} --out FILE`")
        result["_path"] = path
        body.append(_eval_section(i, result, out_dir, plots))
    if samples > 0:
        body.append(_samples_section(run_dir, split, samples, out_dir, device, allow_code))

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    from semiseg.atomic import atomic_write_text

    return atomic_write_text(os.path.join(out_dir, "index.html"), page)


# ---------------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `semiseg train`")
    parser.add_argument("--eval", nargs="+", dest="evals", metavar="JSON",
                        help="evaluation files from `semiseg eval` (default: the run's eval_*.json)")
    parser.add_argument("--samples", type=int, default=4, help="images to predict and show (0: none)")
    parser.add_argument("--split", help="split the samples come from (default: the run's validation split)")
    parser.add_argument("--out", help=f"output folder (default: RUN_DIR/{REPORT_DIR})")
    parser.add_argument("--device", default="auto")
    from semiseg.engine.predict import add_allow_code_argument

    add_allow_code_argument(parser)


def run(args: argparse.Namespace) -> int:
    from semiseg.config import ConfigError
    from semiseg.engine.checkpoint import CheckpointError

    try:
        index = build_report(args.run_dir, evals=args.evals, samples=args.samples, split=args.split,
                             out_dir=args.out, device=args.device, allow_code=args.allow_code)
    except (FileNotFoundError, ValueError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0


__all__ = ["overlay", "sample_panel", "plot_curves", "plot_iou", "plot_confusion", "build_report"]
