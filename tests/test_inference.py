"""semiseg.inference: whole, sliding-window, multi-scale and flip inference, and its use by eval/predict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semiseg.engine.evaluate
from semiseg.config import ConfigError, load_config
from semiseg.engine.evaluate import evaluate_checkpoint
from semiseg.engine.evaluate import inference_options
from semiseg.engine.trainer import Trainer
from semiseg.inference import InferenceOptions, infer, window_spans

from conftest import tiny_overrides


class Pointwise(nn.Module):
    """A 1x1 convolution: each output pixel depends on its own input pixel only, so any tiling is exact."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


class Recorder(nn.Module):
    """Constant logits (ones), remembering the input sizes it was called with."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.classes = classes
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return x.new_ones(x.shape[0], self.classes, *x.shape[-2:])


class Conv3x3(nn.Module):
    """One zero-padded 3x3 convolution: a window padded with zeros sees what the whole image's padding shows."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class HalfResolution(nn.Module):
    """Logits at half the input size (models of other toolkits do this): whole mode must upsample them."""

    def forward(self, x):
        return F.avg_pool2d(x, 2)


def images(n=2, h=37, w=53, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_window_spans_cover_the_axis_with_the_last_window_at_the_border():
    assert window_spans(37, 16, 10) == [(0, 16), (10, 26), (20, 36), (21, 37)]
    assert window_spans(32, 16, 16) == [(0, 16), (16, 32)]  # exact tiling: no extra window
    assert window_spans(10, 16, 10) == [(0, 10)]  # shorter than the window: one (padded) window
    for size, crop, stride in [(100, 33, 7), (64, 64, 1), (65, 64, 64), (7, 3, 3)]:
        spans = window_spans(size, crop, stride)
        covered = torch.zeros(size)
        for a, b in spans:
            assert b - a == min(crop, size) and 0 <= a < b <= size
            covered[a:b] += 1
        assert covered.min() >= 1 and spans[-1][1] == size


def test_whole_mode_returns_the_models_own_logits_bit_for_bit():
    model, x = Conv3x3(), images()
    assert torch.equal(infer(model, x), model(x))
    assert infer(model, x).dtype == torch.float32


def test_whole_mode_upsamples_logits_smaller_than_the_input():
    x = images(h=16, w=20)
    out = infer(HalfResolution(), x)
    assert out.shape == (2, 3, 16, 20)
    torch.testing.assert_close(out, F.interpolate(F.avg_pool2d(x, 2), size=(16, 20), mode="bilinear"))


@pytest.mark.parametrize("crop,stride", [((16, 16), (10, 11)), ((16, 24), (16, 24)), ((37, 53), (5, 5)), ((64, 64), None)])
def test_slide_equals_whole_for_a_pointwise_model(crop, stride):
    model, x = Pointwise(), images()
    out = infer(model, x, InferenceOptions("slide", crop_size=crop, stride=stride))
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)


def test_slide_divides_the_summed_logits_by_the_window_count():
    # constant logits of 1: any pixel counted too often or too rarely would show up as != 1
    model = Recorder()
    out = infer(model, images(h=37, w=53), InferenceOptions("slide", crop_size=(16, 16), stride=(10, 11)))
    assert torch.equal(out, torch.ones(2, 3, 37, 53))
    # 4 window rows (37 = 0..16, 10..26, 20..36, 21..37) x 5 columns (53: 0, 11, 22, 33, 37), each 16x16
    assert model.sizes == [(16, 16)] * 20


def test_slide_pads_images_smaller_than_the_window_and_crops_the_padding_away():
    model, x = Conv3x3(), images(h=10, w=13)
    out = infer(model, x, InferenceOptions("slide", crop_size=(16, 16), stride=(8, 8)))
    assert out.shape == (2, 4, 10, 13)
    # zero padding at the bottom/right is what the convolution's own zero padding shows at the border
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    recorder = Recorder()
    infer(recorder, x, InferenceOptions("slide", crop_size=(16, 16)))
    assert recorder.sizes == [(16, 16)]


def test_slide_differs_from_whole_where_a_3x3_model_sees_window_borders():
    # the check above is not vacuous: a model with context gives other logits at inner window borders
    model, x = Conv3x3(), images(h=32, w=32)
    out = infer(model, x, InferenceOptions("slide", crop_size=(16, 16), stride=(16, 16)))
    assert (out - model(x)).abs().max() > 1e-3


def test_flip_is_undone_before_averaging():
    # a pointwise model is mirror-equivariant: the mirrored view, un-mirrored, agrees pixel for pixel
    model, x = Pointwise(), images()
    out = infer(model, x, InferenceOptions(flip=True))
    torch.testing.assert_close(out, model(x).log_softmax(1), rtol=0, atol=1e-5)


def test_flip_averages_the_two_views_softmax():
    model, x = Conv3x3(), images(h=16, w=19)
    out = infer(model, x, InferenceOptions(flip=True))
    expected = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2
    torch.testing.assert_close(out.softmax(1), expected, rtol=0, atol=1e-6)


