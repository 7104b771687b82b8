"""The anisotropy-aware 3D U-Net: z is pooled and convolved only once voxels are near-isotropic."""

from __future__ import annotations

import pytest
import torch

from napari_wsseg.engine.unet3d import UNet3D, UNet3DConfig, level_plan
from napari_wsseg.errors import WssegError


def _net(voxel_size, depth=2):
    torch.manual_seed(0)
    return UNet3D(
        UNet3DConfig(out_channels=3, depth=depth, width=4, voxel_size_zyx=voxel_size)
    ).eval()


def test_very_anisotropic_voxels_never_mix_slices():
    net = _net((10.0, 1.0, 1.0))  # depth 2: y/x spacing reaches 4, still < z / 1.5
    assert level_plan((10.0, 1.0, 1.0), 2) == [(False, False)] * 3
    x = torch.randn(1, 1, 5, 16, 16)
    changed = x.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        before, after = net(x), net(changed)
    difference = (after - before).abs().amax(dim=(0, 1, 3, 4))
    assert difference[2] > 1e-4 and torch.all(difference[[0, 1, 3, 4]] == 0)
    assert net.size_multiple == (1, 4, 4) and before.shape == (1, 3, 5, 16, 16)


def test_isotropic_voxels_mix_slices_and_pool_z():
    net = _net((1.0, 1.0, 1.0))
    assert net.size_multiple == (4, 4, 4)
    x = torch.randn(1, 1, 8, 16, 16)
    changed = x.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        difference = (net(changed) - net(x)).abs().amax(dim=(0, 1, 3, 4))
    assert difference[1] > 1e-4 and difference[3] > 1e-4


def test_z_is_used_once_y_x_have_caught_up():
    plan = level_plan((4.0, 1.0, 1.0), 4)
    # spacing z 4, y/x 1 -> 2 -> 4 (3x3x3 from here) -> 8 with z pooled: 8/8 ...
    assert [full for full, _ in plan] == [False, False, True, True, True]
    assert [pool for _, pool in plan] == [False, False, False, True, True]


def test_a_few_steps_fit_a_tiny_volume():
    net = _net((2.0, 1.0, 1.0)).train()
    x = torch.randn(2, 1, 4, 16, 16)
    target = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(net(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]


def test_bad_configs_are_refused():
    with pytest.raises(WssegError, match="voxel size"):
        UNet3DConfig(voxel_size_zyx=(0.0, 1.0, 1.0))
    with pytest.raises(WssegError, match="depth"):
        UNet3DConfig(depth=-1)
