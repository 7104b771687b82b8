"""Feature cache for MEWS: backbone patch features per slice, in memory and optionally on disk. No Qt.

Features of a slice depend only on the frozen backbone, the tiling and the slice's normalised
pixels, so they are computed once and reused: retraining after a new click, or predicting a slice
that was trained on, skips the backbone.

Entries are keyed by a hash of the slice's raw bytes, shape, dtype and the intensity normalisation
(:func:`slice_key`), so an edited image can never be served stale features. In memory the cache is
an LRU bounded by ``max_memory_mb``. On disk it is a zarr group (one float16 array per slice) whose
attrs hold a provenance signature: backbone name, weights hash, patch size, tiling, normalisation
constants, cache format and package version. Opening a cache written with another signature is
refused with a message naming the folder, the differing keys and the fix.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ... import __version__
from ...errors import ModelError

CACHE_FORMAT_VERSION = 1
_log = logging.getLogger(__name__)


def slice_key(slice_yxc: np.ndarray, normalization) -> str:
    """Hex key of one raw slice and the normalisation applied to it before the backbone."""
    digest = hashlib.sha256()
    arr = np.ascontiguousarray(slice_yxc)
    digest.update(f"{arr.shape}|{arr.dtype}|{normalization.low}|{normalization.high}|".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()[:40]


class FeatureCache:
    """Patch features ``(Hp, Wp, D)`` float16 by slice key, in an LRU and optionally a zarr group.

    Parameters
    ----------
    signature : dict
        JSON-able provenance (see :meth:`napari_wsseg.engine.vit.FrozenViT.signature`); the cache
        format and package version are added.
    directory : path or None, default None
        Folder of the on-disk zarr group; None keeps features in memory only.
    max_memory_mb : float, default 2048
        Size of the in-memory LRU.

    Attributes
    ----------
    stats : dict
        Counts of ``memory_hits``, ``disk_hits`` and ``computed`` slices since creation.

    Raises
    ------
    ModelError
        When ``directory`` holds a cache with a different signature.
    """

    def __init__(self, signature: dict, directory=None, *, max_memory_mb: float = 2048) -> None:
        self.signature = {**signature, "cache_format": CACHE_FORMAT_VERSION, "package_version": __version__}
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = int(max_memory_mb * 2**20)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._group = None if self.directory is None else self._open_group()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "computed": 0}

    @property
    def memory_bytes(self) -> int:
        return sum(a.nbytes for a in self._memory.values())

    def get(self, key: str) -> np.ndarray | None:
        """Features for ``key`` from memory, then disk; None when absent."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats["memory_hits"] += 1
            return self._memory[key]
        features = self._read_disk(key)
        if features is not None:
            self.stats["disk_hits"] += 1
            self._remember(key, features)
        return features

    def put(self, key: str, features: np.ndarray, *, persist: bool = True) -> None:
        """Store ``features``; ``persist`` also writes them to the disk cache when there is one."""
        features = np.asarray(features, dtype=np.float16)
        self._remember(key, features)
        if persist and self._group is not None:
            self._write_disk(key, features)

    def get_many(
        self,
        keys: list[str],
        compute: Callable[[list[int]], list[np.ndarray]],
        *,
        persist: bool = True,
    ) -> list[np.ndarray]:
        """Features for every key; ``compute(indices)`` returns those of the missing ones, in order."""
        found = [self.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            for i, features in zip(missing, compute(missing)):
                self.put(keys[i], features, persist=persist)
                found[i] = np.asarray(features, dtype=np.float16)
            self.stats["computed"] += len(missing)
        return found

    # -------------------------------------------------------------- internals
    def _remember(self, key: str, features: np.ndarray) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > 1 and self.memory_bytes > self.max_bytes:
            self._memory.popitem(last=False)

    def _open_group(self):
        import zarr

        exists = (self.directory / "zarr.json").is_file()
        if self.directory.exists() and not exists and any(self.directory.iterdir()):
            raise ModelError(
                f"feature cache {self.directory} is a non-empty folder that is not a feature cache; "
                "give an empty or new folder as cache_dir"
            )
        group = zarr.open_group(str(self.directory), mode="a")
        stored = group.attrs.asdict().get("signature")
        if stored is None:
            group.attrs["signature"] = self.signature
        elif stored != _jsonable(self.signature):
            now = _jsonable(self.signature)
            diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
            details = ", ".join(f"{k}: cached {stored.get(k)!r} vs now {now.get(k)!r}" for k in diff)
            raise ModelError(
                f"feature cache {self.directory} was computed with different settings ({details}); "
                "delete that folder or give another cache_dir"
            )
        return group

    def _read_disk(self, key: str) -> np.ndarray | None:
        if self._group is None or key not in self._group:
            return None
        array = self._group[key]
        if not array.attrs.get("complete", False):  # a write interrupted by a crash
            return None
        return np.asarray(array[...], dtype=np.float16)

    def _write_disk(self, key: str, features: np.ndarray) -> None:
        array = self._group.create_array(
            key, shape=features.shape, dtype="float16", chunks=features.shape, overwrite=True
        )
        array[...] = features
        array.attrs["complete"] = True


def _jsonable(value):
    """The value as it reads back from JSON attrs (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
