"""`wsseg pretrain`: DINO on a tiny ViT, checkpoints and resume, backbone folders, MEWS on them.

Every run is real training of timm's tiny ``test_vit`` (patch 8 here) on a 2 x 64 x 64 phantom,
a few seconds each on one CPU core.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.cli import main
from napari_wsseg.engine.backbones import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_model,
    load_backbone_folder,
    read_backbone_info,
)
from napari_wsseg.engine.dino import class_token_embedding
from napari_wsseg.engine.multicrop import ViewSampler, ViewSpec, training_planes
from napari_wsseg.engine.pretrain import PretrainConfig, can_resume, pretrain
from napari_wsseg.engine.vit import file_sha256, load_backbone
from napari_wsseg.errors import ModelError, WssegError
from napari_wsseg.io.image import Image, as_image
from napari_wsseg.io.normalize import Normalization
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.mews.method import MEWSMethod
from napari_wsseg.sample import make_phantom

TINY = PretrainConfig(
    arch="test_vit",
    patch_size=8,
    steps=16,
    batch=4,
    global_px=32,
    local_px=16,
    n_local=2,
    out_dim=64,
    hidden_dim=64,
    bottleneck_dim=32,
    lr=1e-3,
    seed=0,
)


@pytest.fixture(scope="module")
def phantom():
    image, labels, classes = make_phantom((2, 64, 64), seed=3, n_classes=4)
    return image, labels, classes


@pytest.fixture(scope="module")
def image(phantom):
    return as_image(phantom[0], source="phantom")


@pytest.fixture(scope="module")
def finished(image, tmp_path_factory):
    """An uninterrupted 16-step run."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return pretrain(image, out, TINY, device="cpu")


def _weights(folder) -> dict:
    return load_file(str(folder / WEIGHTS_FILE))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ training
def test_a_tiny_run_changes_the_weights_and_lowers_its_loss(finished):
    assert finished.stopped == "done" and finished.steps == finished.planned_steps == 16
    losses = [h["loss"] for h in finished.history]
    assert len(losses) == 16 and all(np.isfinite(losses))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY.seed)  # the run's own initialisation
        initial = build_model(finished.info).state_dict()
    trained = _weights(finished.out)
    changed = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert "blocks.0.attn.qkv.weight" in changed and len(changed) > len(trained) // 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_student_learns_to_match_the_teacher(seed, finished, image, tmp_path):
    """DINO's loss is the cross-entropy H(teacher, student) = H(teacher) + KL(teacher || student).
    Centring deliberately raises the teacher's entropy early on (it prevents collapse), so the
    total can rise in a 16-step run; the part the student optimises, the KL, must fall. Measured
    on three seeds (their drops were 0.45 to 1.1 nats) so that one lucky seed cannot pass it."""
    run = (
        finished
        if seed == 0
        else pretrain(image, tmp_path / "run", dataclasses.replace(TINY, seed=seed), device="cpu")
    )
    kl = [h["kl"] for h in run.history]
    for h in run.history:  # the recorded KL is the loss minus the sharpened teacher's entropy
        assert 0 <= h["kl"] <= h["loss"]
    assert np.mean(kl[-4:]) < np.mean(kl[:4]) - 0.3


@pytest.mark.parametrize("size", [32, 16])  # a global and a local view of TINY
def test_the_class_token_shortcut_equals_the_full_forward_and_its_gradients(finished, size):
    """Pretraining computes the last block for the class token only (~9 % less CPU per step);
    the embedding and every parameter's gradient must be those of the ViT's own forward. In
    float64, so that float32 rounding (gradients summed in another order) cannot hide a bug."""
    vit = build_model(finished.info).double().train()
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(size)).double()
    full = vit(x)
    full.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in vit.named_parameters()}
    vit.zero_grad()
    short = class_token_embedding(vit, x)
    short.square().sum().backward()
    assert short.shape == full.shape == (3, vit.embed_dim)
    torch.testing.assert_close(short, full, rtol=1e-10, atol=1e-12)
    for name, param in vit.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-9, atol=1e-12)


def test_a_vit_not_pooled_by_its_class_token_runs_its_own_forward(finished):
    vit = build_model(finished.info).eval()
    vit.global_pool = "avg"  # the output depends on every token: no shortcut is valid
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_token_embedding(vit, x), vit(x))


