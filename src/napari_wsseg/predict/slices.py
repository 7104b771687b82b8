"""Slice-by-slice prediction of a 2D image or a stack with any trained method. Imports no Qt.

Every method predicts one 2D slice at a time (:meth:`Method.predict_proba_slice`); this module
runs it over the chosen slices of an :class:`~napari_wsseg.io.image.Image` and writes labels into
any array-like output (a numpy array, or a zarr array for outputs larger than memory).
"""

from __future__ import annotations

import re
import threading

import numpy as np

from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report
from ..errors import WssegError
from ..io.image import Image


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
        proba = model.predict_proba_slice(image.slice(z))
        out[z] = np.argmax(proba, axis=0).astype(out.dtype)
        if probabilities_out is not None:
            probabilities_out[z] = np.clip(np.round(proba * 255), 0, 255).astype(np.uint8)
        report(progress, ProgressEvent(done + 1, len(zs), f"slice {z}"))
    return out
