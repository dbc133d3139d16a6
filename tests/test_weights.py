"""load_weights: report, modes, refusal of pickles, and the converters of the published layouts.

Checkpoints are built here from semiseg's own models (renamed into the original layouts) or from reference
networks built from the seeds' descriptions, so no download is needed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet101_Weights, mobilenet_v2
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
from torchvision.models.resnet import ResNet

from semiseg.models import FCDiscriminator, build_model, load_weights
from semiseg.models import deeplabv2 as deeplabv2_module
from semiseg.models import weights as weights_module
from semiseg.models.deeplabv2 import HEAD_PREFIXES, DeepLabV2
from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.norm import FrozenBatchNorm2d
from semiseg.models.pretrained import PretrainedWeightsError
from semiseg.models.weights import SkippedTensor, WeightsWarning, detect_layout, load_pretrained_backbone


def small_v2(num_classes: int = 5, seed: int = 0, **options) -> DeepLabV2:
    torch.manual_seed(seed)
    return DeepLabV2(num_classes, layers=(1, 1, 1, 1), **options).eval()


def randomize_batchnorm_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a misplaced BN tensor changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------------------- report and modes
def test_round_trip_copies_everything():
    src, dst = small_v2(seed=0), small_v2(seed=1)
    x = torch.randn(1, 3, 57, 43)
    report = load_weights(dst, src.state_dict())
    assert report.ok and report.layout == "deeplabv2"
    assert report.copied == list(src.state_dict())
    assert not (report.skipped or report.missing or report.unexpected or report.dropped)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    text = str(report)
    assert "copied" in text and f"{len(report.copied)} tensors" in text


def test_semiseg_training_checkpoint_file(tmp_path):
    src, dst = small_v2(seed=0), small_v2(seed=1)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    report = load_weights(dst, path)
    assert report.ok and report.source == str(path)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


class NotATensor:
    """A custom class: unpickling it would need to run this module's code."""


