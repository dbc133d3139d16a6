"""semiseg.onnx_predict: masks from an exported ONNX file under onnxruntime equal the PyTorch path's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semiseg.data.transforms import normalize
from semiseg.export import ExportError, export_onnx
from semiseg.inference import InferenceOptions, infer
from semiseg.models import build_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from semiseg.onnx_predict import OnnxPredictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("fcn_resnet18", 4).eval()  # random weights, no download
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    meta = {"semiseg.normalization": "caffe_rgb", "semiseg.classes": json.dumps(["a", "b", "c", "d"]),
            "semiseg.palette": json.dumps([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]),
            "semiseg.model": "fcn_resnet18"}
    export_onnx(model, path, height=32, width=32, dynamic=True, metadata=meta)
    return model, path


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _torch_mask(model, image, normalization, options=None):
    x = normalize(torch.from_numpy(image).permute(2, 0, 1), normalization).unsqueeze(0)
    return infer(model, x, options).argmax(1)[0].to(torch.uint8).numpy(), x


def test_whole_image_masks_and_logits_match_the_torch_path(exported):
    model, path = exported
    predictor = OnnxPredictor(path, threads=1)
    assert predictor.normalization == "caffe_rgb" and predictor.classes == ["a", "b", "c", "d"]
    assert predictor.palette[1] == [255, 0, 0]
    for h, w in [(32, 32), (45, 61)]:  # the traced size and another one (dynamic axes)
        image = _image(h, w)
        expected, x = _torch_mask(model, image, "caffe_rgb")
        mask = predictor.predict_mask(image)
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        assert np.array_equal(mask, expected)
        with torch.no_grad():
            ref = model(x)
        got = predictor.logits(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-3
    # a (3, H, W) uint8 tensor works as well as an (H, W, 3) array
    image = _image(40, 36, seed=1)
    assert np.array_equal(predictor.predict_mask(torch.from_numpy(image).permute(2, 0, 1)),
                          predictor.predict_mask(image))


def test_sliding_window_and_flip_go_through_the_same_inference_code(exported):
    model, path = exported
    predictor = OnnxPredictor(path, threads=1)
    options = InferenceOptions("slide", crop_size=(24, 24), stride=(16, 16), scales=(1.0, 1.5), flip=True)
    image = _image(37, 50, seed=2)
    expected, _ = _torch_mask(model, image, "caffe_rgb", options)
    assert np.array_equal(predictor.predict_mask(image, options), expected)


def test_a_file_without_semiseg_metadata_is_refused(tmp_path):
    model = build_model("fcn_resnet18", 2)
    path = export_onnx(model, tmp_path / "bare.onnx", height=32, width=32)
    with pytest.raises(ExportError, match="semiseg export"):
        OnnxPredictor(path)
    with pytest.raises(ExportError, match="cannot load"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_predict_command_with_the_onnxruntime_backend_writes_the_torch_masks(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import semiseg.engine.predict as predict
    from semiseg.cli import main
    from semiseg.config import load_config
    from semiseg.engine.trainer import Trainer

    from conftest import tiny_overrides

    monkeypatch.setattr(predict, "ONNX_HINT_MIN_IMAGES", 2)  # the folder below has 2 images

    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path / "runs"), name="tiny"))
    Trainer(cfg, cfg.run_dir, progress=False).fit()
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(30, 41), (24, 24)]):
        Image.fromarray(_image(h, w, seed=i)).save(images / f"{i}.png")
    common = [str(images), "--device", "cpu", "--precision", "fp32", "--threads", "1"]
    capsys.readouterr()
    assert main(["predict", cfg.run_dir, common[0], str(tmp_path / "torch"), *common[1:]]) == 0
    assert "add --backend onnxruntime" in capsys.readouterr().err  # float32 on a CPU: onnxruntime is faster
    assert main(["predict", cfg.run_dir, common[0], str(tmp_path / "ort"), *common[1:], "--backend", "onnxruntime"]) == 0
    assert "hint" not in capsys.readouterr().err
    # an .onnx file from semiseg export works as the checkpoint; the inference flags apply
    onnx_file = tmp_path / "tiny.onnx"
    assert main(["export", cfg.run_dir, "--out", str(onnx_file), "--dynamic"]) == 0
    assert main(["predict", str(onnx_file), common[0], str(tmp_path / "file"), *common[1:], "--backend", "onnxruntime"]) == 0
    for i in range(2):
        a = Image.open(tmp_path / "torch" / f"{i}.png")
        for other in ("ort", "file"):
            b = Image.open(tmp_path / other / f"{i}.png")
            assert np.array_equal(np.array(a), np.array(b)) and a.getpalette() == b.getpalette()
    assert main(["predict", str(onnx_file), common[0], str(tmp_path / "slide"), "--backend", "onnxruntime",
                 "--mode", "slide"]) == 2  # no training crop to default the window to


def test_the_onnxruntime_hint_is_for_many_images_in_float32_on_a_cpu():
    from types import SimpleNamespace

    from semiseg.engine.predict import ONNX_HINT_MIN_IMAGES, onnxruntime_hint

    def loaded(device="cpu", precision="fp32"):
        return SimpleNamespace(device=torch.device(device), precision=precision)

    assert "--backend onnxruntime" in onnxruntime_hint(loaded(), ONNX_HINT_MIN_IMAGES)
    assert onnxruntime_hint(loaded(), ONNX_HINT_MIN_IMAGES - 1) is None  # the export would not pay for itself
    assert onnxruntime_hint(loaded(precision="bf16"), 1000) is None  # native bf16 beat onnxruntime's float32
    assert onnxruntime_hint(loaded(device="meta"), 1000) is None  # not a CPU
