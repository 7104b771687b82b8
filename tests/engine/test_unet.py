"""The configurable U-Net: shapes, heads, Xavier initialisation, receptive field, bad configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_wsseg.engine.unet import UNet, UNetConfig
from napari_wsseg.errors import WssegError


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("head", ["classifier", "embedding"])
def test_output_has_input_size_and_requested_channels(depth, head):
    net = UNet(UNetConfig(in_channels=3, out_channels=7, depth=depth, width=4, head=head))
    out = net(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 7, 32, 48)
    assert net.size_multiple == 2**depth


def test_level_widths_double_up_to_the_cap():
    assert UNetConfig(width=16, depth=4, max_width=64).level_widths() == [16, 32, 64, 64, 64]


def test_embedding_head_is_batchnorm_conv_leakyrelu_conv():
    net = UNet(UNetConfig(out_channels=64, width=8, depth=1, head="embedding"))
    layers = list(net.head)
    assert [type(m) for m in layers] == [nn.BatchNorm2d, nn.Conv2d, nn.LeakyReLU, nn.Conv2d]
    assert layers[1].out_channels == 64 and layers[3].out_channels == 64
    assert layers[1].kernel_size == (1, 1) and layers[3].kernel_size == (1, 1)


def test_classifier_head_is_a_1x1_conv():
    net = UNet(UNetConfig(out_channels=5, width=8, depth=1))
    assert isinstance(net.head, nn.Conv2d) and net.head.kernel_size == (1, 1)


def test_convolutions_are_xavier_initialised():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, out_channels=64, width=16, depth=2, head="embedding"))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound + 1e-6
            # uniform(-b, b) has std b / sqrt(3): the default Kaiming init would differ
            assert module.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)
            if module.bias is not None:
                assert torch.all(module.bias == 0)


def test_receptive_radius_bounds_the_influence_of_one_pixel():
    config = UNetConfig(in_channels=1, out_channels=2, depth=2, width=4)
    torch.manual_seed(0)
    net = UNet(config).eval()
    x = torch.randn(1, 1, 128, 128)
    changed = x.clone()
    changed[0, 0, 64, 64] += 10.0
    with torch.no_grad():
        diff = (net(changed) - net(x)).abs().amax(dim=(0, 1))
    ys, xs = torch.nonzero(diff > 1e-6, as_tuple=True)
    reach = max((ys - 64).abs().max().item(), (xs - 64).abs().max().item())
    assert 0 < reach <= config.receptive_radius()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"head": "softmax"}, "unknown U-Net head"),
        ({"width": 0}, "width is 0"),
        ({"depth": -1}, "depth is -1"),
    ],
)
def test_bad_configs_are_refused(options, message):
    with pytest.raises(WssegError, match=message):
        UNetConfig(**options)
