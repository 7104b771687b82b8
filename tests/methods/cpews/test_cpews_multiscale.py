"""cpews multi-scale testing: one scale is the plain forward pass, several average probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.errors import WssegError
from napari_wsseg.eval.simulate import simulate_annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.cpews.model import CPEWSNet, create_vit, multiscale_probabilities


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    vit = create_vit("test_vit")
    return CPEWSNet(vit, 1, 3, -1, (0.5,) * 3, (0.25,) * 3).eval()


def test_one_scale_is_exactly_the_plain_forward_pass(net):
    tiles = torch.randn(2, 1, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = torch.softmax(net(tiles), dim=1)
        assert torch.equal(multiscale_probabilities(net, tiles, (1.0,)), plain)


def test_several_scales_give_probabilities_of_the_tile_shape(net):
    tiles = torch.randn(2, 1, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = multiscale_probabilities(net, tiles, (1.0,))
        mixed = multiscale_probabilities(net, tiles, (1.0, 0.5, 1.5))
        half = multiscale_probabilities(net, tiles, (0.5,))
    assert mixed.shape == plain.shape == half.shape == (2, 3, 48, 40)
    torch.testing.assert_close(mixed.sum(dim=1), torch.ones(2, 48, 40))
    assert (mixed >= 0).all() and not torch.allclose(mixed, plain, atol=1e-4)
    with torch.no_grad():
        big = multiscale_probabilities(net, tiles, (1.5,))
    torch.testing.assert_close(mixed, (plain + half + big) / 3)


def test_a_model_with_test_scales_predicts_saves_and_reloads(tmp_path):
    gt = np.zeros((1, 64, 64), np.uint8)
    gt[0, 16:48, 16:48] = 1
    image = as_image((gt * 80 + np.random.default_rng(0).normal(0, 10, gt.shape)).astype("f4"))
    ann = simulate_annotations(gt, points=0, region_tags=16, seed=0)
    options = {"backbone": "test_vit", "max_steps": 2, "batch_size": 2, "region_size": 32}
    single = get_method("cpews")(**options)
    single.fit(image, ann, FitOptions(device="cpu", seed=0))
    multi = get_method("cpews")(**options, test_scales=(1.0, 0.5, 1.5))
    multi.fit(image, ann, FitOptions(device="cpu", seed=0))
    for name, value in single.net.state_dict().items():  # the same training: scales only test
        torch.testing.assert_close(multi.net.state_dict()[name], value)
    proba = multi.predict_proba_slice(image.slice(0))
    assert proba.shape == (2, 64, 64)
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(proba, single.predict_proba_slice(image.slice(0)), atol=1e-4)
    reloaded = load_model(multi.save(tmp_path / "model"))
    assert reloaded.config.test_scales == (1.0, 0.5, 1.5)
    np.testing.assert_allclose(reloaded.predict_proba_slice(image.slice(0)), proba, atol=1e-5)


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ((), r"test_scales has 0 scales; give 1 to 16"),
        ((1.0, 0.1), r"option test_scales=.*between 0.25 and 4.0"),
        ((1.0,) * 17, r"test_scales has 17 scales; give 1 to 16"),
        ("1.0", r"option test_scales='1.0' must be a list of at most 256 numbers"),
    ],
)
def test_bad_test_scales_are_refused(scales, message):
    with pytest.raises(WssegError, match=message):
        get_method("cpews")(test_scales=scales)


def test_a_multi_scale_model_is_not_exported():
    from napari_wsseg.export import check_inference

    method = get_method("cpews")(test_scales=(1.0, 0.5))
    method.classes = default_classes(2)
    with pytest.raises(WssegError, match=r"test_scales=\(1.0, 0.5\) cannot be exported"):
        check_inference(method)
    check_inference(get_method("cpews")())  # one scale: exportable