def test_refuses_pickles_with_custom_classes(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": small_v2().state_dict(), "extra": NotATensor()}, path)
    dst = small_v2(seed=1)
    before = snapshot(dst)
    with pytest.raises(PretrainedWeightsError, match="weights_only"):
        load_weights(dst, path)
    assert_unchanged(dst, before)


def test_rejects_what_is_not_a_state_dict():
    with pytest.raises(ValueError, match="not a state dict"):
        load_weights(small_v2(), {"epoch": 3, "config": {"lr": 0.1}})
    with pytest.raises(TypeError, match="state_dict"):
        load_weights(small_v2(), small_v2())
    with pytest.raises(ValueError, match="mode"):
        load_weights(small_v2(), small_v2().state_dict(), mode="caffe")


def test_shape_mismatch_is_an_error_by_default_and_names_both_shapes():
    src, dst = small_v2(num_classes=21), small_v2(num_classes=5, seed=1)
    before = snapshot(dst)
    with pytest.raises(ValueError) as info:
        load_weights(dst, src.state_dict())
    message = str(info.value)
    assert "layer5.conv2d_list.0.weight" in message
    assert "(21, 2048, 3, 3)" in message and "(5, 2048, 3, 3)" in message
    assert "same_shape" in message
    assert_unchanged(dst, before)  # nothing is copied when loading fails


def test_same_shape_mode_skips_and_reports_mismatches():
    src, dst = small_v2(num_classes=21), small_v2(num_classes=5, seed=1)
    head_before = dst.layer5.conv2d_list[0].weight.clone()
    with pytest.warns(WeightsWarning, match="same_shape"):
        report = load_weights(dst, src.state_dict(), mode="same_shape")
    assert SkippedTensor("layer5.conv2d_list.0.weight", (21, 2048, 3, 3), (5, 2048, 3, 3)) in report.skipped
    assert len(report.skipped) == 8  # four ASPP branches, weight and bias
    assert not report.ok and not report.missing and not report.unexpected
    text = str(report)
    assert "(21, 2048, 3, 3)" in text and "(5, 2048, 3, 3)" in text and "skipped" in text
    assert torch.equal(dst.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    assert torch.equal(dst.layer5.conv2d_list[0].weight, head_before)


def test_missing_and_unexpected_keys_are_reported():
    src, dst = small_v2(), small_v2(seed=1)
    state = dict(src.state_dict())
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    report = load_weights(dst, state)
    assert report.missing == ["layer1.0.conv1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert not report.ok
    assert "layer1.0.conv1.weight" in str(report) and "extra.weight" in str(report)

    fresh = small_v2(seed=2)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="strict"):
        load_weights(fresh, state, strict=True)
    assert_unchanged(fresh, before)


def test_nothing_in_common_is_an_error():
    with pytest.raises(ValueError, match="no tensor"):
        load_weights(small_v2(), FCDiscriminator(5).state_dict())


# ---------------------------------------------------------------------------------------------- AdvSemiSeg
def test_advsemiseg_checkpoint_loads_with_identical_logits():
    """AdvSemiSeg key names, wrapped as saved from DataParallel around MS_Deeplab (module.Scale.), with the
    num_batches_tracked counters a newer PyTorch adds: every tensor is copied and the logits are identical."""
    torch.manual_seed(0)
    original = randomize_batchnorm_(DeepLabV2(21, legacy_aspp=True)).eval()
    state = {f"module.Scale.{k}": v for k, v in original.state_dict().items()}
    bn_names = [n for n, m in original.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    state.update({f"module.Scale.{n}.num_batches_tracked": torch.tensor(20000) for n in bn_names})

    model = build_model("deeplabv2_resnet101", 21, legacy_aspp=True).eval()
    report = load_weights(model, state)
    assert report.ok and report.layout == "deeplabv2"
    assert len(report.copied) == len(original.state_dict())
    assert len(report.dropped) == len(bn_names) and all(k.endswith("num_batches_tracked") for k in report.dropped)
    assert any("'module.'" in n for n in report.notes) and any("'Scale.'" in n for n in report.notes)
    x = torch.randn(1, 3, 65, 49) * 50
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_advsemiseg_layout_hints_at_legacy_aspp():
    report = load_weights(small_v2(seed=1), small_v2().state_dict())
    assert any("legacy_aspp=True" in n for n in report.notes)
    report = load_weights(small_v2(seed=1, legacy_aspp=True), small_v2().state_dict())
    assert not any("legacy_aspp" in n for n in report.notes)


def test_trainable_batchnorm_checkpoint_loads_into_frozen_model():
    src = randomize_batchnorm_(small_v2(freeze_bn=False)).eval()
    dst = small_v2(seed=1)
    report = load_weights(dst, src.state_dict())
    assert report.ok and all(k.endswith("num_batches_tracked") for k in report.dropped)
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


# ------------------------------------------------------------------------------------ torchvision ResNet
def small_torchvision_resnet() -> ResNet:
    torch.manual_seed(3)
    return randomize_batchnorm_(ResNet(TorchvisionBottleneck, [1, 1, 1, 1]))


def test_torchvision_resnet_into_deeplabv2_loads_but_warns():
    tv = small_torchvision_resnet()
    dst = small_v2()
    with pytest.warns(WeightsWarning, match="stride"):
        report = load_weights(dst, tv.state_dict())
    assert report.layout == "torchvision_resnet"
    assert {"fc.weight", "fc.bias"} <= set(report.dropped)
    assert sorted(report.missing) == sorted(k for k in dst.state_dict() if k.startswith("layer5."))
    assert not report.unexpected and not report.skipped
    assert torch.equal(dst.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)
    assert torch.equal(dst.layer3[0].downsample[1].running_var, tv.layer3[0].downsample[1].running_var)
    assert "stride" in str(report)


def test_pretrained_backbone_from_a_local_file(tmp_path):
    tv = small_torchvision_resnet()
    path = tmp_path / "resnet.pth"
    torch.save(tv.state_dict(), path)
    model = small_v2()
    head_before = model.layer5.conv2d_list[0].weight.clone()
    with pytest.warns(WeightsWarning):
        report = load_pretrained_backbone(model, path, ResNet101_Weights.IMAGENET1K_V1, HEAD_PREFIXES)
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.layer5.conv2d_list[0].weight, head_before)
    assert all(k.startswith("layer5.") for k in report.missing)

    # A file that is not a backbone of this model is refused instead of half-loaded.
    torch.save(small_v2(num_classes=5, freeze_bn=False).layer5.state_dict(), tmp_path / "head.pth")
    with pytest.raises(ValueError):
        load_pretrained_backbone(small_v2(), tmp_path / "head.pth", ResNet101_Weights.IMAGENET1K_V1, HEAD_PREFIXES)


def test_deeplabv2_pretrained_backbone_true_uses_torchvision_resnet101(monkeypatch):
    seen = []

    def fake_backbone_state_dict(source, default):
        seen.append((source, default))
        return small_torchvision_resnet().state_dict()

    # A shallow network keeps the test fast; the builder logic is the same.
    monkeypatch.setattr(deeplabv2_module, "RESNET101_LAYERS", (1, 1, 1, 1))
    monkeypatch.setattr(weights_module, "backbone_state_dict", fake_backbone_state_dict)
    with pytest.warns(WeightsWarning, match="stride"):
        model = build_model("deeplabv2_resnet101", 21, pretrained_backbone=True)
    assert seen == [(True, ResNet101_Weights.IMAGENET1K_V1)]
    assert torch.equal(model.layer4[0].conv3.weight, small_torchvision_resnet().layer4[0].conv3.weight)


# ----------------------------------------------------------------------------------- MobileNetV2 / v3+
class FlatInvertedResidual(nn.Module):
    """Seed 003's InvertedResidual: one flat Sequential (bubbliiiing's / CSAIL's key layout)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def seed_mobilenetv2_features(with_last_conv: bool = False) -> nn.Sequential:
    """MobileNetV2 features as seed 003 builds them, with bubbliiiing's output-stride-16 dilation by hand."""
    torch.manual_seed(4)
    features: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())]
    channels = 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
        for i in range(n):
            features.append(FlatInvertedResidual(channels, c, s if i == 0 else 1, t))
            channels = c
    if with_last_conv:
        features.append(nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()))
    features = nn.Sequential(*features)
    # Output stride 16: block 14 loses its stride, the later depthwise convs get dilation 2.
    features[14].conv[3].stride = (1, 1)
    for i in (15, 16, 17):
        features[i].conv[3].dilation = features[i].conv[3].padding = (2, 2)
    return randomize_batchnorm_(features).eval()


