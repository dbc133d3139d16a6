"""DeepLab-v2 (AdvSemiSeg) and DeepLabV3+ (MobileNetV2, ResNet): shapes, parameters, caffe details, frozen BN.

ResNet-101 is slow on a couple of CPU cores, so most behaviour is tested on ``DeepLabV2(layers=(1, 1, 1, 1))``:
strides, dilations, pooling and the classifier do not depend on the number of blocks per stage. The full
ResNet-101 is built once per module for the parameter count, the key names and one forward pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg.models import available_models, build_model
from semiseg.models.deeplabv2 import ASPPClassifier, Bottleneck, DeepLabV2
from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.norm import FrozenBatchNorm2d

SIZES = [(321, 321), (375, 500)]  # odd sizes, the second one (H, W) as a 500x375 VOC image
LOWRES_V2 = {(321, 321): (41, 41), (375, 500): (48, 63)}  # output stride 8 with caffe ceil pooling


def small_v2(num_classes: int = 5, **options) -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes, layers=(1, 1, 1, 1), **options)


@pytest.fixture(scope="module")
def resnet101_v2() -> DeepLabV2:
    torch.manual_seed(0)
    return build_model("deeplabv2_resnet101", 21).eval()


# ------------------------------------------------------------------------------------------- DeepLab-v2
def test_deeplabv2_parameter_count(resnet101_v2):
    total = sum(p.numel() for p in resnet101_v2.parameters())
    assert total == 44_048_532  # 44.05M, frozen BatchNorm weights included (they are parameters)
    assert round(total / 1e6, 2) == 44.05


def test_deeplabv2_keys_are_advsemiseg_keys(resnet101_v2):
    keys = set(resnet101_v2.state_dict())
    for key in [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "layer1.0.conv1.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
        "layer3.22.bn3.bias", "layer4.2.conv3.weight",
        *(f"layer5.conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")),
    ]:
        assert key in keys, key
    assert not any(k.endswith("num_batches_tracked") for k in keys)  # pre-0.4 BatchNorm keys
    assert [len(getattr(resnet101_v2, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert not any(k.startswith("layer5.conv2d_list.4") for k in keys)


def test_deeplabv2_resnet101_forward(resnet101_v2):
    with torch.no_grad():
        out = resnet101_v2(torch.randn(1, 3, 129, 97))
    assert out.shape == (1, 21, 129, 97)
    assert torch.isfinite(out).all()


def test_deeplabv2_registry_and_attributes():
    assert {"deeplabv2_resnet101", "deeplabv3plus_mobilenetv2"} <= set(available_models())
    assert DeepLabV2.normalization == "caffe_rgb"  # RGB, as AdvSemiSeg feeds it (values: test_data_transforms)


@pytest.mark.parametrize("size", SIZES)
def test_deeplabv2_output_shapes(size):
    # Forward passes only (no_grad keeps them cheap); gradients flow in the frozen-BN training-step test.
    model = small_v2()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        model.train()  # batch size 1 in training is fine: the BatchNorm is frozen
        assert model(x).shape == (1, 5, *size)
        model.eval()
        low = model.forward_lowres(x)
        assert low.shape[-2:] == LOWRES_V2[size]
        assert model(x).shape == (1, 5, *size)


def test_deeplabv2_stem_uses_ceil_mode_pooling():
    model = small_v2()
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    with torch.no_grad():
        # 500 -> conv 250 -> pool: caffe rounds up (126), PyTorch's default would give 125.
        assert stem(torch.randn(1, 3, 375, 500)).shape[-2:] == (95, 126)


def test_deeplabv2_upsamples_with_align_corners_true():
    model = small_v2().eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        low, out = model.forward_lowres(x), model(x)
    assert torch.equal(out, F.interpolate(low, size=(67, 93), mode="bilinear", align_corners=True))
    assert not torch.allclose(out, F.interpolate(low, size=(67, 93), mode="bilinear", align_corners=False))


def _set(module: nn.Module, **tensors: torch.Tensor) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(module, name).copy_(value)


def _random_bn_state(channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.rand(channels, generator=gen) + 0.5,
        "bias": torch.randn(channels, generator=gen) * 0.1,
        "running_mean": torch.randn(channels, generator=gen) * 0.1,
        "running_var": torch.rand(channels, generator=gen) + 0.5,
    }


@pytest.mark.parametrize("stride, dilation", [(2, 1), (1, 2)])
def test_caffe_bottleneck_matches_hand_built_block(stride, dilation):
    """The seed's block: 1x1 conv (with the stride) -> BN -> ReLU -> 3x3 conv (padding = dilation) -> BN -> ReLU
    -> 1x1 conv to 4x -> BN; plus a 1x1 (strided) conv + BN shortcut; sum; ReLU. Built from plain layers with the
    same weights set by hand, then compared with semiseg's Bottleneck."""
    gen = torch.Generator().manual_seed(1)
    inplanes, planes = 32, 16
    weights = {
        "conv1": torch.randn(planes, inplanes, 1, 1, generator=gen) * 0.2,
        "conv2": torch.randn(planes, planes, 3, 3, generator=gen) * 0.1,
        "conv3": torch.randn(planes * 4, planes, 1, 1, generator=gen) * 0.2,
        "down": torch.randn(planes * 4, inplanes, 1, 1, generator=gen) * 0.2,
    }
    bns = {name: _random_bn_state(c, gen) for name, c in (("bn1", planes), ("bn2", planes), ("bn3", planes * 4), ("down_bn", planes * 4))}

    def bn(name: str, channels: int) -> nn.BatchNorm2d:
        layer = nn.BatchNorm2d(channels, eps=1e-5).eval()
        _set(layer, **bns[name])
        return layer

    def conv(name: str, c_in: int, c_out: int, k: int, s: int = 1, d: int = 1) -> nn.Conv2d:
        layer = nn.Conv2d(c_in, c_out, k, stride=s, padding=d if k == 3 else 0, dilation=d, bias=False)
        _set(layer, weight=weights[name])
        return layer

    residual = nn.Sequential(
        conv("conv1", inplanes, planes, 1, s=stride), bn("bn1", planes), nn.ReLU(),
        conv("conv2", planes, planes, 3, d=dilation), bn("bn2", planes), nn.ReLU(),
        conv("conv3", planes, planes * 4, 1), bn("bn3", planes * 4),
    )
    shortcut = nn.Sequential(conv("down", inplanes, planes * 4, 1, s=stride), bn("down_bn", planes * 4))

    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), FrozenBatchNorm2d(planes * 4))
    block = Bottleneck(inplanes, planes, stride=stride, dilation=dilation, downsample=down)
    _set(block.conv1, weight=weights["conv1"])
    _set(block.conv2, weight=weights["conv2"])
    _set(block.conv3, weight=weights["conv3"])
    _set(down[0], weight=weights["down"])
    for name in ("bn1", "bn2", "bn3"):
        _set(getattr(block, name), **bns[name])
    _set(down[1], **bns["down_bn"])

    x = torch.randn(2, inplanes, 19, 23, generator=gen)
    with torch.no_grad():
        expected = F.relu(residual(x) + shortcut(x))
        got = block.train()(x)  # train() on purpose: frozen BN must still use the stored statistics
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    if stride == 2:
        # torchvision's bottleneck (stride in the 3x3) with the very same weights computes something else.
        from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck

        tv = TorchvisionBottleneck(inplanes, planes, stride=2, downsample=shortcut).eval()
        tv.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("downsample")}, strict=False)
        with torch.no_grad():
            assert not torch.allclose(tv(x), expected, atol=1e-3)


