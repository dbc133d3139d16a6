"""semiseg.export: ONNX export options, onnxruntime parity, and the export/eval commands (every model: test_models_registry)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from PIL import Image

from semiseg.cli import main
from semiseg.config import load_config
from semiseg.data.transforms import build_eval_transform, normalize
from semiseg.engine import build
from semiseg.engine.evaluate import evaluate_checkpoint
from semiseg.engine.evaluate import evaluate, make_eval_loader
from semiseg.engine.predict import load_trained_model
from semiseg.engine.trainer import Trainer
from semiseg.export import ExportError, check_onnx, export_onnx
from semiseg.inference import InferenceOptions, infer
from semiseg.models import build_model

from conftest import TinyShapes, tiny_overrides

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _inputs(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# Every registered model's export and onnxruntime parity: tests/test_models_registry.py.


def test_static_export_fixes_the_input_shape(tmp_path):
    model = build_model("fcn_resnet18", 2)
    path = export_onnx(model, tmp_path / "static.onnx", height=32, width=48, dynamic=False, opset=13)
    proto = onnx.load(path)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48] and proto.opset_import[0].version == 13
    assert check_onnx(model, path, _inputs(1, 32, 48)) < 1e-4
    with pytest.raises(ExportError, match="--dynamic"):
        check_onnx(model, path, _inputs(1, 40, 48))


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    model = build_model("fcn_resnet18", 2)
    path = export_onnx(model, tmp_path / "m.onnx", height=32, width=32)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"pip install 'semiseg\[onnx\]'"):
        check_onnx(model, path, _inputs(1, 32, 32))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r"semiseg\[onnx\]"):
        export_onnx(model, tmp_path / "n.onnx", height=32, width=32)
    assert not os.path.exists(tmp_path / "n.onnx")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A checkpoint of the tiny engine-test model (12 iterations on 24x24 crops, ~1 s)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(output_dir=str(root), name="tiny"))
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    return cfg.run_dir


def test_export_command_round_trip_matches_pytorch(tiny_run, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", tiny_run, "--out", str(out), "--dynamic", "--check", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "max |onnxruntime - PyTorch|" in printed and "1x3x24x24" in printed and "2x3x19x17" in printed

    # onnxruntime by hand on a real, normalised validation image of another size, against the checkpoint
    loaded = load_trained_model(tiny_run, device=torch.device("cpu"), precision="fp32")

    sample = TinyShapes("val", size=40, transform=build_eval_transform(normalization="imagenet"))[0]
    x = sample["image"].unsqueeze(0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    assert got.shape == (1, 4, 40, 40)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["semiseg.classes"]) == ["background", "red", "green", "blue"]
    assert meta["semiseg.normalization"] == "imagenet" and meta["semiseg.iteration"] == str(loaded.iteration)

    # an existing file is kept unless --force
    before = out.stat().st_mtime_ns
    assert main(["export", tiny_run, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert main(["export", tiny_run, "--out", str(out), "--force", "--height", "16", "--width", "20"]) == 0
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 20]  # static this time
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f] == []  # no temporary file left behind


def test_eval_command_slide_mode_writes_json(tiny_run, tmp_path, capsys):
    out = tmp_path / "slide.json"
    argv = ["eval", tiny_run, "--device", "cpu", "--mode", "slide", "--crop", "16", "16", "--stride", "8", "8",
            "--scales", "0.75", "1", "--flip", "--out", str(out)]
    assert main(argv) == 0
    assert "mIoU" in capsys.readouterr().out
    saved = json.load(open(out))
    assert saved["inference"] == {"mode": "slide", "crop_size": [16, 16], "stride": [8, 8], "scales": [0.75, 1.0],
                                  "flip": True}
    # the flags reached the inference: the same numbers as evaluating with these options directly
    whole = evaluate_checkpoint(tiny_run, device="cpu")
    assert whole["inference"]["mode"] == "whole"

    loaded = load_trained_model(tiny_run, device=torch.device("cpu"))
    dataset = build.build_dataset(loaded.cfg, "val", validation=True)
    dataset.transform = build.eval_transform(loaded.info.normalization)
    opts = InferenceOptions("slide", crop_size=(16, 16), stride=(8, 8), scales=(0.75, 1.0), flip=True)
    cm = evaluate(loaded.model, make_eval_loader(dataset), 4, precision=loaded.precision,
                  channels_last=loaded.channels_last, inference=opts)
    assert saved["confusion_matrix"] == cm.mat.tolist()
    # --crop with --mode whole is a contradiction, reported as such
    assert main(["eval", tiny_run, "--mode", "whole", "--crop", "16", "16"]) == 2
    assert "--mode slide" in capsys.readouterr().err


def test_predict_command_takes_the_inference_flags(tiny_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "masks"
    assert main(["predict", tiny_run, str(images), str(out), "--device", "cpu", "--crop", "16", "16",
                 "--scales", "1", "1.5", "--flip"]) == 0
    mask = np.array(Image.open(out / "a.png"))
    assert mask.shape == (30, 41)
    # the masks are the argmax of inference with these options
    loaded = load_trained_model(tiny_run, device=torch.device("cpu"))
    x = normalize(torch.from_numpy(np.array(Image.open(images / "a.png"))).permute(2, 0, 1), "imagenet")[None]
    opts = InferenceOptions("slide", crop_size=(16, 16), scales=(1.0, 1.5), flip=True)
    logits = infer(loaded.model, x, opts, precision=loaded.precision, channels_last=loaded.channels_last)
    assert np.array_equal(mask, logits.argmax(1)[0].numpy())