def test_multiscale_resizes_each_copy_and_averages_probabilities_at_the_input_size():
    model, x = Conv3x3(), images(n=1, h=37, w=53)
    recorder = Recorder()
    infer(recorder, x, InferenceOptions(scales=(0.5, 0.75, 1.0, 1.5)))
    # sizes rounded half up, as mmcv rescales: 37 * 0.5 = 18.5 -> 19
    assert recorder.sizes == [(19, 27), (28, 40), (37, 53), (56, 80)]

    out = infer(model, x, InferenceOptions(scales=(0.5, 1.0)))
    assert out.shape == (1, 4, 37, 53) and out.dtype == torch.float32
    small = F.interpolate(x, size=(19, 27), mode="bilinear", align_corners=False)
    p_small = F.interpolate(model(small), size=(37, 53), mode="bilinear", align_corners=False).softmax(1)
    expected = (p_small + model(x).softmax(1)) / 2
    torch.testing.assert_close(out.exp(), expected, rtol=0, atol=1e-6)
    assert torch.isfinite(out).all()


def test_multiscale_with_slide_slides_over_each_scaled_copy():
    recorder = Recorder()
    out = infer(recorder, images(n=1, h=20, w=20), InferenceOptions("slide", crop_size=(16, 16), scales=(1.0, 2.0), flip=True))
    # default stride 10 (2/3 of 16): 20x20 -> 2x2 windows; 40x40 -> 4x4 (0, 10, 20, 24); each scale twice (flip)
    assert len(recorder.sizes) == 2 * 4 + 2 * 16 and set(recorder.sizes) == {(16, 16)}
    torch.testing.assert_close(out.softmax(1), torch.full((1, 3, 20, 20), 1 / 3))


def test_bf16_autocast_and_channels_last_return_float32_close_to_fp32():
    model, x = Conv3x3(), images(h=24, w=24)
    ref = infer(model, x, InferenceOptions("slide", crop_size=(16, 16), scales=(0.75, 1.0), flip=True))
    model_cl = Conv3x3().to(memory_format=torch.channels_last)
    for opts in (InferenceOptions(), InferenceOptions("slide", crop_size=(16, 16), scales=(0.75, 1.0), flip=True)):
        out = infer(model_cl, x, opts, precision="bf16", channels_last=True)
        assert out.dtype == torch.float32 and out.shape == (2, 4, 24, 24)
        expected = model(x) if opts.single_view else ref
        torch.testing.assert_close(out, expected, rtol=0, atol=0.05)


def test_invalid_options_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="crop_size"):
        InferenceOptions("slide")
    with pytest.raises(ValueError, match="uncovered"):
        InferenceOptions("slide", crop_size=(16, 16), stride=(20, 8))
    with pytest.raises(ValueError, match="mode"):
        InferenceOptions("multiscale")
    with pytest.raises(ValueError, match="scales"):
        InferenceOptions(scales=())
    assert InferenceOptions("slide", crop_size=[512, 512]).stride == (341, 341)  # mmseg's 2/3 default


def test_the_eval_config_becomes_inference_options():
    cfg = load_config(None, ["data.crop_size=[64,48]", "eval.mode=slide", "eval.scales=[0.5,1]", "eval.flip=true"])
    opts = inference_options(cfg)
    assert opts == InferenceOptions("slide", crop_size=(64, 48), stride=(42, 32), scales=(0.5, 1.0), flip=True)
    assert inference_options(load_config(None)) == InferenceOptions()
    with pytest.raises(ConfigError, match="eval.mode"):
        load_config(None, ["eval.mode=sliding"])
    with pytest.raises(ConfigError, match="eval.stride"):
        load_config(None, ["eval.crop_size=[32,32]", "eval.stride=[40,8]"])
    with pytest.raises(ConfigError, match="eval.stride"):  # the stride exceeds the training crop it slides with
        inference_options(load_config(None, ["data.crop_size=[32,32]", "eval.mode=slide", "eval.stride=[40,8]"]))


def test_training_time_evaluation_uses_the_runs_eval_section(tmp_path, monkeypatch):
    seen = []
    real_infer = semiseg.engine.evaluate.infer

    def spy(model, images, options=None, **kwargs):
        seen.append(options)
        return real_infer(model, images, options, **kwargs)

    monkeypatch.setattr(semiseg.engine.evaluate, "infer", spy)
    overrides = {"train.iterations": 4, "train.eval_interval": 0, "eval.mode": "slide", "eval.stride": "[8,8]",
                 "eval.flip": "true"}
    cfg = load_config(None, tiny_overrides(output_dir=str(tmp_path), name="slide", **overrides))
    final = Trainer(cfg, cfg.run_dir, progress=False).fit()["metrics"]
    expected = InferenceOptions("slide", crop_size=(24, 24), stride=(8, 8), flip=True)  # the training crop
    assert seen and set(seen) == {expected}
    seen.clear()
    assert evaluate_checkpoint(cfg.run_dir, device="cpu")["metrics"] == final  # semiseg eval: the same settings
    assert set(seen) == {expected}
