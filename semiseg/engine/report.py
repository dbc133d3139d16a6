"""The HTML report of a run folder (``semiseg report``): curves from ``metrics.jsonl``, the ``eval_*.json`` files of
``semiseg eval``, and a few samples predicted with the run's checkpoint. The pictures come from semiseg.report; this
module reads the run folder (checkpoints, metrics) and loads the model, which is engine work.
"""

from __future__ import annotations

import glob
import html
import json
import os
from typing import Sequence

import numpy as np
from PIL import Image

from semiseg.report import REPORT_DIR, _eval_section, _pct, plot_curves, sample_panel


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


__all__ = ["build_report"]
