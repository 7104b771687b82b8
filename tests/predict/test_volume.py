"""Block-wise volume prediction: no seams, crash-safe resume, NGFF output, dask, clear errors."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.cli import main
from napari_wsseg.errors import ModelError, WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.io.readers import read_labels
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rf import RandomForestMethod
from napari_wsseg.predict import blocks, schedulers
from napari_wsseg.predict.volume import (
    PROGRESS_DIR,
    RUN_ATTR,
    block_grid,
    output_chunks,
    predict_volume,
    probabilities_path,
)

SHAPE = (4, 128, 136)
ODD_BLOCK = (3, 37, 53)


@pytest.fixture(scope="module")
def phantom():
    from napari_wsseg.sample import make_phantom

    return make_phantom(SHAPE, seed=0)


@pytest.fixture(scope="module")
def model_dir(phantom, tmp_path_factory):
    """A small rf (halo 10 pixels) trained on one densely labelled slice."""
    image, labels, classes = phantom
    masks = np.zeros_like(labels)
    masks[0] = labels[0] + 1
    rf = RandomForestMethod(n_estimators=4, sigma_max=2.0, max_samples_per_class=300)
    rf.fit(as_image(image), Annotations(classes=classes, masks=masks), FitOptions(seed=0))
    return rf.save(tmp_path_factory.mktemp("model") / "rf")


@pytest.fixture(scope="module")
def volume_zarr(phantom, tmp_path_factory):
    """The phantom as a chunked zarr array (chunks unrelated to the blocks)."""
    path = tmp_path_factory.mktemp("vol") / "vol.zarr"
    array = zarr.create_array(str(path), shape=SHAPE, chunks=(2, 32, 32), dtype=np.uint8)
    array[:] = phantom[0]
    return path


@pytest.fixture(scope="module")
def expected(phantom, model_dir):
    """Whole-slice prediction: labels (Z, Y, X) and uint8 probabilities (C, Z, Y, X)."""
    model = load_model(model_dir)
    proba = np.stack([model.predict_proba_slice(s[..., None]) for s in phantom[0]], axis=1)
    quantized = np.clip(np.round(proba * 255), 0, 255).astype(np.uint8)
    return np.argmax(proba, axis=0).astype(np.uint8), quantized


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {key: group[key][...] for key in sorted(group.array_keys())}


def _assert_same_stores(a: Path, b: Path) -> None:
    arrays_a, arrays_b = _store_arrays(a), _store_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=f"{a} level {key}")


# ------------------------------------------------------------------------------ no seams
def test_blockwise_equals_whole_volume_with_odd_blocks(model_dir, volume_zarr, expected, tmp_path):
    out = tmp_path / "pred.zarr"
    result = predict_volume(model_dir, volume_zarr, out, block=ODD_BLOCK, probabilities=True)
    assert (result.stopped, result.n_blocks, result.computed) == ("done", 2 * 4 * 3, 24)
    np.testing.assert_array_equal(np.asarray(read_labels(out)), expected[0])
    probs = zarr.open_group(str(probabilities_path(out)), mode="r")["0"]
    np.testing.assert_array_equal(probs[...], expected[1])
    labels = zarr.open_group(str(out), mode="r")["0"]
    assert labels.chunks == output_chunks(ODD_BLOCK) == ODD_BLOCK
    assert not (out / PROGRESS_DIR).exists()


def test_2d_image_with_2d_blocks(phantom, model_dir, expected, tmp_path):
    image = as_image(phantom[0][2])
    out = tmp_path / "slice.zarr"
    predict_volume(model_dir, image, out, block=(19, 29))
    labels = np.asarray(read_labels(out))
    assert labels.shape == SHAPE[1:]
    np.testing.assert_array_equal(labels, expected[0][2])


class _BatchedRF(RandomForestMethod):
    """An rf offering predict_proba_batch, as GPU methods do; records the batch sizes it saw."""

    batch_sizes: list[int]

    def predict_proba_batch(self, slices):
        self.batch_sizes.append(len(slices))
        return [self.predict_proba_slice(s) for s in slices]


def test_methods_with_a_batch_api_get_batches(
    model_dir, volume_zarr, expected, tmp_path, monkeypatch
):
    model = _BatchedRF()
    model.__dict__.update(load_model(model_dir).__dict__)
    model.batch_sizes = []
    monkeypatch.setattr(blocks, "BATCH_SLICES", 2)
    predict_volume(model, volume_zarr, tmp_path / "b.zarr", block=(3, 128, 136))
    assert model.batch_sizes == [2, 1, 1]  # slices 0-2 in batches of 2, then the last block
    np.testing.assert_array_equal(np.asarray(read_labels(tmp_path / "b.zarr")), expected[0])


# ------------------------------------------------------------------ crash safety, resume
KILL_SCRIPT = """
import os, signal, sys
from napari_wsseg.predict.volume import predict_volume