def test_bubbliiiing_checkpoint_converts_with_identical_backbone_outputs():
    reference = seed_mobilenetv2_features()
    head_source = DeepLabV3Plus(21)
    state = {f"backbone.features.{k}": v for k, v in reference.state_dict().items()}
    state.update({k: v for k, v in head_source.state_dict().items() if not k.startswith("backbone.")})
    assert detect_layout(state) == "bubbliiiing_deeplabv3plus"

    torch.manual_seed(5)
    model = build_model("deeplabv3plus_mobilenetv2", 21).eval()
    with pytest.warns(WeightsWarning, match="255"):
        report = load_weights(model, state)
    assert report.ok and report.layout == "bubbliiiing_deeplabv3plus"
    assert len(report.copied) == len(state)

    x = torch.randn(1, 3, 67, 53)
    with torch.no_grad():
        low_ref = reference[:4](x)
        high_ref = reference[4:](low_ref)
        low, high = model.backbone(x)
        torch.testing.assert_close(low, low_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(high, high_ref, rtol=1e-5, atol=1e-5)
        head_source.load_state_dict(model.state_dict())  # same head names: the full nets now agree
        torch.testing.assert_close(model(x), head_source.eval()(x))


def test_csail_mobilenetv2_backbone_file_as_pretrained_backbone(tmp_path):
    """bubbliiiing's pretrained backbone (CSAIL mobilenet_v2.pth.tar): flat blocks, features.18, classifier."""
    reference = seed_mobilenetv2_features(with_last_conv=True)
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}
    state.update({"classifier.1.weight": torch.zeros(1000, 1280), "classifier.1.bias": torch.zeros(1000)})
    path = tmp_path / "mobilenet_v2.pth.tar"
    torch.save(state, path)

    model = build_model("deeplabv3plus_mobilenetv2", 21, pretrained_backbone=str(path)).eval()
    x = torch.randn(1, 3, 35, 47)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x)[1], reference[:18](x), rtol=1e-5, atol=1e-5)


