"""The small U-Net: its encoder's features, no pretrained weights, UniMatch's feature perturbation, and that it
learns (the registry tests cover shapes at odd sizes, parameter groups and ONNX export)."""

import pytest
import torch
from torch.nn import functional as F

from semiseg.engine.methods.perturbations import FeaturePerturbation
from semiseg.models import build_model


def test_encoder_returns_three_levels_at_strides_2_4_8():
    model = build_model("unet_small", 5, width=8).eval()
    f1, f2, f3 = model.backbone(torch.randn(1, 3, 64, 48))
    assert [tuple(f.shape[1:]) for f in (f1, f2, f3)] == [(16, 32, 24), (24, 16, 12), (32, 8, 6)]
    assert sum(p.numel() for p in build_model("unet_small", 8).parameters()) == pytest.approx(213_000, rel=0.01)


def test_pretrained_backbone_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="pretrained_backbone=false"):
        build_model("unet_small", 3, pretrained_backbone=True)


def test_feature_perturbation_doubles_the_batch_through_every_skip():
    torch.manual_seed(0)
    model = build_model("unet_small", 4).train()
    fp = FeaturePerturbation(model, 0.5)
    x = torch.randn(2, 3, 32, 32)
    with fp.active():
        out = model(x)
    assert out.shape == (4, 4, 32, 32)
    assert not torch.allclose(out[:2], out[2:])  # the perturbed half differs
    assert model(x).shape == (2, 4, 32, 32)  # no-op outside the block


def test_it_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("unet_small", 3, width=8).train()
    # 4x4 blocks with a colour rule: the classifier works at stride 2, so the target must be that smooth
    x = torch.randn(4, 3, 8, 8).repeat_interleave(4, -1).repeat_interleave(4, -2)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
