"""AdvSemiSeg's fully convolutional discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg.models import FCDiscriminator


def test_key_names_and_layers():
    d = FCDiscriminator(21)
    assert list(d.state_dict()) == [f"{n}.{p}" for n in ("conv1", "conv2", "conv3", "conv4", "classifier") for p in ("weight", "bias")]
    convs = [d.conv1, d.conv2, d.conv3, d.conv4, d.classifier]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(21, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)


@pytest.mark.parametrize("size, expected", [((321, 321), (10, 10)), ((375, 500), (11, 15))])
def test_output_at_one_thirty_second(size, expected):
    d = FCDiscriminator(21)
    x = torch.softmax(torch.randn(2, 21, *size), dim=1)
    assert d.train()(x).shape == (2, 1, *expected)
    with torch.no_grad():
        assert d.eval()(x[:1]).shape == (1, 1, *expected)  # no BatchNorm: batch size 1 is fine


def test_upsample_option_returns_input_size_as_the_training_script():
    torch.manual_seed(0)
    plain, upsampling = FCDiscriminator(3), FCDiscriminator(3, upsample=True)
    upsampling.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 97, 65)
    with torch.no_grad():
        expected = F.interpolate(plain(x), size=(97, 65), mode="bilinear", align_corners=True)
        assert torch.equal(upsampling(x), expected)


def test_matches_the_seed_layer_by_layer():
    torch.manual_seed(0)
    d = FCDiscriminator(4)
    x = torch.randn(1, 4, 64, 64)
    h = x
    for conv in (d.conv1, d.conv2, d.conv3, d.conv4):
        h = F.leaky_relu(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1), 0.2)
    h = F.conv2d(h, d.classifier.weight, d.classifier.bias, stride=2, padding=1)  # no activation, no sigmoid
    with torch.no_grad():
        torch.testing.assert_close(d(x), h)


def test_clear_errors_for_bad_inputs():
    d = FCDiscriminator(21)
    with pytest.raises(ValueError, match="21"):
        d(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="32"):
        d(torch.rand(1, 21, 16, 64))
