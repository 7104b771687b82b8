"""The frozen ViT feature wrapper with timm's tiny test_vit (no network, weights written here)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_wsseg.engine.vit import FrozenViT, TileSpec, _tile_boxes, hash_weights, load_backbone
from napari_wsseg.errors import ModelError, WssegError


@pytest.fixture(scope="module")
def backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone("test_vit", "random")


def _direct_features(model, pixels: torch.Tensor, prefix: int) -> np.ndarray:
    with torch.inference_mode():
        tokens = model.forward_features(pixels)
    rows, cols = pixels.shape[2] // 16, pixels.shape[3] // 16
    return tokens[:, prefix:].reshape(len(pixels), rows, cols, -1).numpy()


def test_features_are_the_patch_tokens_of_the_normalised_grey_slice(backbone):
    slices = np.random.default_rng(0).random((2, 48, 64, 1), dtype=np.float32)
    feats = backbone.features(slices)
    assert feats.shape == (2, 3, 4, 64) and feats.dtype == np.float16
    mean, std = np.array(backbone.mean), np.array(backbone.std)
    pixels = (
        np.repeat(slices, 3, axis=-1) - mean
    ) / std  # grey repeated to RGB, the backbone's own mean/std
    expected = _direct_features(
        backbone.model, torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float(), 1
    )
    np.testing.assert_allclose(feats, expected, atol=2e-2, rtol=1e-2)


def test_register_tokens_are_dropped():
    import timm

    model = timm.create_model(
        "test_vit", pretrained=False, num_classes=0, dynamic_img_size=True, reg_tokens=4
    )
    vit = FrozenViT(
        model, name="test_vit+reg4", weights_source="random", weights_hash=hash_weights(model)
    )
    assert vit.num_prefix_tokens == 5
    slices = np.random.default_rng(1).random((1, 32, 48, 3), dtype=np.float32)
    pixels = torch.from_numpy(
        ((slices - np.array(vit.mean)) / np.array(vit.std)).transpose(0, 3, 1, 2)
    ).float()
    np.testing.assert_allclose(
        vit.features(slices), _direct_features(model, pixels, 5), atol=2e-2, rtol=1e-2
    )


def test_slices_are_padded_to_whole_patches(backbone):
    assert backbone.grid_shape((50, 17)) == (4, 2)
    assert backbone.features(np.zeros((1, 50, 17, 1), np.float32)).shape == (1, 4, 2, 64)


def test_a_slice_smaller_than_one_patch_is_refused(backbone):
    with pytest.raises(
        WssegError, match=r"slice of shape \(15, 100\) is smaller than one 16x16 patch"
    ):
        backbone.features(np.zeros((1, 15, 100, 1), np.float32))


@pytest.mark.parametrize(
    "n, tile, halo", [(7, 4, 1), (10, 5, 2), (3, 8, 2), (64, 64, 4), (65, 64, 4)]
)
def test_tile_cores_partition_the_grid(n, tile, halo):
    boxes = _tile_boxes(n, TileSpec(tile, halo))
    covered = np.zeros(n, int)
    for start, end, core_start, core_end, offset in boxes:
        assert end - start == min(tile, n) and 0 <= start and end <= n
        assert start <= core_start < core_end <= end and offset == core_start - start
        covered[core_start:core_end] += 1
    assert (covered == 1).all()


def test_tiled_features_take_each_patch_from_its_tile(backbone):
    tiled = FrozenViT(
        backbone.model,
        name="test_vit",
        weights_source="random",
        weights_hash=backbone.weights_hash,
        tiles=TileSpec(4, 1),
    )
    slices = np.random.default_rng(2).random((1, 7 * 16, 5 * 16, 1), dtype=np.float32)
    feats = tiled.features(slices)
    assert feats.shape == (1, 7, 5, 64)
    # cores are 2 patches: rows 0..1 come from the tile
    # on rows 0..3, columns 2..4 from the one on 1..4
    tile = tiled.features(slices[:, : 4 * 16, 16 : 5 * 16])  # one tile: no further tiling
    np.testing.assert_array_equal(feats[0, 0:2, 2:5], tile[0, 0:2, 1:4])
    assert not np.array_equal(
        feats[0, 2:4, 2:5], tile[0, 2:4, 1:4]
    )  # rows 2..3 come from the next tile


def test_random_weights_are_reproducible_and_flagged():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = load_backbone("test_vit", "random")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        b = load_backbone("test_vit", "random")
    assert a.weights_hash == b.weights_hash and len(a.weights_hash) == 64
    assert a.weights_source == "random" and "RANDOM weights" in a.warning


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_is_loaded_and_hashed(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_vit", pretrained=False)  # with its classifier head: ignored
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    vit = load_backbone("test_vit", path)
    assert vit.weights_source == f"file:{path.resolve()}" and vit.warning is None
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(vit.model.state_dict()[key], state[key])
    head_free = timm.create_model("test_vit", pretrained=False, num_classes=0)
    head_free.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    assert vit.weights_hash == hash_weights(head_free)


def test_weights_file_of_another_architecture_names_the_key_counts(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_vit3", pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    with pytest.raises(
        ModelError, match=r"\d+ missing keys, \d+ unexpected keys, \d+ with the wrong shape"
    ):
        load_backbone("test_vit", tmp_path / "w.safetensors")


def test_unreadable_or_missing_weights_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_backbone("test_vit", tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="neither safetensors nor a plain torch state dict"):
        load_backbone("test_vit", tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone("test_vit", tmp_path / "missing.safetensors")


def test_unknown_and_non_vit_backbones():
    with pytest.raises(
        ModelError, match=r"unknown backbone 'vit_smal_patch16_dinov3'.*vit_small_patch16_dinov3"
    ):
        load_backbone("vit_smal_patch16_dinov3", "random")
    with pytest.raises(ModelError, match="not a Vision Transformer"):
        load_backbone("resnet18", "random")


def test_missing_download_explains_the_offline_routes(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    # Offline mode with an empty cache: the same failure
    # as a machine without network, without retries.
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        ModelError, match=r"models--timm--test_vit.*HF_HUB_OFFLINE=1.*--backbone-weights FILE"
    ):
        load_backbone("test_vit", None)
