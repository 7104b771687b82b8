"""Connected components of each class, block by block, merged across blocks. Imports no Qt.

A class-id volume is cut into blocks. Three passes keep memory flat whatever the volume size:

1. count: each block is labelled per class with :func:`scipy.ndimage.label` (face connectivity),
   keeping only the number of fragments, so every fragment gets a global number;
2. merge: dask-image's face-adjacency graph (``dask_image.ndmeasure``'s own merge step), one per
   class, links fragments that touch across block faces, and
   :func:`scipy.sparse.csgraph.connected_components` gives one instance per component;
3. write: each block is labelled again and its fragments mapped to instance ids, written to the
   output zarr.

dask-image's public ``ndmeasure.label`` does steps 1-3 in one dask graph, which holds every
labelled block in memory until the merge is known; here the blocks are recomputed instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import ndimage as ndi

from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report


@dataclass
class Instances:
    """The instances found: ``instance_class[i]`` is
    the class id of instance ``i`` (index 0 unused)."""

    instance_class: np.ndarray
    stopped: str = "done"

    @property
    def count(self) -> int:
        return len(self.instance_class) - 1


def block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Slices of the blocks that tile ``shape``, in C order.

    Examples
    --------
    >>> [tuple((s.start, s.stop) for s in b) for b in block_slices((5,), (2,))]
    [((0, 2),), ((2, 4),), ((4, 5),)]
    """
    ranges = [
        [slice(start, min(start + size, n)) for start in range(0, n, size)]
        for n, size in zip(shape, block)
    ]
    return [tuple(combo) for combo in product(*ranges)]


def label_block(block: np.ndarray, classes: list[int]) -> tuple[np.ndarray, list[int]]:
    """Fragments of one block: ``(int32 labels numbered 1.. over all classes, count per class)``."""
    out = np.zeros(block.shape, dtype=np.int32)
    counts = []
    base = 0
    for class_id in classes:
        labelled, n = ndi.label(block == class_id)
        inside = labelled > 0
        out[inside] = labelled[inside] + base
        counts.append(int(n))
        base += n
    return out, counts


def label_instances(
    labels,
    classes: list[int],
    out,
    block: tuple[int, ...],
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Instances:
    """Label the connected components of each class in ``labels`` into ``out``.

    Parameters
    ----------
    labels : (Z, Y, X) integer array
        Class ids; numpy, dask or zarr (read block by block).
    classes : list of int
        Class ids to label; other voxels stay 0 in ``out``.
    out : (Z, Y, X) writable array
        Receives instance ids (1..N, unique over all classes), e.g. a zarr array.
    block : tuple of int
        Block shape; memory is a few times one block.
    progress, cancel : optional
        Progress callback and cancel flag, checked between blocks.

    Returns
    -------
    Instances
        The class of each instance; ``stopped='cancelled'`` when cancelled (``out`` then holds
        only the blocks written so far).
    """
    blocks = block_slices(tuple(labels.shape), block)
    total_steps = 2 * len(blocks) + 1
    counts = np.zeros((len(blocks), len(classes)), dtype=np.int64)
    for k, region in enumerate(blocks):
        if is_cancelled(cancel):
            return Instances(np.zeros(1, np.int64), "cancelled")
        counts[k] = label_block(np.asarray(labels[region]), classes)[1]
        report(progress, ProgressEvent(k + 1, total_steps, "labelling blocks"))
    offsets = np.concatenate([[0], np.cumsum(counts.ravel())])[:-1].reshape(counts.shape)
    fragment_class = np.concatenate(
        [[-1], np.repeat(np.tile(classes, len(blocks)), counts.ravel())]
    )
    report(progress, ProgressEvent(len(blocks), total_steps, "merging labels across blocks"))
    instance_of = _merge_fragments(labels, classes, block, offsets, fragment_class)
    if is_cancelled(cancel):
        return Instances(np.zeros(1, np.int64), "cancelled")
    n_instances = int(instance_of.max()) if len(instance_of) else 0
    instance_class = np.full(n_instances + 1, -1, dtype=np.int64)
    instance_class[instance_of] = fragment_class
    dtype = np.dtype(out.dtype)
    for k, region in enumerate(blocks):
        if is_cancelled(cancel):
            return Instances(instance_class, "cancelled")
        fragments = _global_fragments(np.asarray(labels[region]), classes, offsets[k])
        out[region] = instance_of[fragments].astype(dtype)
        report(progress, ProgressEvent(len(blocks) + 1 + k + 1, total_steps, "writing instances"))
    return Instances(instance_class)


def _global_fragments(block: np.ndarray, classes: list[int], offsets: np.ndarray) -> np.ndarray:
    """Fragments of one block numbered globally (block offsets added per class)."""
    local, counts = label_block(block, classes)
    shift = np.zeros(sum(counts) + 1, dtype=np.int64)
    base = 0
    for offset, n in zip(offsets, counts):
        shift[base + 1 : base + n + 1] = offset - base
        base += n
    return local + shift[local]


def _merge_fragments(labels, classes, block, offsets, fragment_class) -> np.ndarray:
    """Instance id of every global fragment number (0 stays 0), from dask-image's face graphs.

    dask-image links every pair of non-zero labels that touch across a face, so each class gets
    its own graph (fragments of other classes set to 0); all graphs are computed in one pass.
    """
    import dask
    import dask.array as da
    import scipy.sparse
    from dask_image.ndmeasure._utils import _label

    n_fragments = len(fragment_class) - 1
    if n_fragments == 0:
        return np.zeros(1, dtype=np.int64)
    grid = [len(range(0, n, size)) for n, size in zip(labels.shape, block)]
    source = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=block)
    source = source.rechunk(block)

    def one_class(column):
        def fragments(chunk, block_id=None):
            k = int(np.ravel_multi_index(block_id, grid))
            local, _ = label_block(chunk, [classes[column]])
            return np.where(local > 0, local + offsets[k, column], 0).astype(_label.LABEL_DTYPE)

        numbered = source.map_blocks(fragments, dtype=_label.LABEL_DTYPE)
        return _label.label_adjacency_graph(numbered, None, n_fragments)

    with dask.config.set(scheduler="threads"):
        graphs = dask.compute(*[one_class(column) for column in range(len(classes))])
    matrix = sum(graphs[1:], graphs[0]) if len(graphs) > 1 else graphs[0]
    _, component = scipy.sparse.csgraph.connected_components(matrix, directed=False)
    return component.astype(np.int64)  # fragment 0 (background) is component 0