def kill_after_some_blocks(event):
    if event.done >= 5:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 while blocks are read, computed and written

predict_volume(sys.argv[1], sys.argv[2], sys.argv[3], block=(1, 64, 68), probabilities=True,
               progress=kill_after_some_blocks)
"""


def test_killed_run_resumes_to_the_identical_result(model_dir, volume_zarr, tmp_path):
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    command = [sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(volume_zarr), str(killed)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    n_blocks = len(block_grid(SHAPE, (1, 64, 68)))
    marked = len(os.listdir(killed / PROGRESS_DIR))
    assert 5 <= marked < n_blocks

    with pytest.raises(WssegError, match="exists; pass --overwrite"):
        predict_volume(model_dir, volume_zarr, killed, block=(1, 64, 68), probabilities=True)
    with pytest.raises(WssegError, match="block="):
        predict_volume(
            model_dir, volume_zarr, killed, block=(1, 32, 68), probabilities=True, resume=True
        )
    resumed = predict_volume(
        model_dir, volume_zarr, killed, block=(1, 64, 68), probabilities=True, resume=True
    )
    assert (resumed.stopped, resumed.skipped, resumed.computed) == (
        "done",
        marked,
        n_blocks - marked,
    )

    predict_volume(model_dir, volume_zarr, clean, block=(1, 64, 68), probabilities=True)
    _assert_same_stores(killed, clean)
    _assert_same_stores(probabilities_path(killed), probabilities_path(clean))
    assert not list(killed.rglob("*.partial"))
    again = predict_volume(
        model_dir, volume_zarr, killed, block=(1, 64, 68), probabilities=True, resume=True
    )
    assert again.computed == 0  # a complete output is left as it is


def test_cancel_leaves_a_resumable_output(model_dir, volume_zarr, expected, tmp_path):
    out = tmp_path / "cancelled.zarr"
    stop = threading.Event()

    def cancel_after_two(event):
        if event.done >= 2:
            stop.set()

    first = predict_volume(
        model_dir, volume_zarr, out, block=ODD_BLOCK, progress=cancel_after_two, cancel=stop
    )
    assert first.stopped == "cancelled" and 2 <= first.computed < first.n_blocks
    assert zarr.open_group(str(out), mode="r").attrs[RUN_ATTR]["status"] == "running"
    second = predict_volume(model_dir, volume_zarr, out, block=ODD_BLOCK, resume=True)
    assert second.stopped == "done" and second.skipped == first.computed
    np.testing.assert_array_equal(np.asarray(read_labels(out)), expected[0])


def test_resume_refuses_another_model(model_dir, volume_zarr, tmp_path):
    import shutil

    out, other = tmp_path / "p.zarr", tmp_path / "other_model"
    stop = threading.Event()
    stop.set()  # cancelled before the first block: a valid, empty, resumable output
    assert predict_volume(model_dir, volume_zarr, out, cancel=stop).stopped == "cancelled"
    shutil.copytree(model_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    with pytest.raises(WssegError, match="started with another model"):
        predict_volume(other, volume_zarr, out, resume=True)


def test_resume_after_a_kill_while_adding_the_pyramid(model_dir, volume_zarr, expected, tmp_path):
    out = tmp_path / "p.zarr"
    predict_volume(model_dir, volume_zarr, out, block=(4, 64, 64))
    group = zarr.open_group(str(out), mode="r+")
    group.attrs[RUN_ATTR] = {**group.attrs[RUN_ATTR], "status": "blocks_done"}  # as a kill would
    del group["1"]
    result = predict_volume(model_dir, volume_zarr, out, block=(4, 64, 64), resume=True)
    assert result.computed == 0
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs[RUN_ATTR]["status"] == "complete"
    np.testing.assert_array_equal(group["1"][...], expected[0][:, ::2, ::2])


# ----------------------------------------------------------------------------- metadata
def test_output_is_ngff_labels_for_ome_zarr_and_napari(model_dir, volume_zarr, phantom, tmp_path):
    from napari_builtins.io import napari_get_reader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image as NgffImage
    from ome_zarr_models.v05.image_label import ImageLabel

    out = tmp_path / "pred.zarr"
    predict_volume(model_dir, volume_zarr, out, block=(4, 64, 64), probabilities=True)
    assert isinstance(open_ome_zarr(zarr.open_group(str(out), mode="r")), ImageLabel)
    probs_group = zarr.open_group(str(probabilities_path(out)), mode="r")
    assert isinstance(open_ome_zarr(probs_group), NgffImage)

    node = next(iter(Reader(parse_url(str(out)))()))
    assert node.load(Label) is not None
    classes = phantom[2]
    names = [node.metadata["properties"][k]["name"] for k in range(len(classes))]
    assert names == [c.name for c in classes]
    assert [d.shape for d in node.data] == [SHAPE, (4, 64, 68)]  # level 0 and a downsampled level

    [(data, *_)] = napari_get_reader(str(out))(str(out))
    assert [level.shape for level in data] == [SHAPE, (4, 64, 68)]
    np.testing.assert_array_equal(np.asarray(data[1]), np.asarray(data[0])[:, ::2, ::2])


# --------------------------------------------------------------------------------- dask
def test_local_cluster_equals_threads(model_dir, volume_zarr, tmp_path, caplog):
    from dask.distributed import Client, LocalCluster

    caplog.set_level(logging.INFO, logger=schedulers.__name__)
    threads, cluster_out = tmp_path / "threads.zarr", tmp_path / "cluster.zarr"
    predict_volume(model_dir, volume_zarr, threads, block=ODD_BLOCK, probabilities=True)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        result = predict_volume(
            model_dir,
            volume_zarr,
            cluster_out,
            block=ODD_BLOCK,
            probabilities=True,
            scheduler=client,
        )
    assert result.stopped == "done"
    _assert_same_stores(threads, cluster_out)
    _assert_same_stores(probabilities_path(threads), probabilities_path(cluster_out))
    loads = [r for r in caplog.records if r.getMessage().startswith("loading model")]
    assert len(loads) == 1  # 24 blocks, one model load (both in-process workers share the cache)


def test_dask_schedulers_need_the_model_folder(model_dir, volume_zarr, tmp_path):
    with pytest.raises(WssegError, match="pass the model folder"):
        predict_volume(
            load_model(model_dir), volume_zarr, tmp_path / "p.zarr", scheduler="processes"
        )
    assert not (tmp_path / "p.zarr").exists()  # refused before any store was created


@pytest.mark.parametrize("n_workers", [0, -2, 1.5, True, "4"])
def test_worker_count_below_one_is_refused_before_any_output(
    model_dir, volume_zarr, tmp_path, n_workers
):
    with pytest.raises(WssegError, match=r"n_workers=.* is not a whole number >= 1"):
        predict_volume(
            model_dir, volume_zarr, tmp_path / "p.zarr", scheduler="processes", n_workers=n_workers
        )
    assert list(tmp_path.iterdir()) == []


def test_unknown_scheduler_is_refused(model_dir, volume_zarr, tmp_path):
    with pytest.raises(WssegError, match="scheduler 'gpu' is unknown"):
        predict_volume(model_dir, volume_zarr, tmp_path / "p.zarr", scheduler="gpu")
    assert not (tmp_path / "p.zarr").exists()


# ------------------------------------------------------------------------------- errors
def test_2d_image_given_a_3d_block(phantom, model_dir, tmp_path):
    message = r"is 2D \(128, 136\) but block \(4, 32, 32\) is 3D; give a Y,X block"
    with pytest.raises(WssegError, match=message):
        predict_volume(model_dir, as_image(phantom[0][0]), tmp_path / "p.zarr", block=(4, 32, 32))


def test_existing_output_is_not_overwritten(model_dir, volume_zarr, tmp_path):
    out = tmp_path / "p.zarr"
    predict_volume(model_dir, volume_zarr, out, block=(4, 128, 136))
    before = _store_arrays(out)
    with pytest.raises(WssegError, match=r"p.zarr exists; pass --overwrite"):
        predict_volume(model_dir, volume_zarr, out, block=(4, 128, 136))
    predict_volume(model_dir, volume_zarr, out, block=(4, 128, 136), overwrite=True)
    assert _store_arrays(out).keys() == before.keys()


def test_foreign_folder_is_never_replaced(model_dir, volume_zarr, tmp_path):
    out = tmp_path / "mine.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(WssegError, match="not a wsseg label image"):
        predict_volume(model_dir, volume_zarr, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_model_trained_with_other_channel_count(model_dir, phantom, tmp_path):
    two_channels = as_image(
        np.stack([phantom[0], phantom[0]], axis=-1), channel_axis=-1, source="rgb.zarr"
    )
    with pytest.raises(ModelError, match="has 2 channel.*trained on 1"):
        predict_volume(model_dir, two_channels, tmp_path / "p.zarr")
    assert not (tmp_path / "p.zarr").exists()


def test_missing_output_folder(model_dir, volume_zarr, tmp_path):
    with pytest.raises(WssegError, match=r"p.zarr: folder .*missing does not exist; create it"):
        predict_volume(model_dir, volume_zarr, tmp_path / "missing" / "p.zarr")


def test_read_only_output_folder(model_dir, volume_zarr, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: use a folder no one may write
            folder = Path("/sys")
            if not folder.is_dir() or _writable(folder):
                pytest.skip("no read-only folder available to this user")
        with pytest.raises(WssegError, match="is not writable"):
            predict_volume(model_dir, volume_zarr, folder / "p.zarr")
    finally:
        (tmp_path / "ro").chmod(0o755)


def _writable(folder: Path) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_output_must_be_zarr(model_dir, volume_zarr, tmp_path):
    with pytest.raises(WssegError, match=r"name it p.zarr"):
        predict_volume(model_dir, volume_zarr, tmp_path / "p.npy")


# ---------------------------------------------------------------------------------- CLI
def test_cli_blockwise_predict_resume_and_errors(
    model_dir, volume_zarr, expected, tmp_path, capsys
):
    out = tmp_path / "cli.zarr"
    args = ["predict", str(model_dir), str(volume_zarr), "--out", str(out), "--block", "3,37,53"]
    assert main(args + ["--probabilities"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["blocks"] == 24 and report["probabilities"].endswith("cli_probabilities.zarr")
    np.testing.assert_array_equal(np.asarray(read_labels(out)), expected[0])

    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(model_dir),
                str(volume_zarr),
                "--out",
                str(tmp_path / "p.npy"),
                "--probabilities",
                "--resume",
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "--probabilities, --resume apply to block-wise prediction only" in error


# ------------------------------------------------------------------------- resume integrity
def _chunk_files(store: Path) -> list[Path]:
    """The level-0 chunk files of a store (zarr v3 default keys: 0/c/...)."""
    return sorted(p for p in (store / "0" / "c").rglob("*") if p.is_file())


def _cancelled_run(model_dir, volume_zarr, out, n_blocks: int):
    stop = threading.Event()

    def cancel_after(event):
        if event.done >= n_blocks:
            stop.set()

    return predict_volume(
        model_dir,
        volume_zarr,
        out,
        block=ODD_BLOCK,
        probabilities=True,
        progress=cancel_after,
        cancel=stop,
    )


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_resume_recomputes_a_damaged_finished_block(model_dir, volume_zarr, tmp_path, damage):
    out, clean = tmp_path / "damaged.zarr", tmp_path / "clean.zarr"
    first = _cancelled_run(model_dir, volume_zarr, out, 4)
    assert first.stopped == "cancelled" and first.computed >= 4
    chunk = next(p for p in _chunk_files(out) if p.stat().st_size > 0)
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[8:])
    events = []
    with pytest.warns(UserWarning, match=r"1 finished block\(s\) are missing or damaged"):
        resumed = predict_volume(
            model_dir,
            volume_zarr,
            out,
            block=ODD_BLOCK,
            probabilities=True,
            resume=True,
            progress=events.append,
        )
    assert resumed.repaired == 1 and resumed.skipped == first.computed - 1
    verifying = [e for e in events if e.message.startswith("verifying finished block")]
    assert [(e.done, e.total) for e in verifying] == [
        (n, first.computed) for n in range(1, first.computed + 1)
    ]
    assert events[: len(verifying)] == verifying  # reported while verifying, before any block
    assert "recomputing 1 damaged block(s)" in events[len(verifying)].message
    predict_volume(model_dir, volume_zarr, clean, block=ODD_BLOCK, probabilities=True)
    _assert_same_stores(out, clean)
    _assert_same_stores(probabilities_path(out), probabilities_path(clean))


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_resume_repairs_a_complete_output(model_dir, volume_zarr, tmp_path, damage):
    out, clean = tmp_path / "complete.zarr", tmp_path / "clean.zarr"
    predict_volume(model_dir, volume_zarr, clean, block=ODD_BLOCK)
    predict_volume(model_dir, volume_zarr, out, block=ODD_BLOCK)
    chunks = [p for p in _chunk_files(out) if p.stat().st_size > 0]
    for chunk in chunks[:2]:
        if damage == "delete":
            chunk.unlink()
        else:
            chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    with pytest.warns(UserWarning, match=r"2 finished block\(s\)"):
        resumed = predict_volume(model_dir, volume_zarr, out, block=ODD_BLOCK, resume=True)
    assert (resumed.stopped, resumed.computed, resumed.repaired) == ("done", 2, 2)
    assert zarr.open_group(str(out), mode="r").attrs[RUN_ATTR]["status"] == "complete"
    _assert_same_stores(out, clean)  # level 0 and the pyramid rebuilt from it
    again = predict_volume(model_dir, volume_zarr, out, block=ODD_BLOCK, resume=True)
    assert (again.computed, again.repaired) == (0, 0)


def test_resume_of_an_unreadable_store_names_it(model_dir, volume_zarr, tmp_path):
    out = tmp_path / "broken.zarr"
    _cancelled_run(model_dir, volume_zarr, out, 2)
    (out / "0" / "zarr.json").write_text("{not json")
    with pytest.raises(
        WssegError,
        match=r"broken.zarr cannot be read as a wsseg prediction "
        r"store .*; pass --overwrite to start again",
    ):
        predict_volume(
            model_dir, volume_zarr, out, block=ODD_BLOCK, probabilities=True, resume=True
        )


# ------------------------------------------------- a method's preferred block (min_block_yx)
WIDE_SHAPE = (2, 600, 700)


@pytest.fixture(scope="module")
def wide_image():
    from napari_wsseg.sample import make_phantom

    return as_image(make_phantom(WIDE_SHAPE, seed=1)[0])


def test_default_block_widens_to_the_method_preference(model_dir, wide_image, tmp_path):
    model = load_model(model_dir)
    whole = np.stack([model.predict_slice(wide_image.slice(z)) for z in range(2)])
    plain = predict_volume(model, wide_image, tmp_path / "plain.zarr")
    assert plain.n_blocks == 4  # 512 x 512 blocks over 600 x 700
    model.min_block_yx = 1024  # wider than the image: one block of the whole slices
    with warnings_as_errors():
        wide = predict_volume(model, wide_image, tmp_path / "wide.zarr")
    assert wide.n_blocks == 1
    assert blocks.resolve_block(None, wide_image, model) == (39, 600, 700)  # 64*512*512 voxels
    for out in ("plain.zarr", "wide.zarr"):
        np.testing.assert_array_equal(read_labels(tmp_path / out), whole)


def test_a_given_block_below_the_preference_warns_with_the_cost(model_dir, wide_image, tmp_path):
    model = load_model(model_dir)
    model.min_block_yx = 1024
    with pytest.warns(blocks.SmallBlockWarning) as caught:
        result = predict_volume(model, wide_image, tmp_path / "small.zarr", block=(2, 100, 700))
    assert result.n_blocks == 6  # the given block is used
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "block 2,100,700 is smaller than the 1024 px" in message
    assert "with its default block 39,600,700" in message
    ratio = blocks.context_ratio(WIDE_SHAPE, (2, 100, 700), blocks.model_halo(model))
    assert f"{ratio:.1f}x the pixels" in message and ratio > 1.1
    with warnings_as_errors():  # at least the preferred size where the image has it: no warning
        predict_volume(model, wide_image, tmp_path / "wide.zarr", block=(1, 600, 700))


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "big"])
def test_a_bad_min_block_yx_names_the_method(model_dir, wide_image, tmp_path, value):
    model = load_model(model_dir)
    model.min_block_yx = value
    with pytest.raises(ModelError, match="rf reports min_block_yx="):
        predict_volume(model, wide_image, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


@contextlib.contextmanager
def warnings_as_errors():
    """A :class:`~napari_wsseg.predict.blocks.SmallBlockWarning` inside the block fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", blocks.SmallBlockWarning)
        yield