def test_backbone_json_records_architecture_provenance_and_hashes(finished, image):
    info = read_backbone_info(finished.out)
    assert (info.arch, info.patch_size, info.in_chans, info.img_size) == ("test_vit", 8, 1, 32)
    assert info.trained_on["image"] == "phantom" and info.trained_on["shape"] == [2, 64, 64]
    assert info.trained_on["planes"] == ["xy"] and len(info.trained_on["content_hash"]) == 64
    assert (
        info.training["steps"] == 16 and info.training["finished"] and info.training["seconds"] > 0
    )
    assert info.weights_sha256 == file_sha256(finished.out / WEIGHTS_FILE)
    assert info.normalization == Normalization.from_image(image).to_dict()
    assert 0 < info.mean[0] < 1 and info.std[0] > 0


def test_the_same_seed_gives_identical_weights_and_another_seed_does_not(finished, image, tmp_path):
    again = pretrain(image, tmp_path / "again", TINY, device="cpu")
    assert _same(_weights(again.out), _weights(finished.out))
    assert [h["loss"] for h in again.history] == [h["loss"] for h in finished.history]
    other = pretrain(
        image, tmp_path / "other", PretrainConfig(**{**TINY.to_dict(), "seed": 1}), device="cpu"
    )
    assert not _same(_weights(other.out), _weights(finished.out))


def test_a_cancelled_run_resumes_to_the_weights_of_an_uninterrupted_run(finished, image, tmp_path):
    cancel = threading.Event()
    seen = []

    def stop_after_five(event):
        seen.append(event.done)
        if event.done >= 5:
            cancel.set()

    stopped = pretrain(
        image,
        tmp_path / "run",
        TINY,
        device="cpu",
        progress=stop_after_five,
        cancel=cancel,
        report_every_s=0,
    )
    assert stopped.stopped == "cancelled" and stopped.steps == 5 and seen == [1, 2, 3, 4, 5]
    assert can_resume(stopped.out) and not can_resume(tmp_path / "elsewhere")
    partial = read_backbone_info(stopped.out)  # the folder is a usable backbone already
    assert partial.training["steps"] == 5 and not partial.training["finished"]
    resumed = pretrain(image, tmp_path / "run", device="cpu", resume=True)
    assert resumed.stopped == "done" and resumed.steps == 16
    assert _same(_weights(resumed.out), _weights(finished.out))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in finished.history]


class _SetAfter(threading.Event):
    """A cancel flag that reads as set from its ``n``-th check on (counts every check)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_a_cancel_during_a_step_drops_it_and_the_resumed_run_still_matches(
    phase, finished, image, tmp_path
):
    """The flag is checked between the ViT's blocks, so Cancel does not wait for a whole step
    (seconds on a CPU). The dropped step must leave no trace: its views are drawn again on
    resume and the resumed run ends with the uninterrupted run's weights."""
    counting = _SetAfter(10**9)
    pretrain(image, tmp_path / "count", dataclasses.replace(TINY, steps=1), cancel=counting)
    per_step = counting.checks  # a one-step run: one check before the step, the rest inside
    depth = len(build_model(finished.info).blocks)
    assert per_step == 1 + 3 * depth + 2 * depth  # student x2, teacher forward; student backward
    inside = 2 if phase == "forward" else per_step  # 1st block, or the backward's last block
    cancel = _SetAfter(5 * per_step + inside)  # during the 6th step
    stopped = pretrain(image, tmp_path / "run", TINY, device="cpu", cancel=cancel)
    assert stopped.stopped == "cancelled" and stopped.steps == 5 and len(stopped.history) == 5
    assert read_backbone_info(stopped.out).training["steps"] == 5
    resumed = pretrain(image, tmp_path / "run", device="cpu", resume=True)
    assert resumed.steps == 16 and _same(_weights(resumed.out), _weights(finished.out))


def test_a_killed_run_loses_at_most_the_last_checkpoint_interval(finished, image, tmp_path):
    class Killed(Exception):
        pass

    def kill_at_seven(event):
        if event.done == 7:
            raise Killed  # the process dies between two steps: no final save

    with pytest.raises(Killed):
        pretrain(
            image,
            tmp_path / "run",
            TINY,
            device="cpu",
            checkpoint_every_s=0,
            progress=kill_at_seven,
            report_every_s=0,
        )
    assert read_backbone_info(tmp_path / "run").training["steps"] == 7  # checkpointed every step
    resumed = pretrain(image, tmp_path / "run", device="cpu", resume=True)
    assert resumed.steps == 16 and _same(_weights(resumed.out), _weights(finished.out))


