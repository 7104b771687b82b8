"""Slice-by-slice prediction of a 2D image or a stack with any trained method. Imports no Qt.

Every method predicts one 2D slice at a time (:meth:`Method.predict_proba_slice`); this module
runs it over the chosen slices of an :class:`~napari_wsseg.io.image.Image` and writes labels into
any array-like output (a numpy array, or a zarr array for outputs larger than memory).
"""

from __future__ import annotations

import threading

import numpy as np

from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report
from ..errors import WssegError
from ..io.image import Image


def parse_slices(text: str | None, n_slices: int, *, source: str = "--slices") -> list[int] | None:
    """Parse ``"3,5,7"`` or ``"0-12"`` (inclusive) into sorted slice indices; None stays None.

    Examples
    --------
    >>> parse_slices("3,5-7", 10)
    [3, 5, 6, 7]
    """
    if text is None or str(text).strip() == "":
        return None
    result: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                result.update(range(int(lo), int(hi) + 1))
            else:
                result.add(int(part))
        except ValueError:
            raise WssegError(f"{source}: '{part}' is not a slice number or range; write e.g. 3,5,7 or 0-12") from None
    bad = sorted(z for z in result if not 0 <= z < n_slices)
    if bad:
        raise WssegError(f"{source}: slice(s) {bad} outside the image's 0..{n_slices - 1}; pick slices inside it")
    return sorted(result)


def predict_image(
    model,
    image: Image,
    *,
    slices: list[int] | None = None,
    out=None,
    probabilities_out=None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Predict labels for ``image`` slice by slice.

    Parameters
    ----------
    model : Method
        A trained method.
    image : Image
        The image; its slices are read one at a time.
    slices : list of int, optional
        Only these slices are predicted; the others stay 0. By default all slices.
    out : (Z, Y, X) array-like, optional
        Where to write labels (numpy or zarr). By default a new uint8 numpy array.
    probabilities_out : (Z, C, Y, X) array-like, optional
        Where to write class probabilities as uint8 (0..255), if given.
    progress, cancel
        Progress callback and cancel flag; a cancelled run returns what it has written so far.

    Returns
    -------
    (Z, Y, X) array
        ``out`` (filled for the predicted slices).
    """
    model.check_image(image)
    zs = list(range(image.n_slices)) if slices is None else list(slices)
    if out is None:
        out = np.zeros(image.shape, dtype=np.uint8)
    for done, z in enumerate(zs):
        if is_cancelled(cancel):
            break
        proba = model.predict_proba_slice(image.slice(z))
        out[z] = np.argmax(proba, axis=0).astype(out.dtype)
        if probabilities_out is not None:
            probabilities_out[z] = np.clip(np.round(proba * 255), 0, 255).astype(np.uint8)
        report(progress, ProgressEvent(done + 1, len(zs), f"slice {z}"))
    return out