def _clicks(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Points ``(z, y, x, class)``: ``per_class`` random pixels of each class of 2D labels."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in np.unique(labels):
        ys, xs = np.nonzero(labels == cls)
        rows += [[0, ys[i], xs[i], cls] for i in rng.choice(len(ys), per_class, replace=False)]
    return np.array(rows, dtype=np.int64)


@pytest.mark.filterwarnings("ignore:.*RANDOM weights")
def test_mews_default_block_costs_fewer_vit_tiles_and_equals_whole_slices(tmp_path):
    """mews reads a whole ViT tile of context around each block; its preferred block (two tiles)
    costs fewer backbone tiles than 512 px blocks, and both equal whole-slice prediction."""
    from napari_wsseg.methods.mews.method import MEWSMethod
    from napari_wsseg.sample import make_phantom

    pixels, labels, classes = make_phantom((1280, 1280), seed=2)
    image = as_image(pixels)
    # tiles of 20 patches (320 px) with a core of 16 (256 px): halo 320 px, preferred block 640 px
    # a feature cache that keeps only the last slice's features, so that every run computes
    model = MEWSMethod(
        backbone="test_vit",
        backbone_weights="random",
        max_steps=3,
        tile_patches=20,
        halo_patches=2,
        cache_memory_mb=0.001,
    )
    annotations = Annotations(classes, points=_clicks(labels, 3))
    model.fit(image, annotations, FitOptions(device="cpu", seed=0))
    assert (model.halo, model.block_align, model.min_block_yx) == (320, (1, 256, 256), 640)
    counted: list[int] = []
    forward = model.backbone._forward
    model.backbone._forward = lambda batch: counted.append(len(batch)) or forward(batch)

    def vit_tiles(run):
        """(what ``run()`` returns, ViT tiles it computed)."""
        before = len(counted)
        return run(), sum(counted[before:])

    with pytest.warns(blocks.SmallBlockWarning, match="mews prefers"):
        small, small_tiles = vit_tiles(
            lambda: predict_volume(model, image, tmp_path / "small.zarr", block=(512, 512))
        )
    default, default_tiles = vit_tiles(
        lambda: predict_volume(model, image, tmp_path / "default.zarr")
    )
    whole, whole_tiles = vit_tiles(lambda: model.predict_slice(image.slice(0)))
    assert model.feature_cache.stats["memory_hits"] == 0  # every tile counted was computed
    assert (small.n_blocks, default.n_blocks) == (9, 4)  # 512 and 640 px blocks
    # whole slice: 80 x 80 patches, 5 x 5 tiles. 640 px blocks: contexts of 60 and 64 patches
    # (4 tiles each) per axis, 8 x 8. 512 px blocks: 52, 80 and 48 patches (4, 5, 3 tiles), 12 x 12
    assert (whole_tiles, default_tiles, small_tiles) == (25, 64, 144)
    for result in (small, default):
        np.testing.assert_array_equal(read_labels(result.out), whole)