def test_a_time_budget_plans_the_steps_and_a_resume_keeps_that_plan(image, tmp_path):
    config = PretrainConfig(**{**TINY.to_dict(), "steps": None})
    first = pretrain(image, tmp_path / "run", config, device="cpu", time_budget_s=2.0)
    # The plan is the budget divided by the time of the first steps (of the steps made, when the
    # budget ends before the calibration steps on a loaded machine); whether this session ends
    # exactly on it depends on the load, so only the relation is asserted.
    assert first.planned_steps is not None and 1 <= first.steps <= first.planned_steps
    assert first.stopped in ("done", "time_budget")
    assert read_backbone_info(first.out).training["planned_steps"] == first.planned_steps
    resumed = pretrain(image, tmp_path / "run", device="cpu", resume=True)
    assert (
        resumed.stopped == "done" and resumed.steps == resumed.planned_steps == first.planned_steps
    )


def test_a_near_isotropic_voxel_size_from_the_image_adds_xz_and_yz(tmp_path):
    volume = np.random.default_rng(0).integers(0, 255, (20, 40, 40, 1), dtype=np.uint8)
    config = dataclasses.replace(TINY, steps=2)
    iso = pretrain(
        Image(volume, voxel_size_zyx=(9.0, 8.0, 8.0)), tmp_path / "iso", config, device="cpu"
    )
    assert iso.info.trained_on["planes"] == ["xy", "xz", "yz"]
    assert iso.info.trained_on["voxel_size_zyx"] == [9.0, 8.0, 8.0]
    thick = pretrain(
        Image(volume, voxel_size_zyx=(50.0, 4.0, 4.0)), tmp_path / "thick", config, device="cpu"
    )
    assert thick.info.trained_on["planes"] == ["xy"]


# ------------------------------------------------------------------ output folder
def test_a_user_folder_is_refused_and_left_untouched(image, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(
        WssegError,
        match=r"non-empty folder not written by wsseg pretrain.*nothing in it was changed",
    ):
        pretrain(image, user, TINY, device="cpu")
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (
        user / "notes.txt"
    ).read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(WssegError, match="is a file"):
        pretrain(image, tmp_path / "file", TINY, device="cpu")


def test_fast_views_change_only_the_views_and_keep_them_patch_multiples():
    fast = TINY.with_fast_views()
    assert (fast.global_px, fast.local_px, fast.n_local) == (64, 32, 4)
    assert dataclasses.replace(fast, global_px=32, local_px=16, n_local=2) == TINY
    with pytest.raises(WssegError, match="global_px=64 must be a multiple of patch_size=48"):
        PretrainConfig(patch_size=48, global_px=96, local_px=48).with_fast_views()


def test_bad_options_are_refused_before_the_folder_is_created(image, tmp_path):
    with pytest.raises(ModelError, match="unknown backbone 'vit_nope'"):
        pretrain(image, tmp_path / "out", PretrainConfig(arch="vit_nope"), device="cpu")
    small = as_image(np.zeros((1, 16, 16), np.uint8))
    with pytest.raises(WssegError, match="smaller than one 32x32 patch"):
        pretrain(
            small,
            tmp_path / "out",
            PretrainConfig(arch="test_vit", patch_size=32, global_px=32, local_px=32),
            device="cpu",
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(WssegError, match="global_px=36 must be a multiple of patch_size=8"):
        PretrainConfig(global_px=36)
    with pytest.raises(
        WssegError, match=r"unknown pretrain options colour; valid: arch, patch_size"
    ):
        PretrainConfig.from_dict({"colour": 1})


def test_an_existing_run_needs_resume_with_the_same_options(finished, image, tmp_path):
    with pytest.raises(WssegError, match="already holds a pretraining run; pass --resume"):
        pretrain(image, finished.out, TINY, device="cpu")
    with pytest.raises(WssegError, match=r"other options \(batch: run 4 vs now 8\)"):
        pretrain(
            image,
            finished.out,
            PretrainConfig(**{**TINY.to_dict(), "batch": 8}),
            device="cpu",
            resume=True,
        )
    other = Image(np.ascontiguousarray(np.flip(image.data, axis=2)))
    with pytest.raises(WssegError, match="holds a run on another image"):
        pretrain(other, finished.out, device="cpu", resume=True)
    with pytest.raises(WssegError, match="no pretraining checkpoint to resume"):
        pretrain(image, tmp_path / "new", TINY, device="cpu", resume=True)


# ------------------------------------------------------------------ views
class _WindowOnly:
    """A (Z, Y, X, C) array that records every read and refuses reads over ``limit`` voxels."""

    def __init__(self, data: np.ndarray, limit: int) -> None:
        self.data, self.limit, self.reads = data, limit, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, index):
        part = self.data[index]
        assert part.size <= self.limit, f"read {part.shape} of a lazy volume"
        self.reads.append(part.shape)
        return part


def test_views_read_only_windows_of_a_lazy_volume():
    volume = np.random.default_rng(0).integers(0, 255, (40, 300, 300, 1), dtype=np.uint8)
    spec = ViewSpec(global_px=32, local_px=16, n_local=3)
    lazy = _WindowOnly(volume, limit=48 * 48)
    sampler = ViewSampler(
        Image(lazy), Normalization((0.0,), (255.0,)), ("xy", "xz", "yz"), spec, [0.5], [0.25]
    )
    globals_, locals_ = sampler.batch(5, torch.Generator().manual_seed(0))
    assert globals_.shape == (10, 1, 32, 32) and locals_.shape == (15, 1, 16, 16)
    assert len(lazy.reads) == 5 and all(shape[-1] == 1 for shape in lazy.reads)


def test_near_isotropic_volumes_add_xz_and_yz_planes():
    assert training_planes((64, 256, 256), (8.0, 6.0, 6.0)) == ("xy", "xz", "yz")
    assert training_planes((64, 256, 256), (50.0, 4.0, 4.0)) == ("xy",)
    assert training_planes((64, 256, 256), None) == ("xy",)
    assert training_planes((8, 256, 256), (8.0, 8.0, 8.0), min_side=16) == (
        "xy",
    )  # too thin across
    with pytest.raises(WssegError, match="three positive numbers"):
        training_planes((64, 256, 256), (0.0, 8.0, 8.0))


# ------------------------------------------------------------------ backbone folders
def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def _rewrite_json(folder, **changes) -> None:
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, **changes}))


