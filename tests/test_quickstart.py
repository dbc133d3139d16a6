"""`semiseg quickstart --fast`: the whole pipeline of the README's first command, shortened for CI.

The full quickstart (800 iterations, ~2-4 minutes on 2 cores) is measured in the README; this checks that
every piece runs and every promised file is there.
"""

from __future__ import annotations

import importlib.util
import os

from PIL import Image

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.logger import read_metrics
from semiseg.engine.quickstart import QUICKSTART, quickstart_config


def test_quickstart_fast_leaves_a_complete_run_folder(tmp_path, capsys):
    run = str(tmp_path / "quickstart")
    assert main(["quickstart", "--fast", "--run-dir", run, "--no-progress", "--predictions", "2"]) == 0
    out = capsys.readouterr().out
    assert "background" in out and "mIoU" in out and "finished in" in out and run in out
    expected = ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "predictions", "split.txt"]
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard events only when it is installed
        expected.append("tb")
    assert sorted(e for e in os.listdir(run) if not e.startswith(".")) == expected  # (+ .semiseg-run, .semiseg.lock)
    cfg = load_config(os.path.join(run, "config.yaml"))  # reusable as a recipe
    assert cfg.model.name == QUICKSTART["model.name"] and cfg.data.kind == "synthetic"
    assert load_checkpoint(os.path.join(run, "last.pt"))["iteration"] == cfg.train.iterations
    events = read_metrics(run)
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "eval"
    preds = sorted(os.listdir(os.path.join(run, "predictions")))
    assert preds == ["val_00000_panel.png", "val_00000_pred.png", "val_00001_panel.png", "val_00001_pred.png"]
    mask = Image.open(os.path.join(run, "predictions", "val_00000_pred.png"))
    assert mask.mode == "P" and mask.size == (64, 64)
    assert Image.open(os.path.join(run, "predictions", "val_00000_panel.png")).size == (3 * 256 + 8, 256)  # 4x zoom

    # a second quickstart never touches the first run
    assert main(["quickstart", "--fast", "--run-dir", run, "--no-progress", "--predictions", "0",
                 "train.iterations=2"]) == 0
    assert os.path.isdir(run + "-2") and load_checkpoint(os.path.join(run, "last.pt"))["iteration"] == 20


def test_quickstart_config_is_the_documented_one():
    cfg = quickstart_config()
    assert cfg.train.iterations == QUICKSTART["train.iterations"] and cfg.data.crop_size == [96, 96]
    assert cfg.model.pretrained_backbone is False  # no download: runs offline
    assert quickstart_config(iterations=50).train.eval_interval == 50
