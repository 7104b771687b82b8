"""Feature cache for MEWS: backbone patch features
per slice, in memory and optionally on disk. No Qt.

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
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ... import __version__
from ...errors import ModelError

CACHE_FORMAT_VERSION = 1
#: Folder under which a model's config.json may place its feature cache (besides the model folder).
CACHE_DIR_VARIABLE = "WSSEG_CACHE_DIR"
_log = logging.getLogger(__name__)


def user_cache_root() -> Path:
    """``$WSSEG_CACHE_DIR``, else the platform's cache folder for napari-wsseg.

    ``~/.cache/napari-wsseg`` on Linux (``$XDG_CACHE_HOME`` when set), ``~/Library/Caches/
    napari-wsseg`` on macOS, ``%LOCALAPPDATA%\\napari-wsseg`` on Windows.
    """
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-wsseg"


def confined_cache_dir(directory: str, model_folder: Path) -> Path | None:
    """Where a ``cache_dir`` read from a model folder's config.json may put a feature cache.

    A model folder is untrusted input, so its ``cache_dir`` may not create folders anywhere: a
    relative path is taken relative to the model folder and must stay inside it, an absolute one
    must lie inside :func:`user_cache_root`. Anything else is ignored with a warning (features
    then stay in memory; predictions are the same, only slower to repeat).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> confined_cache_dir("features", folder) == (folder / "features").resolve()
    True
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     confined_cache_dir("../../elsewhere", folder) is None
    True
    >>> "outside the model folder" in str(caught[0].message)
    True
    """
    model_folder = Path(model_folder).resolve()
    path = Path(directory).expanduser()
    resolved = (path if path.is_absolute() else model_folder / path).resolve()
    root = user_cache_root().resolve()
    if resolved.is_relative_to(model_folder) or resolved.is_relative_to(root):
        return resolved
    warnings.warn(
        f"mews model {model_folder}: cache_dir {str(directory)[:200]!r} in config.json is outside "
        f"the model folder and the cache root {root}; keeping features in memory. Set "
        f"{CACHE_DIR_VARIABLE} to a folder that holds it to use that cache",
        stacklevel=3,
    )
    return None


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
        self.signature = {
            **signature,
            "cache_format": CACHE_FORMAT_VERSION,
            "package_version": __version__,
        }
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
        """Features for every key; ``compute(indices)``
        returns those of the missing ones, in order."""
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
                f"feature cache {self.directory} is a non-empty folder that is "
                "not a feature cache; give an empty or new folder as cache_dir"
            )
        group = zarr.open_group(str(self.directory), mode="a")
        stored = group.attrs.asdict().get("signature")
        if stored is None:
            group.attrs["signature"] = self.signature
        elif stored != _jsonable(self.signature):
            now = _jsonable(self.signature)
            diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
            details = ", ".join(
                f"{k}: cached {stored.get(k)!r} vs now {now.get(k)!r}" for k in diff
            )
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