def test_a_backbone_with_changed_weights_bytes_is_refused_by_file_hash(finished, tmp_path):
    folder = _copy(finished.out, tmp_path)
    raw = bytearray((folder / WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ModelError) as exc:
        load_backbone_folder(folder)
    assert "backbone.safetensors has file hash" in _one_line(
        exc
    ) and "re-run wsseg pretrain" in str(exc.value)


def test_a_backbone_whose_content_hash_differs_is_refused(finished, tmp_path):
    folder = _copy(finished.out, tmp_path)
    _rewrite_json(folder, weights_hash="0" * 64)
    with pytest.raises(ModelError) as exc:
        load_backbone("vit_base_patch16_dinov3", folder)
    assert "weights have content hash" in _one_line(exc) and "records 000000000000" in str(
        exc.value
    )


def test_a_backbone_with_a_wrongly_shaped_tensor_is_refused(finished, tmp_path):
    folder = _copy(finished.out, tmp_path)
    state = _weights(folder)
    state["pos_embed"] = torch.zeros(1, 5, 64)
    save_file(state, str(folder / WEIGHTS_FILE))  # a consistent file hash: only the shape is wrong
    _rewrite_json(folder, weights_sha256=file_sha256(folder / WEIGHTS_FILE))
    with pytest.raises(ModelError) as exc:
        load_backbone_folder(folder)
    assert (
        "1 wrongly shaped tensors ('pos_embed' is (1, 5, 64), expected (1, 17, 64))"
        in _one_line(exc)
    )


def test_a_backbone_of_an_unknown_architecture_is_refused(finished, tmp_path):
    folder = _copy(finished.out, tmp_path)
    _rewrite_json(folder, arch="vit_tinyest_patch8")
    with pytest.raises(ModelError) as exc:
        load_backbone_folder(folder)
    assert _one_line(exc).startswith("unknown backbone 'vit_tinyest_patch8'")


def test_a_backbone_of_a_newer_format_names_the_release(finished, tmp_path):
    folder = _copy(finished.out, tmp_path)
    _rewrite_json(folder, format_version=99, package_version="9.9")
    with pytest.raises(
        ModelError,
        match=r"format version 99.*install the napari-wsseg release that wrote it \(9.9\)",
    ):
        read_backbone_info(folder)


def test_a_backbone_name_that_contradicts_the_folder_is_refused(finished):
    with pytest.raises(
        ModelError,
        match=r"holds a 'test_vit' but backbone 'vit_small_patch16_224'.*--backbone test_vit",
    ):
        load_backbone("vit_small_patch16_224", finished.out)


# ------------------------------------------------------------------ MEWS
def _clicks(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Four clicks per class at pixels of that class, on both slices."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in range(n_classes):
        z, y, x = np.nonzero(labels == cls)
        for i in rng.choice(len(z), 4, replace=False):
            rows.append([z[i], y[i], x[i], cls])
    return np.array(rows, dtype=np.int64)


def test_mews_trains_and_predicts_with_a_pretrained_backbone_folder(finished, phantom, tmp_path):
    image, labels, classes = phantom
    method = MEWSMethod(
        backbone_weights=str(finished.out),
        max_steps=5,
        crop_patches=4,
        cache_dir=str(tmp_path / "cache"),
    )
    annotations = Annotations(classes, points=_clicks(labels, len(classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "RANDOM weights" warning: real weights
        result = method.fit(as_image(image), annotations, FitOptions(device="cpu"))
    assert (
        result.steps == 5 and method.backbone.name == "test_vit" and method.backbone.patch_size == 8
    )
    signature = method.feature_cache.signature
    assert (
        signature["weights_hash"] == finished.info.weights_hash
    )  # the cache is keyed by the backbone
    import zarr

    assert zarr.open_group(str(tmp_path / "cache"), mode="r").attrs["signature"][
        "weights_hash"
    ] == (finished.info.weights_hash)
    pred = np.stack([method.predict_slice(image[z][..., None]) for z in range(2)])
    assert pred.shape == (2, 64, 64) and pred.max() < len(classes)
    folder = method.save(tmp_path / "model")
    state = json.loads((folder / "config.json").read_text())["state"]["backbone"]
    assert state["weights_source"] == f"backbone:{finished.out}"
    reloaded = load_model(folder)
    again = np.stack([reloaded.predict_slice(image[z][..., None]) for z in range(2)])
    np.testing.assert_array_equal(again, pred)


def test_a_mews_model_refuses_a_backbone_folder_with_other_weights(
    finished, phantom, image, tmp_path
):
    import shutil

    backbone = shutil.copytree(finished.out, tmp_path / "backbone")
    _, labels, classes = phantom
    method = MEWSMethod(backbone_weights=str(backbone), max_steps=2, crop_patches=4)
    method.fit(
        image, Annotations(classes, points=_clicks(labels, len(classes))), FitOptions(device="cpu")
    )
    folder = method.save(tmp_path / "model")
    shutil.rmtree(backbone)  # a test-owned copy, replaced by another run's weights
    pretrain(
        image, backbone, PretrainConfig(**{**TINY.to_dict(), "seed": 3, "steps": 2}), device="cpu"
    )
    with pytest.raises(ModelError) as exc:
        load_model(folder).predict_slice(image.slice(0))
    assert "holds other weights than the" in _one_line(exc)


def test_cli_pretrain_then_train_mews_with_the_backbone(phantom, tmp_path, capsys):
    image, labels, classes = phantom
    np.save(tmp_path / "image.npy", image)
    clicks = _clicks(labels, len(classes))
    (tmp_path / "points.csv").write_text(
        "z,y,x,class\n" + "\n".join(",".join(map(str, r)) for r in clicks) + "\n"
    )
    argv = [
        "pretrain",
        str(tmp_path / "image.npy"),
        "--out",
        str(tmp_path / "bb"),
        "--arch",
        "test_vit",
        "--steps",
        "3",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--fast-views",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["stopped"] == "done" and report["steps"] == 3
    trained = read_backbone_info(tmp_path / "bb").training["config"]
    assert (trained["global_px"], trained["local_px"], trained["n_local"]) == (64, 32, 4)
    assert report["weights_hash"] == read_backbone_info(tmp_path / "bb").weights_hash
    assert main(argv) == 2  # the same --out again, without --resume
    assert "already holds a pretraining run; pass --resume" in capsys.readouterr().err
    assert (
        main(
            [
                "pretrain",
                str(tmp_path / "image.npy"),
                "--out",
                str(tmp_path / "bb"),
                "--resume",
                "--device",
                "cpu",
            ]
        )
        == 0
    )  # already finished: nothing more to do
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    argv = [
        "train",
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--method",
        "mews",
        "--backbone-weights",
        str(tmp_path / "bb"),
        "--max-steps",
        "2",
        "--crop-patches",
        "4",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "model"),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(tmp_path / "model"),
                str(tmp_path / "image.npy"),
                "--out",
                str(tmp_path / "p.npy"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "p.npy").shape == image.shape


def test_cli_refuses_a_bad_voxel_size_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "image.npy", np.zeros((2, 32, 32), np.uint8))
    assert (
        main(
            [
                "pretrain",
                str(tmp_path / "image.npy"),
                "--out",
                str(tmp_path / "bb"),
                "--voxel-size",
                "1,2",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "must be three positive numbers Z,Y,X" in err[0]
        and not (tmp_path / "bb").exists()
    )
