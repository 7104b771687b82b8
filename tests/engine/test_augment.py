"""Augmentations: geometry moves images, target maps and boxes together; jitter and CutOut."""

from __future__ import annotations

import pytest
import torch

from napari_wsseg.engine.augment import (
    Geometry,
    apply_geometries,
    cutout,
    jitter,
    random_geometries,
)

ALL_GEOMETRIES = [Geometry(flip, k) for flip in (False, True) for k in range(4)]


def _box_mask(box, size):
    y0, x0, y1, x1 = box
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


@pytest.mark.parametrize("geometry", ALL_GEOMETRIES)
def test_boxes_move_with_the_pixels(geometry):
    size = 9
    boxes = torch.tensor([[1, 2, 3, 6], [0, 0, 8, 0], [4, 4, 4, 4]])
    moved, swapped = geometry.apply_boxes(boxes, size)
    for box, new in zip(boxes, moved):
        assert torch.equal(
            geometry.apply(_box_mask(box.tolist(), size)), _box_mask(new.tolist(), size)
        )
    assert swapped == (geometry.rot90 % 2 == 1)
    assert torch.all(moved[:, 0] <= moved[:, 2]) and torch.all(moved[:, 1] <= moved[:, 3])


def test_image_and_target_maps_get_the_same_transform():
    image = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    labels = image[:, 0].long()  # a target map that equals the image pixel for pixel
    geometries = [Geometry(True, 1), Geometry(False, 3)]
    assert torch.equal(
        apply_geometries(image, geometries)[:, 0].long(), apply_geometries(labels, geometries)
    )
    assert not torch.equal(apply_geometries(image, geometries), image)


def test_random_geometries_cover_all_eight_and_repeat_with_the_seed():
    draws = random_geometries(200, torch.Generator().manual_seed(3))
    assert set(draws) == set(ALL_GEOMETRIES)
    assert draws == random_geometries(200, torch.Generator().manual_seed(3))


def test_jitter_factors_stay_within_strength():
    images = torch.rand(64, 1, 8, 8) + 0.5
    out = jitter(images, 0.2, torch.Generator().manual_seed(0))
    # contrast keeps the mean, so the mean ratio is the brightness factor
    ratio = out.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
    assert torch.all(ratio >= 0.8 - 1e-5) and torch.all(ratio <= 1.2 + 1e-5)
    assert ratio.std() > 0.05
    assert torch.equal(jitter(images, 0.0, torch.Generator()), images)


def test_cutout_erases_up_to_nine_rectangles_with_the_mean():
    images = torch.rand(16, 2, 32, 32)
    out, holes = cutout(images, torch.Generator().manual_seed(0), max_holes=9)
    assert holes.shape == (16, 32, 32) and holes.any()
    assert torch.equal(
        out[~holes[:, None].expand_as(out)], images[~holes[:, None].expand_as(images)]
    )
    means = images.mean(dim=(2, 3))
    for i in range(16):
        if holes[i].any():
            assert torch.allclose(
                out[i][:, holes[i]], means[i][:, None].expand(-1, int(holes[i].sum()))
            )
    assert holes.float().mean() < 0.6
