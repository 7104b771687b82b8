""" "Annotate here next": suggestions are deterministic, inside the image, sorted, spread out, and
go where the model is unsure, towards classes with few labels and away from labelled pixels."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations, ClassInfo
from napari_wsseg.cli import main
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, Method
from napari_wsseg.predict.suggest import SuggestConfig, suggest, uncertainty

CLASSES = [ClassInfo("bg", "#000000"), ClassInfo("cell", "#ff0000"), ClassInfo("rare", "#00ff00")]


class _Scripted(Method):
    """A model whose probabilities the test sets: slice z of the image holds the value z, and
    ``maps[z]`` is the (C, Y, X) answer for it."""

    name = "scripted"
    config_class = dict

    def __init__(self, maps: dict[int, np.ndarray]) -> None:
        super().__init__(config={})
        self.maps, self.classes, self.n_channels = maps, list(CLASSES), 1

    def predict_proba_slice(self, slice_yxc):
        return self.maps[int(slice_yxc[0, 0, 0])]

    def _fit(self, image, annotations, options):  # pragma: no cover - never trained
        raise NotImplementedError

    def _save_weights(self, folder):  # pragma: no cover
        raise NotImplementedError

    def _load_weights(self, folder):  # pragma: no cover
        raise NotImplementedError


def _sure(shape=(128, 128)) -> np.ndarray:
    proba = np.zeros((3, *shape))
    proba[0] = 1.0
    return proba


def _unsure(proba, y0, y1, x0, x1, classes=(0, 1)) -> np.ndarray:
    proba[:, y0:y1, x0:x1] = 0.0
    for c in classes:
        proba[c, y0:y1, x0:x1] = 1.0 / len(classes)
    return proba


def _image(n_slices: int, shape=(128, 128)):
    return as_image(np.stack([np.full(shape, z, np.float32) for z in range(n_slices)]))


def _noisy_model(n_slices=3, seed=0):
    rng = np.random.default_rng(seed)
    maps = {
        z: rng.dirichlet([0.3] * 3, size=(128, 128)).transpose(2, 0, 1) for z in range(n_slices)
    }
    return _Scripted(maps), _image(n_slices)


def test_suggestions_are_deterministic_inside_the_image_and_sorted():
    model, image = _noisy_model()
    config = SuggestConfig(n=12, cell=32, per_slice=6, seed=4)
    first = suggest(model, image, config=config)
    assert first == suggest(model, image, config=config)
    assert len(first) == 12
    scores = [s.score for s in first]
    assert scores == sorted(scores, reverse=True)
    for s in first:
        assert 0 <= s.z < 3 and 0 <= s.y < 128 and 0 <= s.x < 128
        assert s.y0 <= s.y < s.y1 <= 128 and s.x0 <= s.x < s.x1 <= 128 and s.y1 - s.y0 == 32


def test_suggestions_are_spread_out():
    model, image = _noisy_model()
    config = SuggestConfig(n=30, cell=16, per_slice=4, min_distance=40)
    found = suggest(model, image, config=config)
    assert len(found) == 12  # 4 per slice on 3 slices
    for z in range(3):
        mine = [s for s in found if s.z == z]
        assert len(mine) == 4
        assert len({(s.y0, s.x0) for s in mine}) == 4  # one per cell
        for i, a in enumerate(mine):
            for b in mine[i + 1 :]:
                assert np.hypot(a.y - b.y, a.x - b.x) >= 40


def test_ties_are_broken_by_the_seed_reproducibly():
    maps = {0: _unsure(_sure(), 0, 128, 0, 128)}  # every cell equally unsure
    model, image = _Scripted(maps), _image(1)
    picks = {
        seed: [
            (s.y0, s.x0)
            for s in suggest(model, image, config=SuggestConfig(n=3, cell=32, seed=seed))
        ]
        for seed in range(4)
    }
    assert picks[1] == [
        (s.y0, s.x0) for s in suggest(model, image, config=SuggestConfig(n=3, cell=32, seed=1))
    ]
    assert len({tuple(p) for p in picks.values()}) > 1


def test_the_uncertain_region_comes_first():
    maps = {0: _sure(), 1: _unsure(_sure(), 64, 96, 0, 32), 2: _sure()}
    maps[2][:, :, :] = np.array([0.9, 0.1, 0.0])[:, None, None]  # mildly unsure everywhere
    found = suggest(_Scripted(maps), _image(3), config=SuggestConfig(n=5, cell=32))
    best = found[0]
    assert best.z == 1 and (best.y0, best.x0) == (64, 0) and 64 <= best.y < 96 and 0 <= best.x < 32
    assert all(s.z == 2 for s in found[1:])  # then the mildly unsure slice
    assert all(s.score == 0.0 or s.z != 0 for s in found)  # the sure slice is last, if at all


class _TwoMinds(_Scripted):
    """A scripted model with a second opinion: ``seconds[z]`` for slice z."""

    def __init__(self, maps, seconds) -> None:
        super().__init__(maps)
        self.seconds = seconds

    @property
    def has_second_opinion(self) -> bool:
        return True

    def second_opinion_slice(self, slice_yxc):
        return self.seconds[int(slice_yxc[0, 0, 0])]


def test_disagreement_is_the_normalised_jensen_shannon_divergence():
    rng = np.random.default_rng(1)
    p, q = (rng.dirichlet([0.5] * 3, size=(4, 5)).transpose(2, 0, 1) for _ in range(2))
    middle = (p + q) / 2

    def kl(a, b):
        return np.sum(a * np.log(a / b), axis=0)

    expected = (kl(p, middle) + kl(q, middle)) / 2 / np.log(2)
    np.testing.assert_allclose(uncertainty(p, "disagreement", q), expected, atol=1e-9)
    np.testing.assert_allclose(uncertainty(p, "disagreement", p), 0.0, atol=1e-12)
    with pytest.raises(WssegError, match="second opinion"):
        uncertainty(p, "disagreement")


def test_disagreement_ranks_where_the_two_networks_differ_not_where_both_are_unsure():
    both_unsure = _unsure(_sure(), 0, 32, 0, 32)  # entropy's pick: both networks unsure here
    maps = {0: both_unsure}
    second = both_unsure.copy()
    second[:, 64:96, 64:96] = np.array([0.0, 1.0, 0.0])[:, None, None]  # sure, but of another class
    model, image = _TwoMinds(maps, {0: second}), _image(1)
    by_entropy = suggest(model, image, config=SuggestConfig(n=1, cell=32))
    by_disagreement = suggest(
        model, image, config=SuggestConfig(n=1, cell=32, measure="disagreement")
    )
    assert (by_entropy[0].y0, by_entropy[0].x0) == (0, 0)
    assert (by_disagreement[0].y0, by_disagreement[0].x0) == (64, 64)
    assert by_disagreement == suggest(
        model, image, config=SuggestConfig(n=1, cell=32, measure="disagreement")
    )


def test_disagreement_needs_a_model_with_a_second_opinion():
    model, image = _noisy_model(n_slices=1)
    with pytest.raises(WssegError, match="single network.*entropy or margin"):
        suggest(model, image, config=SuggestConfig(measure="disagreement"))


def test_pick_sigma_moves_the_pixel_from_an_outline_into_an_uncertain_patch():
    proba = _sure((64, 64))
    proba = _unsure(proba, 10, 30, 10, 30, classes=(0, 1))  # a patch, fairly unsure
    proba[:, 10:30, 10:30] = np.array([0.6, 0.4, 0.0])[:, None, None]
    proba = _unsure(proba, 50, 51, 0, 64, classes=(0, 1))  # an outline, most unsure
    model, image = _Scripted({0: proba}), _image(1, (64, 64))
    sharp = suggest(model, image, config=SuggestConfig(n=1, cell=64, pick_sigma=0))[0]
    smooth = suggest(model, image, config=SuggestConfig(n=1, cell=64, pick_sigma=4))[0]
    assert sharp.y == 50  # the single most uncertain pixel lies on the outline
    assert 14 <= smooth.y < 26 and 14 <= smooth.x < 26  # the middle of the patch
    assert smooth.score == sharp.score  # cells are ranked on the unsmoothed scores either way


def test_labelled_pixels_are_never_picked_from_the_smoothed_scores():
    proba = _unsure(_sure((32, 32)), 8, 24, 8, 24)
    ann = Annotations(CLASSES, points=np.array([[0, 16, 16, 0]]))
    model, image = _Scripted({0: proba}), _image(1, (32, 32))
    found = suggest(model, image, annotations=ann, config=SuggestConfig(n=1, pick_sigma=3))[0]
    assert (found.y, found.x) != (16, 16) and 8 <= found.y < 24 and 8 <= found.x < 24


def test_classes_with_few_labels_are_preferred():
    proba = _unsure(_sure(), 0, 32, 0, 32, classes=(0, 1))  # bg vs cell: many labels
    proba = _unsure(proba, 96, 128, 96, 128, classes=(0, 2))  # bg vs rare: one label
    model, image = _Scripted({0: proba}), _image(1)
    points = [[0, 50, 50, 0]] * 20 + [[0, 60, 60, 1]] * 20 + [[0, 70, 70, 2]]
    ann = Annotations(CLASSES, points=np.array(points))
    found = suggest(model, image, annotations=ann, config=SuggestConfig(n=2, cell=32))
    assert (found[0].y0, found[0].x0) == (96, 96) and (found[1].y0, found[1].x0) == (0, 0)
    assert found[0].score > found[1].score
    flat = suggest(
        model, image, annotations=ann, config=SuggestConfig(n=2, cell=32, rarity_power=0)
    )
    assert flat[0].score == pytest.approx(flat[1].score)


def test_labelled_pixels_are_never_suggested():
    proba = _unsure(_sure(), 0, 32, 0, 32)
    masks = np.zeros((1, 128, 128), np.uint8)
    masks[0, 0:16, 0:32] = 1
    ann = Annotations(CLASSES, points=np.array([[0, 20, 5, 1]]), masks=masks)
    found = suggest(
        _Scripted({0: proba}), _image(1), annotations=ann, config=SuggestConfig(n=1, cell=32)
    )
    assert (found[0].y0, found[0].x0) == (0, 0)
    assert found[0].y >= 16 and (found[0].y, found[0].x) != (20, 5)


def test_slices_progress_and_cancel():
    model, image = _noisy_model(4)
    events = []
    found = suggest(
        model, image, slices=[3, 1], progress=events.append, config=SuggestConfig(n=50, cell=64)
    )
    assert {s.z for s in found} == {1, 3} and [e.done for e in events] == [1, 2]
    cancel = threading.Event()
    cancel.set()
    assert suggest(model, image, cancel=cancel) == []
    with pytest.raises(WssegError, match="outside the image"):
        suggest(model, image, slices=[4])
    other = Annotations(
        [ClassInfo("a", "#000000"), ClassInfo("b", "#ffffff")], points=np.array([[0, 1, 1, 0]])
    )
    with pytest.raises(WssegError, match="classes"):
        suggest(model, image, annotations=other)
    with pytest.raises(WssegError, match="measure"):
        SuggestConfig(measure="variance")


def test_cli_suggest_writes_best_first_csv(phantom_3d, tmp_path, capsys):
    from napari_wsseg.annotations.csv import write_classes_json, write_points_csv
    from napari_wsseg.methods import get_method

    image, labels, classes = phantom_3d
    np.save(tmp_path / "image.npy", image[:3])
    rng = np.random.default_rng(0)
    points = []
    for cls in range(len(classes)):
        ys, xs = np.nonzero(labels[0] == cls)
        i = rng.integers(len(ys))
        points.append([0, ys[i], xs[i], cls])
    (tmp_path / "ann").mkdir()
    write_points_csv(tmp_path / "ann" / "points.csv", points)
    write_classes_json(tmp_path / "classes.json", classes)
    model = get_method("rf")(n_estimators=5)
    model.fit(
        as_image(image[:3]), Annotations(classes, points=np.array(points)), FitOptions(device="cpu")
    )
    model.save(tmp_path / "model")

    out = tmp_path / "suggestions.csv"
    args = [
        "suggest",
        str(tmp_path / "model"),
        str(tmp_path / "image.npy"),
        "--out",
        str(out),
        "--n",
        "6",
        "--slices",
        "0-1",
        "--annotations",
        str(tmp_path / "ann"),
        "--cell",
        "32",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["suggestions"] == 6
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["z", "y", "x", "score", "y0", "x0", "y1", "x1"] and len(rows) == 7
    scores = [float(r[3]) for r in rows[1:]]
    assert scores == sorted(scores, reverse=True) and {int(r[0]) for r in rows[1:]} <= {0, 1}

    assert main(args) == 2  # the output exists
    err = capsys.readouterr().err
    assert err.startswith("wsseg: error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "suggest",
                str(tmp_path / "ann"),
                str(tmp_path / "image.npy"),
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    assert "config.json" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    missing = tmp_path / "no-such-folder" / "s.csv"
    assert (
        main(
            ["suggest", str(tmp_path / "model"), str(tmp_path / "image.npy"), "--out", str(missing)]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--measure", "disagreement"]) == 2  # rf: one network
    err = capsys.readouterr().err
    assert "single network" in err and len(err.splitlines()) == 1


def test_edge_cells_of_an_image_not_a_multiple_of_the_cell_are_clipped():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([0.5] * 3, size=(100, 70)).transpose(2, 0, 1)
    found = suggest(
        _Scripted({0: proba}),
        _image(1, (100, 70)),
        config=SuggestConfig(n=12, cell=32, per_slice=12, min_distance=0),
    )
    assert len(found) == 4 * 3  # ceil(100 / 32) x ceil(70 / 32) cells
    assert {(s.y1, s.x1) for s in found} == {
        (y1, x1) for y1 in (32, 64, 96, 100) for x1 in (32, 64, 70)
    }
    for s in found:
        assert s.y0 <= s.y < s.y1 and s.x0 <= s.x < s.x1
        cell = proba[:, s.y0 : s.y1, s.x0 : s.x1]
        assert s.score == pytest.approx(float(uncertainty(cell).mean()))
