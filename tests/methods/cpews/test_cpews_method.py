"""The cpews method: training from region tags, backbone sources, save/load/predict, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.errors import WssegError
from napari_wsseg.eval.simulate import simulate_annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.cpews.model import create_vit

FAST = {"backbone": "test_vit", "max_steps": 3, "batch_size": 2, "region_size": 32}


@pytest.fixture(scope="module")
def scene():
    """Two 64 x 64 slices with three classes, region tags on a 16-pixel grid of slice 0."""
    gt = np.zeros((2, 64, 64), np.uint8)
    gt[:, 8:24, 8:30] = 1
    gt[:, 40:60, 30:60] = 2
    image = (gt * 80 + np.random.default_rng(0).normal(0, 10, gt.shape)).astype(np.float32)
    ann = simulate_annotations(gt, slices=[0], points=0, region_tags=16, seed=0)
    return as_image(image), gt, ann


def _fit(ann, image, **options):
    method = get_method("cpews")(**(FAST | options))
    result = method.fit(image, ann, FitOptions(device="cpu", seed=0))
    return method, result


def test_fit_from_region_tags_alone_then_save_load_predict(scene, tmp_path):
    image, _, ann = scene
    method, result = _fit(ann, image)
    assert result.stopped == "done" and result.steps == 3
    assert method.fit_info["training_images"] == 16  # one per grid cell of slice 0
    first = result.history[0]
    for key in ("cls_m", "cls_h", "ism", "pdl", "ssl", "seg_tags"):
        assert np.isfinite(first[key])
    assert "random initialisation" in method.training_summary["backbone"]
    assert any("random weights" in w for w in method.training_summary["warnings"])
    proba = method.predict_proba_slice(image.slice(1))
    assert proba.shape == (3, 64, 64) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    folder = method.save(tmp_path / "model")
    reloaded = load_model(folder)
    assert reloaded.backbone_info["arch"] == "test_vit"
    np.testing.assert_allclose(reloaded.predict_proba_slice(image.slice(1)), proba, atol=1e-5)
    block = reloaded.predict_proba_block(np.stack([image.slice(0), image.slice(1)]))
    np.testing.assert_allclose(block[:, 1], proba, atol=1e-5)  # volumes slice by slice


def test_training_changes_the_backbone_and_the_classifiers(scene):
    image, _, ann = scene
    torch.manual_seed(0)
    start = create_vit("test_vit").state_dict()
    method, _ = _fit(ann, image, max_steps=4, warmup_fraction=0.0, lr=1e-3)
    after = method.net.vit.state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start)


def test_a_weights_file_is_loaded_and_named(scene, tmp_path):
    from safetensors.torch import save_file

    image, _, ann = scene
    torch.manual_seed(7)
    vit = create_vit("test_vit")
    save_file(
        {k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    # one step: the warm-up's first learning rate is 0, so the weights are still the file's
    method, result = _fit(ann, image, backbone_weights=str(tmp_path / "w.safetensors"), max_steps=1)
    assert result.history[0]["lr"] == 0.0
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(method.net.vit.state_dict()[key], value)
    assert method.training_summary["backbone"].startswith("weights file ")
    assert "warnings" not in method.training_summary or not any(
        "random weights" in w for w in method.training_summary["warnings"]
    )


def test_a_pretrain_backbone_folder_gives_arch_and_normalisation(scene, tmp_path):
    from napari_wsseg.engine.backbones import BackboneInfo, build_model, write_backbone_folder

    image, _, ann = scene
    info = BackboneInfo(
        arch="test_vit", patch_size=8, in_chans=1, img_size=64, mean=(0.3,), std=(0.2,)
    )
    torch.manual_seed(3)
    model = build_model(info)
    (tmp_path / "backbone").mkdir()
    write_backbone_folder(tmp_path / "backbone", model, info)
    method, _ = _fit(ann, image, backbone_weights=str(tmp_path / "backbone"), max_steps=1)
    assert method.net.patch == 8 and method.net.in_chans == 1
    assert method.backbone_info["mean"] == [0.3] and method.backbone_info["std"] == [0.2]
    assert "in-domain backbone folder" in method.training_summary["backbone"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(method.net.vit.state_dict()[key], value)


def test_points_and_region_tags_together(scene):
    image, gt, ann = scene
    both = simulate_annotations(gt, slices=[0], points=2, region_tags=16, seed=0)
    method, result = _fit(both, image)
    assert {"seg_points", "seg_tags", "cpews"} <= set(result.history[0])


def test_sizes_alone_are_refused(scene):
    image, _, _ = scene
    ann = Annotations(default_classes(3), sizes=[[0, 0, 0.8], [0, 1, 0.2]])
    with pytest.raises(
        WssegError, match="cpews learns from region tags, slice tags, boxes, points or masks"
    ):
        _fit(ann, image)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 0.8, "beta": 0.7}, "alpha (0.8) must be below beta"),
        ({"tile": 64, "tile_overlap": 64}, "tile_overlap (64) must be below tile"),
        ({"prototypes": 0}, "prototypes=0 must be"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(WssegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_method("cpews")(**options)


def test_a_tampered_backbone_record_is_refused(scene, tmp_path):
    import json

    from napari_wsseg.errors import ModelError

    image, _, ann = scene
    method, _ = _fit(ann, image, max_steps=1)
    folder = method.save(tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["state"]["backbone"]["model_kwargs"] = {"depth": 10_000}
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="recorded backbone"):
        load_model(folder)


def test_region_tags_alone_teach_an_object_class():
    """Cells that hold only background or only object pin the classes; 60 steps separate them
    well beyond predicting the majority class everywhere (73 % of the pixels)."""
    gt = np.zeros((1, 64, 64), np.uint8)
    gt[0, 16:48, 16:48] = 1  # four whole object cells
    gt[0, 2:10, 50:60] = 1  # and a small object inside a mixed cell
    image = (gt * 100 + np.random.default_rng(0).normal(0, 15, gt.shape)).astype(np.float32)
    ann = simulate_annotations(gt, points=0, region_tags=16, seed=0)
    method = get_method("cpews")(backbone="test_vit", max_steps=60, batch_size=8, lr=1e-3)
    method.fit(as_image(image), ann, FitOptions(device="cpu", seed=0))
    predicted = method.predict_proba_slice(as_image(image).slice(0)).argmax(axis=0)
    assert (gt[0] == 0).mean() < 0.75
    assert (predicted == gt[0]).mean() > 0.9


def test_boxes_become_training_images_with_only_their_class_known():
    from napari_wsseg.methods.cpews.method import _training_images

    ann = Annotations(
        default_classes(3),
        boxes=[[0, 1, 1, 3, 3, 1], [0, 1, 1, 3, 3, 2], [0, 5, 5, 7, 7, 2], [1, 0, 0, 2, 2, 1]],
        exhaustive_boxes=[[0, 2], [1, 2]],
        tags=[[1, 1]],
    )
    images = _training_images(ann, (2, 8, 8))
    assert images.boxes.tolist() == [
        [1, 0, 0, 7, 7],
        [0, 1, 1, 3, 3],
        [0, 5, 5, 7, 7],
        [1, 0, 0, 2, 2],
    ]
    # the first image is slice 1's tag; then one image per distinct box rectangle
    assert images.present.astype(int).tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 1], [0, 1, 0]]
    assert images.boxed.astype(int).tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 1], [0, 1, 0]]
    # a box leaves the other classes unknown, except those its slice's tags rule out (slice 1)
    # and an exhaustively boxed class none of whose boxes it overlaps (none here in slice 0)
    assert images.possible.astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [1, 1, 1], [0, 1, 0]]


@pytest.fixture(scope="module")
def boxed_scene():
    """Three object rectangles in one 64 x 64 slice, their boxes, and region tags of the two
    16-pixel cells that hold background only (the only word on the object class is the boxes)."""
    gt = np.zeros((1, 64, 64), np.uint8)
    objects = [(6, 20, 8, 22), (30, 50, 34, 56), (40, 58, 6, 24)]
    for y0, y1, x0, x1 in objects:
        gt[0, y0:y1, x0:x1] = 1
    image = (gt * 80 + np.random.default_rng(0).normal(0, 15, gt.shape)).astype(np.float32)
    rows = simulate_annotations(gt, points=0, region_tags=16, seed=0).region_tags
    cells = [tuple(r[[0, 2, 3, 4, 5]]) for r in rows]
    classes = {cell: set(rows[[c == cell for c in cells], 1].tolist()) for cell in cells}
    background = rows[[classes[c] == {0} for c in cells]]
    boxes = [[0, y0, x0, y1 - 1, x1 - 1, 1] for y0, y1, x0, x1 in objects]
    return as_image(image), gt[0] == 1, background, boxes


def _boxed_fit(image, **annotations):
    method = get_method("cpews")(
        backbone="test_vit", max_steps=20, batch_size=4, region_size=32, lr=1e-3
    )
    result = method.fit(
        image, Annotations(default_classes(2), **annotations), FitOptions(device="cpu", seed=0)
    )
    return method, result, method.predict_proba_slice(image.slice(0))[1]


@pytest.mark.filterwarnings("ignore:annotations. class 1:UserWarning")
def test_boxes_raise_their_class_inside_them(boxed_scene):
    image, inside, background, boxes = boxed_scene
    _, _, without = _boxed_fit(image, region_tags=background)
    method, result, with_boxes = _boxed_fit(image, region_tags=background, boxes=boxes)
    assert method.fit_info["training_images"] == 2 + 3  # two tagged cells, three boxes
    assert np.isfinite(result.history[0]["seg_boxes"])
    # without boxes nothing says the object class occurs; the boxes teach it where it is
    assert with_boxes[inside].mean() > without[inside].mean() + 0.2
    assert with_boxes[inside].mean() > with_boxes[~inside].mean() + 0.1


def test_exhaustive_boxes_lower_their_class_outside_them(boxed_scene):
    image, inside, background, boxes = boxed_scene
    _, _, partial = _boxed_fit(image, region_tags=background, boxes=boxes)
    _, result, exhaustive = _boxed_fit(
        image, region_tags=background, boxes=boxes, exhaustive_boxes=[[0, 1]]
    )
    assert np.isfinite(result.history[0]["seg_excluded"])
    assert exhaustive[~inside].mean() < partial[~inside].mean() - 0.05


def test_superclasses_train_and_a_wrong_count_is_refused(scene):
    image, _, ann = scene
    method, result = _fit(ann, image, superclasses=(0, 1, 1), max_steps=3)
    assert all(np.isfinite(h["ssl"]) for h in result.history)
    assert method.config.superclasses == (0, 1, 1)
    with pytest.raises(WssegError, match=r"superclasses gives 2 id\(s\) for 3 classes"):
        _fit(ann, image, superclasses=(0, 1))