def test_deeplabv3plus_pretrained_backbone_true_uses_torchvision_mobilenet(monkeypatch):
    torch.manual_seed(6)
    tv = mobilenet_v2()
    seen = []
    monkeypatch.setattr(weights_module, "backbone_state_dict", lambda source, default: seen.append(default) or tv.state_dict())
    model = build_model("deeplabv3plus_mobilenetv2", 21, pretrained_backbone=True)
    assert seen == [MobileNet_V2_Weights.IMAGENET1K_V1]
    for key, value in tv.features[:-1].state_dict().items():
        assert torch.equal(model.backbone.features.state_dict()[key], value), key

    report = load_weights(DeepLabV3Plus(21), tv.state_dict())
    assert report.layout == "torchvision_mobilenet_v2"
    assert {"classifier.1.weight", "features.18.0.weight"} <= set(report.dropped)
    assert all(k.startswith(("aspp.", "shortcut_conv.", "cat_conv.", "cls_conv.")) for k in report.missing)


# ------------------------------------------------------------------------------------ pytorch-fcn / D
def test_pytorch_fcn_trainer_checkpoint_is_recognised():
    from semiseg.models.fcn_vgg import FCNVGG16

    torch.manual_seed(7)
    model = FCNVGG16(2, 32)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    checkpoint = {"epoch": 3, "iteration": 100, "arch": "FCN32s", "optim_state_dict": {}, "model_state_dict": state}
    report = load_weights(model, checkpoint)
    assert report.layout == "pytorch_fcn" and report.ok


def test_discriminator_checkpoint_with_advsemiseg_names():
    src, dst = FCDiscriminator(21), FCDiscriminator(21)
    report = load_weights(dst, {f"module.{k}": v for k, v in src.state_dict().items()})
    assert report.ok and report.layout == "identity" and len(report.copied) == 10
    assert torch.equal(dst.classifier.weight, src.classifier.weight)


def test_deeplabv3plus_resnet50_pretrained_backbone_true_uses_torchvision_resnet50(monkeypatch, recwarn):
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(8)
    tv = resnet50()
    seen = []
    monkeypatch.setattr(weights_module, "backbone_state_dict", lambda source, default: seen.append(default) or tv.state_dict())
    model = build_model("deeplabv3plus_resnet50", 3, pretrained_backbone=True)
    assert seen == [ResNet50_Weights.IMAGENET1K_V1]
    assert torch.equal(model.backbone.layer4[2].conv3.weight, tv.layer4[2].conv3.weight)
    # torchvision's own ResNet in DeepLabV3+: no stride-placement caveat.
    assert not [w for w in recwarn if issubclass(w.category, WeightsWarning)]


def test_advsemiseg_checkpoint_loads_into_affine_frozen_batchnorm():
    """AdvSemiSeg checkpoints have no num_batches_tracked; freeze_bn="affine" (nn.BatchNorm2d) still loads them fully."""
    source = randomize_batchnorm_(small_v2(freeze_bn=True))
    released = {"module." + k: v for k, v in source.state_dict().items()}
    target = small_v2(seed=3, freeze_bn="affine")
    report = load_weights(target, released)
    assert report.ok and not report.missing and not report.skipped and len(report.copied) == len(released)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x))