def test_frozen_bn_stays_frozen_through_a_training_step():
    model = small_v2()
    model.train()
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(not m.training for m in frozen)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    groups = model.param_groups()
    optimizer = torch.optim.SGD(
        [{"params": g["params"], "lr": 0.01 * g["lr_mult"]} for g in groups], lr=0.01, momentum=0.9, weight_decay=5e-4
    )
    x, target = torch.randn(2, 3, 41, 41), torch.randint(0, 5, (2, 41, 41))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimizer.step()

    after = model.state_dict()
    bn_keys = [k for k in after if any(k.startswith(n + ".") for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d))]
    assert bn_keys
    for key in bn_keys:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["layer5.conv2d_list.3.weight"], after["layer5.conv2d_list.3.weight"])


def test_deeplabv2_param_groups_follow_advsemiseg():
    model = small_v2()
    backbone, head = model.param_groups()
    assert (backbone["name"], backbone["lr_mult"], head["name"], head["lr_mult"]) == ("backbone", 1.0, "head", 10.0)
    bn_params = {id(p) for m in model.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters()}
    assert not bn_params & {id(p) for p in backbone["params"]}  # get_1x_lr_params_NOscale skips frozen BN
    assert {id(p) for p in head["params"]} == {id(p) for p in model.layer5.parameters()}
    grouped = {id(p) for g in (backbone, head) for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_deeplabv2_trainable_batchnorm_option():
    model = small_v2(freeze_bn=False).train()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.bn1.training and model.bn1.weight.requires_grad
    assert any(p is model.bn1.weight for p in model.param_groups()[0]["params"])


def test_aspp_sums_all_four_branches_by_default_and_two_in_legacy_mode():
    torch.manual_seed(0)
    features = torch.randn(2, 64, 30, 30)
    fixed = ASPPClassifier(64, 3)
    legacy = ASPPClassifier(64, 3, legacy_aspp=True)
    legacy.load_state_dict(fixed.state_dict())

    with torch.no_grad():
        branches = [conv(features) for conv in fixed.conv2d_list]
        torch.testing.assert_close(fixed(features), sum(branches))
        torch.testing.assert_close(legacy(features), branches[0] + branches[1])

        # Perturbing branches 3 and 4 changes the default output only.
        ref_fixed, ref_legacy = fixed(features), legacy(features)
        for module in (fixed, legacy):
            for conv in module.conv2d_list[2:]:
                conv.weight.add_(torch.randn_like(conv.weight))
                conv.bias.add_(1.0)
        assert not torch.allclose(fixed(features), ref_fixed)
        assert torch.equal(legacy(features), ref_legacy)

        # Zeroing branches 3 and 4 makes the default equal to the legacy behaviour.
        for conv in fixed.conv2d_list[2:]:
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(fixed(features), legacy(features))


def test_legacy_aspp_option_reaches_the_classifier():
    assert small_v2(legacy_aspp=True).layer5.legacy_aspp
    assert not small_v2().legacy_aspp
    assert len(small_v2().layer5.conv2d_list) == 4  # the legacy model keeps all four (for the released keys)


# ----------------------------------------------------------------------------------------- DeepLabV3+
@pytest.fixture(scope="module")
def mobilenet_v3plus() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return build_model("deeplabv3plus_mobilenetv2", 21)


def test_deeplabv3plus_parameter_count(mobilenet_v3plus):
    total = sum(p.numel() for p in mobilenet_v3plus.parameters())
    assert total == 5_818_149
    assert abs(total / 1e6 - 5.8) < 0.05
    os8 = build_model("deeplabv3plus_mobilenetv2", 21, output_stride=8)
    assert sum(p.numel() for p in os8.parameters()) == total  # dilation changes no shapes


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplabv3plus_output_shapes(size, output_stride):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", 4, output_stride=output_stride)
    features = {}
    model.backbone.register_forward_hook(lambda module, args, out: features.update(low=out[0], high=out[1]))
    with torch.no_grad():
        if output_stride == 16:  # train mode behaves the same at output stride 8; spare the CPU
            model.train()
            assert model(torch.randn(2, 3, *size)).shape == (2, 4, *size)
        model.eval()
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)

    # MobileNetV2 halves with "ceil": a 3x3/s2/p1 conv maps n to (n + 1) // 2.
    def down(n: int, times: int) -> int:
        for _ in range(times):
            n = (n + 1) // 2
        return n

    h, w = size
    times = 4 if output_stride == 16 else 3
    assert features["low"].shape[1:] == (24, down(h, 2), down(w, 2))
    assert features["high"].shape[1:] == (320, down(h, times), down(w, times))


