"""Slice-by-slice prediction of a 2D image or a stack with any trained method. Imports no Qt.

This module runs a method over the chosen slices of an :class:`~napari_wsseg.io.image.Image` and
writes labels into any array-like output (a numpy array, or a zarr array for outputs larger than
memory). A 2D method predicts each slice on its own (:meth:`Method.predict_proba_slice`); a
method with ``halo_z > 0`` gets its ``halo_z`` neighbouring slices with each
(:func:`predict_slice_proba`), so ``wsseg predict --slices`` equals the same slices of a
whole-volume prediction.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from ..errors import WssegError
from ..io.image import Image
from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report


def parse_slices(text: str | None, n_slices: int, *, source: str = "--slices") -> list[int] | None:
    """Parse ``"3,5,7"`` or ``"0-12"`` (inclusive) into sorted slice indices; None stays None.

    Every number is checked against ``n_slices`` before a range is expanded, so the result never
    holds more than ``n_slices`` indices whatever the text asks for.

    Raises
    ------
    WssegError
        For a part that is not a number or ``A-B`` range, a backwards range, or a slice outside
        ``0..n_slices-1``. The message quotes at most :data:`QUOTE_CHARS` characters of the text.

    Examples
    --------
    >>> parse_slices("3,5-7", 10)
    [3, 5, 6, 7]
    >>> parse_slices("7-5", 10)
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.WssegError: --slices: range '7-5' runs backwards; write it as 5-7
    """
    if text is None or str(text).strip() == "":
        return None
    result: set[int] = set()
    for part in _comma_parts(str(text)):
        match = _SLICE_PART.fullmatch(part.strip())
        if match is None:
            raise WssegError(
                f"{source}: {_quote(part.strip())} is not a slice number or range; "
                "write e.g. 3,5,7 or 0-12"
            )
        lo_text, hi_text = match.group(1), match.group(2) or match.group(1)
        lo, hi = (_slice_index(t, n_slices, source) for t in (lo_text, hi_text))
        if hi < lo:
            raise WssegError(
                f"{source}: range {_quote(part.strip())} runs backwards; write it as {hi}-{lo}"
            )
        result.update(range(lo, hi + 1))
    return sorted(result)


#: At most this many characters of a user's text are quoted back in an error message.
QUOTE_CHARS = 40
_SLICE_PART = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")


def _comma_parts(text: str):
    """The comma-separated parts of ``text``, one at a time (a huge text is never split at once)."""
    start = 0
    while (end := text.find(",", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _slice_index(digits: str, n_slices: int, source: str) -> int:
    index = int(digits) if len(digits) <= 18 else n_slices  # longer: out of range anyway
    if index >= n_slices:
        raise WssegError(
            f"{source}: slice {_quote(digits, bare=True)} is outside the image's "
            f"0..{n_slices - 1}; pick slices inside it"
        )
    return index


def _quote(text: str, *, bare: bool = False) -> str:
    """``text`` in quotes, shortened to :data:`QUOTE_CHARS` characters."""
    short = text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."
    return short if bare else f"'{short}'"


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
        proba = predict_slice_proba(model, image, z)
        out[z] = np.argmax(proba, axis=0).astype(out.dtype)
        if probabilities_out is not None:
            probabilities_out[z] = np.clip(np.round(proba * 255), 0, 255).astype(np.uint8)
        report(progress, ProgressEvent(done + 1, len(zs), f"slice {z}"))
    return out


def predict_slice_proba(model, image: Image, z: int, region_yx=None) -> np.ndarray:
    """Class probabilities ``(C, Y, X)`` float32 of slice ``z`` (or a ``(y, x)`` window of it).

    A method with ``halo_z == 0`` and no window gets the slice alone
    (:meth:`~napari_wsseg.methods.base.Method.predict_proba_slice`); otherwise the slice goes
    with ``halo_z`` neighbouring slices and ``halo`` pixels around the window
    (:func:`~napari_wsseg.predict.blocks.predict_proba_region`), as in block-wise prediction.

    Parameters
    ----------
    model : Method
        A trained method.
    image : Image
    z : int
        The slice.
    region_yx : (slice, slice) or None, default None
        A window of the slice in ``(y, x)`` pixels; None: the whole slice.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> from napari_wsseg.io.image import as_image
    >>> image = as_image(np.random.default_rng(0).random((3, 16, 16)).astype(np.float32))
    >>> model = RandomForestMethod(n_estimators=4)
    >>> _ = model.fit(image, Annotations(default_classes(2), points=[[1, 2, 2, 0], [1, 9, 9, 1]]))
    >>> predict_slice_proba(model, image, 2, (slice(0, 4), slice(3, 8))).shape
    (2, 4, 5)
    """
    from .blocks import model_halo_z, predict_proba_region

    if region_yx is None and model_halo_z(model) == 0:
        return np.asarray(model.predict_proba_slice(image.slice(z)), dtype=np.float32)
    _, height, width = image.shape
    ys, xs = region_yx if region_yx is not None else (slice(0, height), slice(0, width))
    return predict_proba_region(model, image, (slice(int(z), int(z) + 1), ys, xs))[:, 0]
