"""Every registered model, by looping over available_models(): a model added to the registry is tested without
anyone adding it to a list (the per-family lists this replaces had missed three of them).

Per model: it builds, its logits have the input's odd size, its param_groups() cover every trainable parameter once,
and its ONNX export matches onnxruntime at another batch and odd size. The export of the big ones (ResNet-101 and
VGG16 backbones: 45-135M parameters, 200-540 MB files) takes tens of seconds each on a CPU, so it is marked slow
(``pytest -m "not slow"`` skips it); the small ones run always.
"""

from __future__ import annotations

import pytest
import torch

from semiseg.models import available_models, build_model

NUM_CLASSES = 3
# Whose export (trace, onnx checker, onnxruntime session) takes tens of seconds: see the module docstring.
SLOW_EXPORT = {name for name in available_models() if "resnet101" in name or "resnet50" in name or "vgg16" in name}


def _nonzero_init(model):
    # FCN score layers start at zero (as in the paper), which would make every logit 0 and hide a misaligned
    # crop; give such weights small random values so the logits vary over the image.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return model


def _inputs(n, h, w, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=available_models())
def built(request):
    torch.manual_seed(0)
    return request.param, _nonzero_init(build_model(request.param, NUM_CLASSES))


def test_every_model_gives_logits_at_an_odd_input_size(built):
    name, model = built
    model.eval()
    with torch.no_grad():
        out = model(_inputs(2, 37, 51))
    assert out.shape == (2, NUM_CLASSES, 37, 51), name
    assert torch.isfinite(out).all() and out.std() > 0, name
    assert model.normalization in ("imagenet", "caffe", "caffe_rgb"), name


def test_every_model_param_groups_hold_each_trainable_parameter_once(built):
    name, model = built
    groups = model.param_groups()
    assert groups and all({"name", "params", "lr_mult"} <= set(g) for g in groups), name
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), f"{name}: a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable <= set(ids), f"{name}: trainable parameters outside every group"
    assert all(isinstance(g["lr_mult"], float) and g["lr_mult"] >= 0 for g in groups), name


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_EXPORT else name for name in available_models()
])
def test_every_model_exports_and_matches_onnxruntime_at_other_sizes(tmp_path, name):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from semiseg.export import check_onnx, export_onnx

    size = 64
    torch.manual_seed(0)
    model = _nonzero_init(build_model(name, NUM_CLASSES))
    path = export_onnx(model, tmp_path / f"{name}.onnx", height=size, width=size, dynamic=True)
    assert model.training  # the caller's model keeps its mode
    for n, h, w in [(1, size, size), (2, 39, 53)]:  # the traced size, and another batch and odd size
        x = _inputs(n, h, w)
        with torch.no_grad():
            ref = model.eval()(x)
        model.train()
        assert ref.std() > 0  # logits vary, so a misplaced crop or a wrong resize would show
        diff = check_onnx(model, path, x)
        assert diff <= 1e-4 * ref.abs().max().item(), (name, (n, h, w), diff)