def test_deeplabv3plus_training_step_updates_batchnorm():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", 4).train()
    before = model.aspp.branch5_bn.running_mean.clone()
    loss = F.cross_entropy(model(torch.randn(2, 3, 67, 45)), torch.randint(0, 4, (2, 67, 45)))
    loss.backward()
    assert model.cls_conv.weight.grad is not None and model.backbone.features[0][0].weight.grad is not None
    assert not torch.equal(before, model.aspp.branch5_bn.running_mean)  # trainable BN, unlike DeepLab-v2


def test_deeplabv3plus_aspp_rates_follow_output_stride():
    for output_stride, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        model = DeepLabV3Plus(3, output_stride=output_stride)
        got = tuple(getattr(model.aspp, f"branch{i}")[0].dilation[0] for i in (2, 3, 4))
        assert got == rates
    with pytest.raises(ValueError, match="output_stride"):
        DeepLabV3Plus(3, output_stride=32)


def test_deeplabv3plus_batch_size_one(mobilenet_v3plus):
    x = torch.randn(1, 3, 64, 64)
    mobilenet_v3plus.train()
    with pytest.raises(ValueError, match="batch size 1"):
        mobilenet_v3plus(x)
    mobilenet_v3plus.eval()
    with torch.no_grad():
        assert mobilenet_v3plus(x).shape == (1, 21, 64, 64)


