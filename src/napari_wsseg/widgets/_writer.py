"""napari writer contribution for Labels layers: ``.npy``, ``.tif`` or OME-Zarr ``.zarr``.

napari-wsseg layers show class ``k`` as label ``k + 1`` (0 = unlabeled / not predicted). A
masks (scribble) layer is written as it is, which is exactly the masks format of the CLI
(``--masks``). A prediction layer is written as class ids (label - 1), like ``wsseg predict``
writes them; pixels never predicted become class 0. Other Labels layers are written unchanged.
"""

from __future__ import annotations


def write_labels_layer(path: str, data, meta: dict) -> list[str]:
    """Write one Labels layer's ``data`` to ``path`` (format from the extension)."""
    from ..io import write_labels
    from ._layers import META_KEY

    role = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("role")
    if role == "prediction":
        data = _class_ids(data)
    return [str(write_labels(path, data))]


def _class_ids(data):
    """Label ``k`` -> class ``k - 1`` (0 stays 0), lazily for dask arrays."""
    import numpy as np

    if hasattr(data, "map_blocks"):
        return data.map_blocks(_class_ids, dtype=data.dtype)
    data = np.asarray(data)
    return np.where(data > 0, data - 1, 0).astype(data.dtype)
