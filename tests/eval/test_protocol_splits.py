"""The validation protocol's splits: groups disjoint, never neighbours, inside each volume."""

import importlib.util
import sys
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parents[2] / "benchmarks" / "protocol.py"
SLICES = {"drosophila_vnc": 20, "cdeep3m_mito": 30, "phantom": 16}


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("wsseg_benchmark_protocol", PROTOCOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_split_keeps_an_unused_slice_between_groups(protocol):
    assert set(protocol.SPLITS) == set(SLICES)
    for name, split in protocol.SPLITS.items():
        protocol.check_split(name, split, SLICES[name])  # raises on a bad split
        groups = [split.annotated, split.validation, split.scored]
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                assert min(abs(p - q) for p in a for q in b) >= 2, name


def test_cdeep3m_annotates_block_a_and_validates_and_scores_block_b(protocol):
    split = protocol.SPLITS["cdeep3m_mito"]
    assert max(split.annotated) <= 19 and min(split.validation + split.scored) >= 20
    assert len(split.annotated) == 8 and len(protocol.SPLITS["drosophila_vnc"].annotated) == 8


def test_check_split_refuses_neighbouring_groups(protocol):
    bad = protocol.Split(annotated=(0, 2), validation=(3,), scored=(6,))
    with pytest.raises(
        SystemExit, match=r"annotated and validation slices \(2, 3\) are equal or neighbours"
    ):
        protocol.check_split("x", bad, 10)


def test_region_tag_scenarios_and_their_action_counts(protocol):
    image, labels, classes = protocol.load_dataset("phantom")
    slices = protocol.SPLITS["phantom"].annotated
    cell = protocol.coarse_cell(labels.shape)
    assert cell == 52  # 256 px / 5 cells, rounded up
    tags_only = protocol.scenario_annotations("rtags", labels, classes, slices, seed=0)
    assert len(tags_only.points) == 0 and len(tags_only.region_tags) > 0
    cells = {tuple(r) for r in tags_only.region_tags[:, [0, 2, 3, 4, 5]].tolist()}
    assert len(cells) == 25 * len(slices)  # every cell of the 5 x 5 grid of every slice
    assert protocol.count_actions(tags_only) == len(cells)
    both = protocol.scenario_annotations("pts4_rtags", labels, classes, slices, seed=0)
    assert protocol.count_actions(both) == len(both.points) + len(cells)
    matched = protocol.scenario_annotations("pts_as_rtags", labels, classes, slices, seed=0)
    per_class = protocol.points_as_rtags(labels.shape, len(classes))
    assert per_class == round(25 / len(classes))
    assert len(matched.points) <= per_class * len(classes) * len(slices)
    assert len(matched.points) >= 0.8 * per_class * len(classes) * len(slices)