def test_deeplabv3plus_param_groups_and_attributes(mobilenet_v3plus):
    backbone, head = mobilenet_v3plus.param_groups()
    assert (backbone["name"], backbone["lr_mult"], head["name"], head["lr_mult"]) == ("backbone", 1.0, "head", 10.0)
    ids = [id(p) for g in (backbone, head) for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in mobilenet_v3plus.parameters()}
    assert mobilenet_v3plus.normalization == "imagenet"
    keys = set(mobilenet_v3plus.state_dict())
    # bubbliiiing's head names; torchvision's backbone names
    assert {"aspp.branch1.0.weight", "aspp.branch5_conv.weight", "aspp.conv_cat.1.running_var", "shortcut_conv.0.bias",
            "cat_conv.4.weight", "cat_conv.5.weight", "cls_conv.weight", "backbone.features.17.conv.0.0.weight"} <= keys
    assert not any(k.startswith("backbone.features.18") for k in keys)


def test_deeplabv3plus_resnet50_extra():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_resnet50", 3)
    with torch.no_grad():
        assert model.train()(torch.randn(2, 3, 49, 65)).shape == (2, 3, 49, 65)
        low, high = model.eval().backbone(torch.randn(1, 3, 49, 65))
    assert low.shape[1:] == (256, 13, 17) and high.shape[1:] == (2048, 4, 5)


