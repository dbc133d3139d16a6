"""FCN-32s/16s/8s on VGG16 (caffe layout, pytorch-fcn keys) and FCN on ResNet-18 (d2l).

VGG FCNs are expensive on CPU whatever the input (conv1_1 pads by 100, so even a 1x1 image runs VGG on
199x199), so each VGG model is built once per module and reused; tests that load weights into it only rely
on its structure. One large input per VGG model.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, VGG16_Weights

from semiseg.models import build_model
from semiseg.models import fcn_vgg
from semiseg.models import weights as layouts  # the layout conversions of the FCN families
from semiseg.models.layers import UpsamplingConvTranspose2d, bilinear_kernel, init_bilinear_
from semiseg.models.pretrained import cache_path

VGG_NAMES = ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"]
SMALL = (17, 23)  # odd, and far below VGG's 224: the padding of 100 must still give an output


@pytest.fixture(scope="module")
def vgg_model():
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_model(name, 21)
        return cache[name]

    yield get
    cache.clear()


@pytest.fixture(scope="module")
def resnet_model():
    torch.manual_seed(0)
    return build_model("fcn_resnet18", 21)


# ------------------------------------------------------------------------------------------- bilinear
def test_bilinear_kernel_values():
    k = bilinear_kernel(2, 2, 4)
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(k[0, 0], torch.outer(ramp, ramp))
    torch.testing.assert_close(k[1, 1], torch.outer(ramp, ramp))
    assert k[0, 1].abs().sum() == 0 and k[1, 0].abs().sum() == 0  # channel i only feeds channel i
    odd = bilinear_kernel(1, 1, 3)[0, 0]  # odd kernels peak at the centre tap
    torch.testing.assert_close(odd, torch.outer(torch.tensor([0.5, 1.0, 0.5]), torch.tensor([0.5, 1.0, 0.5])))
    with pytest.raises(ValueError, match="in_channels must equal out_channels"):
        bilinear_kernel(2, 3, 4)


@pytest.mark.parametrize("stride", [2, 8, 32])
@pytest.mark.parametrize("depthwise", [False, True])
def test_bilinear_transposed_conv_equals_interpolate_in_the_interior(stride, depthwise):
    channels = 3
    up = nn.ConvTranspose2d(
        channels, channels, 2 * stride, stride=stride, padding=stride // 2, bias=True, groups=channels if depthwise else 1
    )
    nn.init.normal_(up.bias)  # init_bilinear_ must zero it
    init_bilinear_(up)
    x = torch.randn(2, channels, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        ours = up.double()(x)
    ref = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (2, channels, 5 * stride, 7 * stride)
    s = stride  # interpolate replicates the edge where the transposed conv sees zeros: compare s pixels in
    torch.testing.assert_close(ours[..., s:-s, s:-s], ref[..., s:-s, s:-s], rtol=0, atol=1e-12)
    assert not torch.allclose(ours[..., :1, :], ref[..., :1, :])  # the border does differ: the test can fail

    # The caffe FCN layout uses no padding: the same values, shifted by stride / 2 (what FCN's crops undo).
    unpadded = nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride, bias=False).double()
    init_bilinear_(unpadded)
    with torch.no_grad():
        shifted = unpadded(x)
    torch.testing.assert_close(shifted[..., s // 2 : s // 2 + 5 * s, s // 2 : s // 2 + 7 * s], ours, rtol=0, atol=1e-12)


def test_upsampling_layer_runs_in_float32_under_cpu_autocast():
    """CPU bf16 transposed convolutions with FCN's large kernels take a slow path (30x float32 measured on an AMX
    Xeon), so the upsampling layers stay float32 under CPU autocast: same values as without autocast, float32
    gradients, and the same state-dict keys as nn.ConvTranspose2d (released checkpoints load unchanged)."""
    torch.manual_seed(0)
    plain = nn.ConvTranspose2d(3, 3, 16, stride=8, padding=4)
    layer = UpsamplingConvTranspose2d(3, 3, 16, stride=8, padding=4)
    layer.load_state_dict(plain.state_dict())
    assert list(layer.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert plain(x).dtype == torch.bfloat16  # what the layer avoids
        low = layer(x.to(torch.bfloat16))  # a bf16 input (the previous layer's output) is widened
    assert out.dtype == low.dtype == torch.float32
    assert torch.equal(out, plain(x))
    out.sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["fcn_resnet18", "fcn8s_vgg16"])
def test_fcn_upsampling_layers_are_float32_under_autocast(name):
    model = build_model(name, 5)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert ups and all(isinstance(m, UpsamplingConvTranspose2d) for m in ups)


def test_init_bilinear_rejects_channel_mixing():
    with pytest.raises(ValueError, match="in_channels must equal out_channels"):
        init_bilinear_(nn.ConvTranspose2d(3, 4, 4, stride=2))
    with pytest.raises(TypeError):
        init_bilinear_(nn.Conv2d(3, 3, 3))


# --------------------------------------------------------------------------------------- VGG FCN shapes
@pytest.mark.parametrize("name", VGG_NAMES)
def test_vgg_fcn_train_mode_shape_and_gradient(vgg_model, name):
    model = vgg_model(name).train()
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(name == "fcn8s_vgg16"):  # one backward (through both skips) is enough
        out = model(torch.randn(1, 3, *SMALL))
    assert out.shape == (1, 21, *SMALL)
    if not out.requires_grad:
        return
    (out * torch.randn_like(out)).sum().backward()  # not out.square(): the zero-initialised scores give 0
    assert model.score_fr.weight.grad is not None and model.score_fr.weight.grad.abs().sum() > 0
    # Upsampling is fixed bilinear by default (caffe lr_mult 0, pytorch-fcn leaves it out of the optimizer).
    assert all(m.weight.grad is None for m in model.upsampling_layers())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "name, size", [("fcn32s_vgg16", (500, 375)), ("fcn16s_vgg16", (321, 321)), ("fcn8s_vgg16", (500, 375))]
)
@pytest.mark.slow
def test_vgg_fcn_eval_shape_large_odd_input(vgg_model, name, size):
    model = vgg_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 21, *size)


def test_vgg_fcn_parameter_counts(vgg_model):
    # pytorch-fcn counts every parameter, the (fixed) upsampling kernels included.
    def millions(model: nn.Module) -> float:
        return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)

    assert millions(vgg_model("fcn8s_vgg16")) == 134.49
    assert millions(vgg_model("fcn16s_vgg16")) == 134.82
    assert millions(vgg_model("fcn32s_vgg16")) == 136.15  # its 64x64 upscore kernel holds 1.8M


def test_vgg_fcn_param_groups_and_normalization(vgg_model):
    model = vgg_model("fcn8s_vgg16")
    groups = {g["name"]: g for g in model.param_groups()}
    assert set(groups) == {"backbone", "head"}
    assert groups["backbone"]["lr_mult"] == 1.0 and groups["head"]["lr_mult"] == 10.0
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.fc6.weight) in ids["backbone"] and id(model.conv1_1.bias) in ids["backbone"]
    assert {id(model.score_fr.weight), id(model.score_pool3.bias), id(model.score_pool4.weight)} <= ids["head"]
    assert all(id(m.weight) not in ids["head"] for m in model.upsampling_layers())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids["backbone"] | ids["head"] == trainable and not ids["backbone"] & ids["head"]
    assert model.normalization == "caffe"  # no torchvision backbone: expects pytorch-fcn's (caffe) weights


def test_vgg_fcn_option_errors():
    with pytest.raises(ValueError, match="FCN-32s has no skips"):
        build_model("fcn32s_vgg16", 21, at_once=True)
    with pytest.raises(TypeError):
        build_model("fcn8s_vgg16", 21, no_such_option=1)


# ------------------------------------------------------------------------------ pytorch-fcn compatibility
# pytorch-fcn's (torchfcn) state-dict keys, written out so that a renamed layer fails here.
PYTORCH_FCN_CONVS = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "score_fr",
]  # fmt: skip
PYTORCH_FCN_EXTRA = {
    "fcn32s_vgg16": ["upscore.weight"],
    "fcn16s_vgg16": ["score_pool4.weight", "score_pool4.bias", "upscore2.weight", "upscore16.weight"],
    "fcn8s_vgg16": [
        "score_pool3.weight", "score_pool3.bias", "score_pool4.weight", "score_pool4.bias",
        "upscore2.weight", "upscore8.weight", "upscore_pool4.weight",
    ],
}  # fmt: skip
CHANNELS = {"conv1": (3, 64), "conv2": (64, 128), "conv3": (128, 256), "conv4": (256, 512), "conv5": (512, 512)}


def pytorch_fcn_shapes(name: str, n_class: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for conv in PYTORCH_FCN_CONVS[:13]:
        c_in, c_out = CHANNELS[conv[:5]]
        c_in = c_in if conv.endswith("_1") else c_out
        shapes[f"{conv}.weight"], shapes[f"{conv}.bias"] = (c_out, c_in, 3, 3), (c_out,)
    shapes.update({"fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,), "fc7.weight": (4096, 4096, 1, 1)})
    shapes.update({"fc7.bias": (4096,), "score_fr.weight": (n_class, 4096, 1, 1), "score_fr.bias": (n_class,)})
    ups = {"upscore": 64, "upscore16": 32, "upscore8": 16, "upscore2": 4, "upscore_pool4": 4}
    for key in PYTORCH_FCN_EXTRA[name]:
        layer, _, param = key.partition(".")
        if layer in ups:
            shapes[key] = (n_class, n_class, ups[layer], ups[layer])
        else:
            c_in = 256 if layer == "score_pool3" else 512
            shapes[key] = (n_class, c_in, 1, 1) if param == "weight" else (n_class,)
    return shapes


@pytest.fixture(scope="module")
def random_backbone() -> dict[str, torch.Tensor]:
    """Random conv1_1 .. fc7 weights, shared by the tests below (drawing 134M numbers takes a while)."""
    shapes = pytorch_fcn_shapes("fcn32s_vgg16", 1)
    return random_weights({k: v for k, v in shapes.items() if not k.startswith(("score", "upscore"))}, seed=0)


def random_pytorch_fcn_state_dict(name: str, n_class: int, seed: int, backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    shapes = pytorch_fcn_shapes(name, n_class)
    return {**backbone, **random_weights({k: v for k, v in shapes.items() if k not in backbone}, seed)}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random weights that keep activations O(1) through all 16 layers (He scaling), biases non-zero, and
    upsampling kernels that are bilinear plus noise (so a fixed bilinear kernel in the model would not match)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.startswith("upscore"):
            sd[key] = bilinear_kernel(shape[0], shape[1], shape[-1]) + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".weight"):
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=gen)
    return sd


def reference_fcn(sd: dict[str, torch.Tensor], x: torch.Tensor, name: str, at_once: bool = False) -> torch.Tensor:
    """The FCN forward pass written from seed 004 / torchfcn, on a plain dict of weights."""

    def conv(key: str, h: torch.Tensor, padding: int = 0) -> torch.Tensor:
        return F.conv2d(h, sd[f"{key}.weight"], sd[f"{key}.bias"], padding=padding)

    h = x
    pools = {}
    for block, n_convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n_convs + 1):
            h = F.relu(conv(f"conv{block}_{i}", h, padding=100 if (block, i) == (1, 1) else 1))
        h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        pools[block] = h
    h = F.relu(conv("fc6", h))
    h = F.relu(conv("fc7", h))
    h = conv("score_fr", h)
    H, W = x.shape[-2:]
    if name == "fcn32s_vgg16":
        h = F.conv_transpose2d(h, sd["upscore.weight"], stride=32)
        return h[:, :, 19 : 19 + H, 19 : 19 + W]
    up2 = F.conv_transpose2d(h, sd["upscore2.weight"], stride=2)
    p4 = conv("score_pool4", pools[4] * (0.01 if at_once else 1.0))
    h = up2 + p4[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
    if name == "fcn16s_vgg16":
        h = F.conv_transpose2d(h, sd["upscore16.weight"], stride=16)
        return h[:, :, 27 : 27 + H, 27 : 27 + W]
    up4 = F.conv_transpose2d(h, sd["upscore_pool4.weight"], stride=2)
    p3 = conv("score_pool3", pools[3] * (0.0001 if at_once else 1.0))
    h = up4 + p3[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
    h = F.conv_transpose2d(h, sd["upscore8.weight"], stride=8)
    return h[:, :, 31 : 31 + H, 31 : 31 + W]


def assert_same_logits(model: nn.Module, sd: dict[str, torch.Tensor], name: str, at_once: bool = False) -> None:
    x = torch.randn(1, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval()(x)
        ref = reference_fcn(sd, x, name, at_once=at_once)
    assert ours.shape == ref.shape == (1, sd["score_fr.bias"].numel(), *SMALL)
    assert ref.abs().max() > 1e-2  # the weights make a non-trivial output
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name", VGG_NAMES)
def test_pytorch_fcn_state_dict_loads_strictly_and_gives_same_logits(vgg_model, random_backbone, name):
    model = vgg_model(name)
    sd = random_pytorch_fcn_state_dict(name, 21, seed=VGG_NAMES.index(name) + 1, backbone=random_backbone)
    assert set(sd) == {f"{c}.{p}" for c in PYTORCH_FCN_CONVS for p in ("weight", "bias")} | set(PYTORCH_FCN_EXTRA[name])
    model.load_state_dict(sd, strict=True)
    assert_same_logits(model, sd, name)

    assert layouts.is_pytorch_fcn_state_dict(sd)
    assert layouts.pytorch_fcn_model_name(sd) == name
    # A checkpoint of pytorch-fcn's trainer (DataParallel prefixes inside "model_state_dict") converts too.
    wrapped = {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}
    assert layouts.pytorch_fcn_model_name(wrapped) == name
    converted = layouts.convert_pytorch_fcn(wrapped)
    assert converted.keys() == sd.keys() and all(converted[k] is sd[k] for k in sd)


def test_pytorch_fcn_detection_rejects_other_layouts():
    tv_vgg = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(4096, 25088)}
    assert not layouts.is_pytorch_fcn_state_dict(tv_vgg)
    assert layouts.pytorch_fcn_model_name(tv_vgg) is None
    with pytest.raises(ValueError, match="not a pytorch-fcn"):
        layouts.convert_pytorch_fcn(tv_vgg)
    assert not layouts.is_pytorch_fcn_state_dict({k: torch.zeros(1) for k in ("conv1_1.weight", "fc6.weight")})


def test_fcn8s_at_once_and_training_options(random_backbone):
    # FCN8sAtOnce's weights need the pool3/pool4 scaling; the other options only change training.
    torch.manual_seed(0)
    model = build_model(
        "fcn8s_vgg16", 5, at_once=True, learn_upsampling=True, channel_dropout=True, head_lr_mult=1.0, bias_lr_mult=2.0
    )
    sd = random_pytorch_fcn_state_dict("fcn8s_vgg16", 5, seed=7, backbone=random_backbone)
    model.load_state_dict(sd, strict=True)
    assert_same_logits(model, sd, "fcn8s_vgg16", at_once=True)

    assert isinstance(model.drop6, nn.Dropout2d)
    groups = {g["name"]: g for g in model.param_groups()}
    # The reference recipe: lr x1 for all weights, x2 for biases; the learned upsampling joins the head.
    assert {n: g["lr_mult"] for n, g in groups.items()} == {"backbone": 1.0, "backbone_bias": 2.0, "head": 1.0, "head_bias": 2.0}
    head = {id(p) for p in groups["head"]["params"]}
    assert all(id(m.weight) in head for m in model.upsampling_layers())
    assert all(p.dim() == 1 for n in ("backbone_bias", "head_bias") for p in groups[n]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


# -------------------------------------------------------------------------------------- VGG16 surgery
@pytest.mark.slow
def test_vgg16_surgery_from_file_and_from_torchvision_cache(tmp_path, monkeypatch):
    # A random torchvision vgg16 state dict (shapes from a meta-device model: no 138M-parameter init).
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tv = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    # Saved once, at torch.hub's cache path, so the same file serves pretrained_backbone=True and =path.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = cache_path(VGG16_Weights.IMAGENET1K_V1)
    assert path.is_relative_to(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(tv, path)
    try:
        from_path = build_model("fcn16s_vgg16", 21, pretrained_backbone=str(path))
        sd = from_path.state_dict()
        for conv, index in zip(fcn_vgg.VGG16_CONVS, [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]):
            torch.testing.assert_close(sd[f"{conv}.weight"], tv[f"features.{index}.weight"], rtol=0, atol=0)
            torch.testing.assert_close(sd[f"{conv}.bias"], tv[f"features.{index}.bias"], rtol=0, atol=0)
        # fc6: Linear input index c * 49 + i * 7 + j is conv input channel c at kernel position (i, j).
        fc6 = tv["classifier.0.weight"]
        assert sd["fc6.weight"].shape == (4096, 512, 7, 7)
        torch.testing.assert_close(sd["fc6.weight"][:, 300, 2, 5], fc6[:, 300 * 49 + 2 * 7 + 5], rtol=0, atol=0)
        torch.testing.assert_close(sd["fc6.weight"].flatten(1), fc6, rtol=0, atol=0)
        torch.testing.assert_close(sd["fc7.weight"].flatten(1), tv["classifier.3.weight"], rtol=0, atol=0)
        torch.testing.assert_close(sd["fc6.bias"], tv["classifier.0.bias"], rtol=0, atol=0)
        torch.testing.assert_close(sd["fc7.bias"], tv["classifier.3.bias"], rtol=0, atol=0)
        # The head is untouched by the surgery: zero scores, bilinear upsampling.
        assert sd["score_fr.weight"].abs().sum() == 0
        torch.testing.assert_close(sd["upscore16.weight"], bilinear_kernel(21, 21, 32))
        assert from_path.normalization == "imagenet"  # torchvision's VGG16 expects ImageNet normalisation
        del from_path, sd

        from_cache = build_model("fcn32s_vgg16", 21, pretrained_backbone=True)
        torch.testing.assert_close(from_cache.fc7.weight.detach().flatten(1), tv["classifier.3.weight"], rtol=0, atol=0)
        torch.testing.assert_close(from_cache.conv5_3.weight.detach(), tv["features.28.weight"], rtol=0, atol=0)
    finally:
        path.unlink()  # 550 MB: do not leave it in pytest's kept temp directories


def test_vgg16_surgery_errors_name_the_problem():
    with pytest.raises(ValueError, match="vgg16_bn"):
        layouts.vgg16_surgery({"features.0.weight": torch.zeros(1), "features.1.weight": torch.zeros(1)}, source="x.pth")
    with pytest.raises(ValueError, match="x.pth is not a torchvision vgg16 state dict: missing features.0.weight"):
        layouts.vgg16_surgery({"conv.weight": torch.zeros(1)}, source="x.pth")


# ----------------------------------------------------------------------------------------- FCN ResNet-18
def d2l_fcn(num_classes: int) -> nn.Sequential:
    """The seed 002 construction: ResNet-18 children minus avgpool/fc, then final_conv and transpose_conv."""
    net = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2])
    net.add_module("final_conv", nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv", nn.ConvTranspose2d(num_classes, num_classes, kernel_size=64, padding=16, stride=32))
    return net


@pytest.mark.parametrize("size", [(321, 321), (500, 375), SMALL, (1, 1), (64, 96)])
@pytest.mark.parametrize("train", [True, False])
def test_fcn_resnet18_shapes(resnet_model, size, train):
    model = resnet_model.train(train)
    x = torch.randn(2, 3, *size)  # batch 2: BatchNorm in train mode needs more than one value at 1x1
    with torch.set_grad_enabled(train and size == SMALL):  # one backward is enough
        out = model(x)
    assert out.shape == (2, 21, *size)
    if out.requires_grad:
        out.mean().backward()
        assert model.transpose_conv.weight.grad is not None  # d2l learns the upsampling
        model.zero_grad(set_to_none=True)


def test_fcn_resnet18_equals_d2l_and_crops_odd_sizes_top_left(resnet_model):
    torch.manual_seed(0)
    d2l = d2l_fcn(21).eval()
    for m in d2l.modules():  # non-trivial BatchNorm statistics and biases
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_var, 0.5, 1.5)
            nn.init.normal_(m.running_mean, 0, 0.1)
            nn.init.normal_(m.bias, 0, 0.1)
    nn.init.normal_(d2l.transpose_conv.bias)
    sd = d2l.state_dict()
    assert layouts.is_d2l_fcn_state_dict(sd)
    model = resnet_model.eval()
    model.load_state_dict(layouts.convert_d2l_fcn(sd), strict=True)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 96)
        torch.testing.assert_close(model(x), d2l(x))  # multiples of 32: exactly d2l's output
        x = torch.randn(1, 3, 71, 50)
        full = d2l(x)
        assert full.shape[-2:] == (96, 64)  # 32 * ceil(size / 32)
        torch.testing.assert_close(model(x), full[:, :, :71, :50])


def test_fcn_resnet18_bilinear_init_param_groups_and_options():
    model = build_model("fcn_resnet18", 4)
    torch.testing.assert_close(model.transpose_conv.weight.detach(), bilinear_kernel(4, 4, 64))
    assert model.transpose_conv.bias.abs().sum() == 0
    assert model.normalization == "imagenet"
    groups = {g["name"]: g for g in model.param_groups()}
    assert {n: g["lr_mult"] for n, g in groups.items()} == {"backbone": 1.0, "head": 10.0}
    assert len(groups["backbone"]["params"]) == len(list(model.backbone.parameters()))
    assert len(groups["head"]["params"]) == 4  # final_conv weight/bias, transpose_conv weight/bias

    fixed = build_model("fcn_resnet18", 4, learn_upsampling=False, head_lr_mult=5.0)
    head = {g["name"]: g for g in fixed.param_groups()}["head"]
    assert head["lr_mult"] == 5.0 and len(head["params"]) == 2


def test_fcn_resnet18_pretrained_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    path = cache_path(ResNet18_Weights.IMAGENET1K_V1)
    assert path.is_relative_to(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(tv, path)
    model = build_model("fcn_resnet18", 21, pretrained_backbone=True)
    sd = model.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer3.0.downsample.0.weight", "layer4.1.bn2.bias"):
        torch.testing.assert_close(sd[f"backbone.{key}"], tv[key], rtol=0, atol=0)

    from_path = build_model("fcn_resnet18", 21, pretrained_backbone=str(path))
    torch.testing.assert_close(from_path.backbone.layer2[0].conv1.weight, model.backbone.layer2[0].conv1.weight)

    bad = tmp_path / "not_resnet.pth"
    torch.save(OrderedDict(weight=torch.zeros(1)), bad)
    with pytest.raises(ValueError, match="not_resnet.pth is not a torchvision resnet18 state dict"):
        build_model("fcn_resnet18", 21, pretrained_backbone=str(bad))