# ------------------------------------------------------------------------------------ UniMatch DeepLabV3+
class UniMatchResNet(nn.Module):
    """UniMatch's ResNet (model/backbone/resnet.py) as its code builds it: three 3x3 stem convolutions (64-64-128),
    torchvision's Bottleneck, layer4 dilated (output stride 16); ``base_forward`` returns layer1 and layer4."""

    def __init__(self, layers=(3, 4, 6, 3)) -> None:
        super().__init__()
        self.inplanes, self.dilation = 128, 1
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, 1, 1, bias=False))
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(128), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=True)
        self.fc = nn.Linear(2048, 1000)  # in backbone files (ImageNet), not in the segmentation model's use

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
        previous = self.dilation
        if dilate:
            self.dilation, stride = self.dilation * stride, 1
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
        layers = [TorchvisionBottleneck(self.inplanes, planes, stride, down, dilation=previous)]
        self.inplanes = planes * 4
        layers += [TorchvisionBottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def base_forward(self, x):
        c1 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return c1, self.layer4(self.layer3(self.layer2(c1)))


def _unimatch_conv(cin, cout, k, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation if k == 3 else 0, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(True))


class UniMatchDeepLabV3Plus(nn.Module):
    """UniMatch's DeepLabV3Plus (model/semseg/deeplabv3plus.py): ASPP ``head`` (b0-b4, project), ``reduce``, ``fuse``
    (no dropout), ``classifier``; no bias before a BatchNorm; decodes cat([low-level, ASPP])."""

    def __init__(self, nclass: int) -> None:
        super().__init__()
        self.backbone = UniMatchResNet()
        head = nn.Module()
        head.b0 = _unimatch_conv(2048, 256, 1)
        head.b1, head.b2, head.b3 = (_unimatch_conv(2048, 256, 3, r) for r in (6, 12, 18))
        head.b4 = nn.Module()
        head.b4.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_unimatch_conv(2048, 256, 1))
        head.project = _unimatch_conv(5 * 256, 256, 1)
        self.head = head
        self.reduce = _unimatch_conv(256, 48, 1)
        self.fuse = nn.Sequential(*_unimatch_conv(304, 256, 3), *_unimatch_conv(256, 256, 3))
        self.classifier = nn.Conv2d(256, nclass, 1)

    def forward(self, x):
        c1, c4 = self.backbone.base_forward(x)
        h = self.head
        pooled = F.interpolate(h.b4.gap(c4), c4.shape[-2:], mode="bilinear", align_corners=True)
        c4 = h.project(torch.cat([h.b0(c4), h.b1(c4), h.b2(c4), h.b3(c4), pooled], 1))
        c4 = F.interpolate(c4, size=c1.shape[-2:], mode="bilinear", align_corners=True)
        out = self.classifier(self.fuse(torch.cat([self.reduce(c1), c4], dim=1)))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True)


def unimatch_reference(nclass: int = 4) -> UniMatchDeepLabV3Plus:
    torch.manual_seed(11)
    net = UniMatchDeepLabV3Plus(nclass)
    with torch.no_grad():  # every tensor non-trivial, so a misplaced one changes the logits
        net.classifier.bias.normal_()
    return randomize_batchnorm_(net).eval()


def test_unimatch_checkpoint_loads_with_identical_logits(tmp_path):
    reference = unimatch_reference()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("backbone.fc.")}
    path = tmp_path / "best.pth"  # what UniMatch's unimatch.py saves under DDP
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "previous_best": 41.5}, path)
    assert detect_layout(state) == "unimatch_deeplabv3plus"

    torch.manual_seed(5)
    model = build_model("deeplabv3plus_resnet50", 4, deep_stem=True).eval()
    report = load_weights(model, path, strict=True)
    assert report.ok and report.layout == "unimatch_deeplabv3plus"
    assert any("no bias" in n for n in report.notes) and any("decoder_dropout" in n for n in report.notes)
    assert torch.count_nonzero(model.aspp.branch2[0].bias) == 0  # the added biases are zeros
    x = torch.randn(2, 3, 61, 77)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_unimatch_checkpoint_into_a_plain_stem_model_names_the_fix():
    state = unimatch_reference().state_dict()
    model = build_model("deeplabv3plus_resnet50", 4)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"deep_stem=True \(config: model.options.deep_stem=true\)"):
        load_weights(model, state)
    assert_unchanged(model, before)


def test_deep_stem_backbone_file_as_pretrained_backbone(tmp_path):
    backbone = randomize_batchnorm_(UniMatchResNet())
    path = tmp_path / "resnet50.pth"  # UniMatch's pretrained/resnet50.pth: an ImageNet ResNet-v1c with its fc
    torch.save(backbone.state_dict(), path)
    model = build_model("deeplabv3plus_resnet50", 3, pretrained_backbone=str(path), deep_stem=True).eval()
    x = torch.randn(1, 3, 45, 53)
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(x), backbone.eval().base_forward(x)):
            torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="deep_stem=True"):
        build_model("deeplabv3plus_resnet50", 3, pretrained_backbone=str(path))
    with pytest.raises(ValueError, match="no ImageNet weights for a deep-stem ResNet"):
        build_model("deeplabv3plus_resnet50", 3, pretrained_backbone=True, deep_stem=True)