def test_deeplabv3plus_multi_grid_dilates_layer4_as_unimatch():
    # UniMatch's ResNet (model/backbone/resnet.py) at output stride 8 with multi_grid: true builds layer4's 3x3
    # convolutions with dilation previous_dilation * 2 = 4, then dilation * 2 = 8 and dilation * 4 = 16
    plain = build_model("deeplabv3plus_resnet50", 3, output_stride=8)
    grid = build_model("deeplabv3plus_resnet50", 3, output_stride=8, multi_grid=[2, 2, 4])
    assert [b.conv2.dilation for b in plain.backbone.layer4] == [(2, 2), (4, 4), (4, 4)]
    assert [b.conv2.dilation for b in grid.backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert [b.conv2.padding for b in grid.backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
    assert plain.state_dict().keys() == grid.state_dict().keys()  # the same weights load into both
    grid.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out_plain, out_grid = plain.eval()(x), grid.eval()(x)
    assert out_grid.shape == out_plain.shape == (1, 3, 64, 64) and not torch.allclose(out_grid, out_plain)
    with pytest.raises(ValueError, match="3 positive integers"):
        build_model("deeplabv3plus_resnet50", 3, multi_grid=[1, 2])
    with pytest.raises(ValueError, match="ResNet backbones"):
        build_model("deeplabv3plus_mobilenetv2", 3, multi_grid=[1, 2, 4])


def test_deeplabv2_affine_frozen_batchnorm_is_advsemiseg_training():
    """freeze_bn="affine": BatchNorm2d whose weight/bias never train but which, in train mode, normalises with
    the batch's statistics and updates its running averages - what AdvSemiSeg's model.train() did."""
    model = small_v2(freeze_bn="affine").train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert all(not m.weight.requires_grad and not m.bias.requires_grad and m.training for m in bns)
    bn_params = {id(p) for m in bns for p in m.parameters()}
    assert not bn_params & {id(p) for g in model.param_groups() for p in g["params"]}

    # The first BatchNorm behaves exactly as a hand-built nn.BatchNorm2d in train mode: batch statistics
    # (not the stored identity ones), and running averages moved with momentum 0.1.
    torch.manual_seed(1)
    x = torch.randn(2, 3, 41, 41) * 3 + 1
    reference = nn.BatchNorm2d(64)
    reference.load_state_dict(model.bn1.state_dict())
    stem = model.conv1(x).detach()
    torch.testing.assert_close(model.bn1(stem), reference.train()(stem))
    torch.testing.assert_close(model.bn1.running_mean, reference.running_mean)
    assert model.bn1.running_mean.abs().sum() > 0  # it moved away from the zeros it started at

    # A training step changes the statistics and the convolutions, never the affine parameters.
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for g in model.param_groups() for p in g["params"]], lr=0.1)
    model(x).mean().backward()
    opt.step()
    after = model.state_dict()
    assert torch.equal(after["layer1.0.bn1.weight"], weights["layer1.0.bn1.weight"])
    assert torch.equal(after["layer1.0.bn1.bias"], weights["layer1.0.bn1.bias"])
    assert not torch.equal(after["layer1.0.bn1.running_var"], weights["layer1.0.bn1.running_var"])
    assert not torch.equal(after["layer5.conv2d_list.0.weight"], weights["layer5.conv2d_list.0.weight"])

    # In eval mode it is the frozen network: same outputs as freeze_bn=True with the same tensors.
    frozen = small_v2(freeze_bn=True).eval()
    frozen.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")})
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), frozen(x))


def test_deeplabv2_freeze_bn_rejects_unknown_modes():
    with pytest.raises(ValueError, match="freeze_bn"):
        small_v2(freeze_bn="stats")
    with pytest.raises(ValueError, match="freeze_bn"):
        small_v2(freeze_bn=1)


def test_deeplabv3plus_deep_stem_and_decoder_dropout_options():
    model = build_model("deeplabv3plus_resnet50", 3, deep_stem=True, decoder_dropout=[0, 0])
    stem = [m for m in model.backbone.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert model.backbone.layer1[0].conv1.in_channels == model.backbone.layer1[0].downsample[0].in_channels == 128
    assert [m.p for m in model.cat_conv if isinstance(m, torch.nn.Dropout)] == [0, 0]
    with torch.no_grad():  # the same output size and feature strides as the 7x7 stem
        low, high = model.eval().backbone(torch.randn(1, 3, 49, 65))
        assert model.train()(torch.randn(2, 3, 49, 65)).shape == (2, 3, 49, 65)
    assert low.shape[1:] == (256, 13, 17) and high.shape[1:] == (2048, 4, 5)
    with pytest.raises(ValueError, match="two probabilities"):
        build_model("deeplabv3plus_mobilenetv2", 3, decoder_dropout=[0.5])
    with pytest.raises(ValueError, match="ResNet backbones"):
        build_model("deeplabv3plus_mobilenetv2", 3, deep_stem=True)
