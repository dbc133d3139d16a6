"""semiseg report: overlays and panels pixel by pixel, and the whole page from a real tiny run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.engine.trainer import Trainer
from semiseg.engine.report import build_report
from semiseg.report import curves_figure, overlay, sample_panel

from conftest import PALETTE, tiny_overrides


def test_overlay_blends_colours_and_leaves_ignored_pixels():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1, 2], [3, 255, 1]])
    out = overlay(image, mask, PALETTE, alpha=0.5)
    # class 1 is red (255, 0, 0): half of 100 + half of 255 = 177.5 -> 178; green/blue channels 50
    assert out[0, 1].tolist() == [178, 50, 50]
    assert out[1, 0].tolist() == [50, 50, 178]  # class 3 is blue
    assert out[1, 1].tolist() == [100, 100, 100]  # ignore: untouched
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, mask[:, :2], PALETTE)


def test_sample_panel_places_the_tiles_side_by_side():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    target = np.full((4, 5), 1)
    pred = np.full((4, 5), 2)
    panel = sample_panel(image, target, pred, PALETTE)
    assert panel.shape == (4, 4 * 5 + 3 * 4, 3)
    assert panel[0, 9 + 0].tolist() == [255, 0, 0]  # ground truth tile (after image + gap) is red
    assert panel[0, 18].tolist() == [0, 255, 0]  # prediction tile is green
    assert panel[0, 5].tolist() == [255, 255, 255]  # the gap


def test_report_of_a_real_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    cfg = load_config(None, tiny_overrides(**{"output_dir": str(tmp_path), "name": "run", "train.iterations": 6,
                                              "train.eval_interval": 3}))
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    out_json = os.path.join(cfg.run_dir, "eval_val.json")
    # before any `semiseg eval`: the run's own last validation (per-class IoU from metrics.jsonl, no matrix)
    assert main(["report", cfg.run_dir, "--samples", "0"]) == 0
    page = open(os.path.join(cfg.run_dir, "report", "index.html"), encoding="utf-8").read()
    assert "<h2>metrics.jsonl: val, iteration 6</h2>" in page and 'src="iou_0.png"' in page
    assert "confusion_0.png" not in page and "semiseg eval" in page

    assert main(["eval", cfg.run_dir, "--out", out_json]) == 0
    with open(out_json) as f:
        miou = json.load(f)["metrics"]["miou"]

    assert main(["report", cfg.run_dir, "--samples", "3"]) == 0
    report = os.path.join(cfg.run_dir, "report")
    page = open(os.path.join(report, "index.html"), encoding="utf-8").read()
    assert f"mIoU {100 * miou:.2f}" in page  # the numbers of the evaluation file
    for png in ("curves.png", "iou_0.png", "confusion_0.png", "sample_0.png", "sample_2.png"):
        assert f'src="{png}"' in page
        with Image.open(os.path.join(report, png)) as im:
            assert im.size[0] > 50 and im.size[1] > 20
    with Image.open(os.path.join(report, "sample_0.png")) as im:
        assert im.size == (4 * 32 + 3 * 4, 32)  # 32x32 images: image | truth | prediction | overlay
    assert "2 validation passes" in page

    # a broken evaluation file is named in the error, nothing is half-written
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", cfg.run_dir, "--eval", str(bad), "--samples", "0"]) == 2
    assert "bad.json: not an evaluation JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_training_curves_show_the_pseudo_labels_of_a_semi_supervised_run():
    pytest.importorskip("matplotlib")
    supervised = [{"kind": "train", "iteration": i, "loss": 1.0 / i, "lr": 0.01} for i in (1, 2, 3)]
    assert len(curves_figure(supervised).axes) == 3  # loss, learning rate, validation mIoU
    assert curves_figure([{"kind": "start", "iteration": 0}]) is None

    # a consistency run: supervised warm-up first (no pseudo labels), then the confident share and its accuracy
    semi = supervised + [{"kind": "train", "iteration": 4, "loss": 0.5, "lr": 0.01, "mask_ratio": 0.25, "pseudo_acc": 0.8},
                         {"kind": "train", "iteration": 5, "loss": 0.4, "lr": 0.01, "mask_ratio": 0.5, "pseudo_acc": 0.9}]
    fig = curves_figure(semi)
    assert len(fig.axes) == 4
    lines = {line.get_label(): line for line in fig.axes[3].get_lines()}
    share = lines["confident share (kept pseudo labels)"]
    assert list(share.get_xdata()) == [1, 2, 3, 4, 5]
    assert np.isnan(share.get_ydata()[:3]).all()  # the warm-up is a gap, not a zero share
    assert np.allclose(share.get_ydata()[3:], [25.0, 50.0])
    assert np.allclose(lines["kept pseudo labels right"].get_ydata()[3:], [80.0, 90.0])
    assert "self-taught share (AdvSemiSeg)" not in lines
