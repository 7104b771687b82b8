"""Annotate here next: rank grid cells of an image by how much a label there is expected to help.

From a trained model's class probabilities on the chosen slices, every pixel gets a score

    score(p) = uncertainty(p) * rarity(p)

``uncertainty`` is the entropy of the probabilities divided by log(C) (or, with
``measure="margin"``, one minus the gap between the two largest; with ``measure="disagreement"``,
the Jensen-Shannon divergence between the model's two networks divided by log 2, for models that
keep a second one, such as dsp's student beside its EMA teacher), all from 0 (sure) to 1;
``rarity`` is the expected per-class weight ``sum_c p_c w_c / max_c w_c`` with
``w_c = ((1 + mean n) / (1 + n_c)) ** rarity_power``, where ``n_c`` counts the labels class c
already has (points, boxes and mask pixels /
:data:`~napari_wsseg.annotations.model.MASK_PIXELS_PER_LABEL`), so pixels likely to belong to
classes with few labels rank higher. Each grid cell (``cell`` x ``cell`` pixels) is scored by the
mean pixel score and proposes its highest-scoring pixel that is not labelled yet; with
``pick_sigma`` > 0 the pixel is the maximum of the scores smoothed by a Gaussian of that many
pixels, the middle of a patch of uncertain pixels rather than the single most uncertain pixel,
which usually lies on an object's outline, where the true class is ambiguous and a click teaches
little. Cells are then taken best first, at most ``per_slice`` per slice and none closer than
``min_distance`` pixels to one already taken in the same slice, until ``n`` are found: suggestions
are spread out, not ten in one spot.

The result is deterministic: equal scores are ordered by a permutation drawn from ``seed``.
Imports no Qt; a widget runs :func:`suggest` in a worker and shows the result.
"""

from __future__ import annotations

import csv
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import entr

from ..annotations.model import labels_per_class
from ..errors import WssegError
from ..io.image import Image
from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report
from .slices import predict_slice_proba

if TYPE_CHECKING:
    from ..annotations.model import Annotations
    from ..methods.base import Method

MEASURES = ("entropy", "margin", "disagreement")
CSV_HEADER = ("z", "y", "x", "score", "y0", "x0", "y1", "x1")


@dataclass(frozen=True)
class SuggestConfig:
    """Options of :func:`suggest`.

    Attributes
    ----------
    n : int, default 20
        Suggestions to return at most.
    cell : int, default 64
        Side of the grid cells in pixels; each cell yields at most one suggestion.
    per_slice : int, default 5
        Suggestions per slice at most.
    min_distance : float or None, default None
        Smallest distance in pixels between two suggestions of one slice; None means ``cell``.
    measure : str, default "entropy"
        Uncertainty measure: "entropy", "margin" or "disagreement" (between the model's two
        networks; only for models with a second opinion, see
        :attr:`~napari_wsseg.methods.base.Method.has_second_opinion`).
    rarity_power : float, default 1.0
        How strongly classes with few labels are preferred; 0 turns the weighting off.
    pick_sigma : float, default 6.0
        Gaussian sigma in pixels of the scores the suggested pixel of a cell is picked from
        (0: the cell's most uncertain pixel). Cells are ranked by their unsmoothed mean either way.
        6 was chosen over 0 on the validation slices of both real datasets
        (``benchmarks/interactive_loop.py suggest``, rf; docs/benchmarks.md).
    seed : int, default 0
        Seeds the order of cells with equal scores.
    """

    n: int = 20
    cell: int = 64
    per_slice: int = 5
    min_distance: float | None = None
    measure: str = "entropy"
    rarity_power: float = 1.0
    pick_sigma: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("n", 1), ("cell", 2), ("per_slice", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise WssegError(f"suggest option {name}={value!r} must be an integer >= {low}")
        if self.measure not in MEASURES:
            raise WssegError(
                f"suggest measure {self.measure!r} is unknown; use one of {', '.join(MEASURES)}"
            )
        for name in ("min_distance", "rarity_power", "pick_sigma"):
            value = getattr(self, name)
            if value is None and name == "min_distance":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < 1e6
            ):
                raise WssegError(f"suggest option {name}={value!r} must be a number from 0 to 1e6")

    @property
    def distance(self) -> float:
        """The minimum distance in pixels (``min_distance``, or ``cell`` when None)."""
        return float(self.cell if self.min_distance is None else self.min_distance)


@dataclass(frozen=True)
class Suggestion:
    """One place to annotate next: the pixel ``(z, y, x)``, its cell's score and the cell
    ``[y0, y1) x [x0, x1)``."""

    z: int
    y: int
    x: int
    score: float
    y0: int
    x0: int
    y1: int
    x1: int

    def as_row(self) -> tuple:
        return (self.z, self.y, self.x, round(self.score, 6), self.y0, self.x0, self.y1, self.x1)


def uncertainty(
    proba: np.ndarray, measure: str = "entropy", second: np.ndarray | None = None
) -> np.ndarray:
    """Per-pixel uncertainty from 0 (sure) to 1 of ``(C, Y, X)`` probabilities; ``second``: the
    model's second opinion, which the "disagreement" measure compares them with.

    Examples
    --------
    >>> p = np.array([[[1.0, 0.5]], [[0.0, 0.5]]])
    >>> uncertainty(p).round(3).tolist(), uncertainty(p, "margin").round(3).tolist()
    ([[0.0, 1.0]], [[0.0, 1.0]])
    >>> uncertainty(p, "disagreement", p[::-1]).round(3).tolist()  # opposite sure vs both unsure
    [[1.0, 0.0]]
    """
    proba = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    n_classes = proba.shape[0]
    if n_classes < 2:
        return np.zeros(proba.shape[1:])
    if measure == "margin":
        top = np.sort(proba, axis=0)
        return 1.0 - (top[-1] - top[-2])
    if measure == "disagreement":
        if second is None or np.shape(second) != proba.shape:
            raise WssegError(
                f"the disagreement measure needs a second opinion of shape {proba.shape}, got "
                f"{None if second is None else np.shape(second)}"
            )
        second = np.clip(np.asarray(second, dtype=np.float64), 0.0, 1.0)
        middle = (proba + second) / 2
        js = _entropy(middle) - (_entropy(proba) + _entropy(second)) / 2
        return np.clip(js / math.log(2) + 0.0, 0.0, 1.0)
    return np.clip(_entropy(proba) / math.log(n_classes) + 0.0, 0.0, 1.0)  # + 0.0: no -0.0


def _entropy(proba: np.ndarray) -> np.ndarray:
    return entr(proba).sum(axis=0)


def class_weights(label_counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-class weights from 0 to 1 favouring classes with few labels (the rarest gets 1).

    Examples
    --------
    >>> class_weights(np.array([30, 0, 10])).round(3).tolist()
    [0.032, 1.0, 0.091]
    >>> class_weights(np.array([30, 0, 10]), power=0).tolist()
    [1.0, 1.0, 1.0]
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    weights = ((1.0 + counts.mean()) / (1.0 + counts)) ** power
    return weights / weights.max()


def suggest(
    model: "Method",
    image: Image,
    *,
    annotations: "Annotations | None" = None,
    slices: list[int] | None = None,
    config: SuggestConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> list[Suggestion]:
    """Where to annotate next: up to ``config.n`` suggestions, best first.

    Parameters
    ----------
    model : Method
        A trained model for ``image``.
    image : Image
        The image (one prediction per scored slice).
    annotations : Annotations or None, default None
        The current annotations: their per-class counts weight the classes and their labelled
        pixels are never suggested. By default the counts the model was trained on
        (``model.training_summary``) are used, and no pixel is excluded.
    slices : list of int or None, default None
        Slices to look in; None means every slice.
    config : SuggestConfig or None
        Options; by default ``SuggestConfig()``.
    progress : callable or None
        Receives a :class:`~napari_wsseg.progress.ProgressEvent` after each slice.
    cancel : threading.Event or None
        Checked before each slice; when set, the slices scored so far are ranked and returned.

    Returns
    -------
    list of Suggestion
        Sorted by score, highest first.

    Raises
    ------
    WssegError
        When the model does not fit the image, a slice is out of range, or the annotations'
        classes differ from the model's.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> class Half:  # a stand-in model: sure on the left half, unsure on the right
    ...     classes, training_summary, halo_z = ["a", "b"], {}, 0
    ...     def check_image(self, image): pass
    ...     def predict_proba_slice(self, s):
    ...         p = np.ones((2,) + s.shape[:2]); p[0, :, :8], p[1, :, :8] = 1, 0
    ...         return p / p.sum(0)
    >>> config = SuggestConfig(n=2, cell=8, pick_sigma=0)  # 0: the most uncertain pixel
    >>> found = suggest(Half(), as_image(np.zeros((16, 16))), config=config)
    >>> sorted((s.y, s.x, s.score, s.x0) for s in found)  # the two right-hand cells
    [(0, 8, 1.0, 8), (8, 8, 1.0, 8)]
    """
    config = config or SuggestConfig()
    model.check_image(image)
    disagreement = config.measure == "disagreement"
    if disagreement and not getattr(model, "has_second_opinion", False):
        raise WssegError(
            f"the {getattr(model, 'name', 'given')} model keeps a single network, so it cannot "
            "rank by disagreement; use the entropy or margin measure, or a dsp model trained "
            "with its mean teacher"
        )
    zs = _check_slices(slices, image.n_slices)
    weights = class_weights(_counts_for(model, annotations), config.rarity_power)
    labelled = _labelled_masks(annotations, image.shape) if annotations is not None else {}
    order_key = np.random.default_rng(config.seed)
    candidates: list[tuple[float, float, Suggestion]] = []
    for done, z in enumerate(zs):
        if is_cancelled(cancel):
            break
        proba = np.asarray(predict_slice_proba(model, image, z), dtype=np.float64)
        second = model.second_opinion_slice(image.slice(z)) if disagreement else None
        scores = pixel_scores(proba, weights, config.measure, second)
        picks = _smoothed(scores, config.pick_sigma)
        if z in labelled:
            scores[labelled[z]] = -1.0  # never suggest a pixel that already has a label
            if picks is not None:
                picks[labelled[z]] = -1.0
        for suggestion in _cell_candidates(z, scores, config.cell, picks):
            candidates.append((-suggestion.score, float(order_key.random()), suggestion))
        report(progress, ProgressEvent(done + 1, len(zs), f"suggest: scored slice {z}"))
    candidates.sort(key=lambda item: (item[0], item[1]))
    return _spread([c[2] for c in candidates], config)


def pixel_scores(
    proba: np.ndarray,
    weights: np.ndarray,
    measure: str = "entropy",
    second: np.ndarray | None = None,
) -> np.ndarray:
    """``uncertainty * rarity`` of each pixel of ``(C, Y, X)`` probabilities (see the module);
    ``second``: the model's second opinion, for the "disagreement" measure."""
    if len(weights) != proba.shape[0]:
        raise WssegError(
            f"the model gives {proba.shape[0]} class probabilities but {len(weights)} class "
            "weights were given; use annotations with the model's classes"
        )
    rarity = np.tensordot(weights, proba, axes=1)
    return uncertainty(proba, measure, second) * rarity


def _smoothed(scores: np.ndarray, sigma: float) -> np.ndarray | None:
    """``scores`` smoothed by a Gaussian of ``sigma`` pixels; None for 0 (pick from the scores)."""
    if sigma <= 0:
        return None
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(scores, sigma, mode="nearest")


def _cell_candidates(
    z: int, scores: np.ndarray, cell: int, picks: np.ndarray | None = None
) -> list[Suggestion]:
    """One suggestion per grid cell holding an unlabelled pixel: the cell's maximum of ``picks``
    (default: of ``scores``), scored by the cell's mean of ``scores``.

    Labelled pixels carry a negative score in both; the image is padded to whole cells with such
    pixels.
    """
    height, width = scores.shape
    ny, nx = -(-height // cell), -(-width // cell)

    def cells(values: np.ndarray) -> np.ndarray:
        padded = np.full((ny * cell, nx * cell), -1.0)
        padded[:height, :width] = values
        return padded.reshape(ny, cell, nx, cell).transpose(0, 2, 1, 3).reshape(ny, nx, -1)

    blocks = cells(scores)
    free = blocks >= 0
    counts = free.sum(axis=2)
    means = np.where(free, blocks, 0.0).sum(axis=2) / np.maximum(counts, 1)
    best = (blocks if picks is None else cells(picks)).argmax(axis=2)
    found = []
    for iy, ix in zip(*np.nonzero(counts)):
        y0, x0 = int(iy) * cell, int(ix) * cell
        dy, dx = divmod(int(best[iy, ix]), cell)
        found.append(
            Suggestion(
                int(z),
                y0 + dy,
                x0 + dx,
                float(means[iy, ix]),
                y0,
                x0,
                min(y0 + cell, height),
                min(x0 + cell, width),
            )
        )
    return found


def _spread(ranked: list[Suggestion], config: SuggestConfig) -> list[Suggestion]:
    """The best suggestions, at most ``per_slice`` per slice and ``distance`` apart in a slice."""
    taken: dict[int, list[tuple[int, int]]] = {}
    chosen: list[Suggestion] = []
    limit = config.distance**2
    for s in ranked:
        near = taken.setdefault(s.z, [])
        if len(near) >= config.per_slice:
            continue
        if any((s.y - y) ** 2 + (s.x - x) ** 2 < limit for y, x in near):
            continue
        near.append((s.y, s.x))
        chosen.append(s)
        if len(chosen) == config.n:
            break
    return chosen


def _counts_for(model: "Method", annotations: "Annotations | None") -> np.ndarray:
    """Labels per class from ``annotations``, else from the model's training summary, else ones."""
    n_classes = len(model.classes)
    if annotations is not None:
        names = [getattr(c, "name", c) for c in model.classes]
        if list(annotations.class_names) != names:
            raise WssegError(
                f"annotations have classes {annotations.class_names} but the model {names}; "
                "give the annotations the model was trained for"
            )
        return labels_per_class(annotations.counts(), annotations.n_classes)
    summary = model.training_summary if isinstance(model.training_summary, dict) else {}
    return labels_per_class(summary.get("counts", {}), n_classes)


def _labelled_masks(
    annotations: "Annotations", shape: tuple[int, int, int]
) -> dict[int, np.ndarray]:
    """Boolean ``(Y, X)`` masks of the pixels that already carry a point or mask label, by slice."""
    masks: dict[int, np.ndarray] = {}

    def mask(z: int) -> np.ndarray:
        return masks.setdefault(z, np.zeros(shape[1:], dtype=bool))

    for z, y, x, _ in annotations.points:
        if 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]:
            mask(int(z))[y, x] = True
    if annotations.masks is not None:
        labels = np.asarray(annotations.masks)
        for z in np.flatnonzero(np.any(labels.reshape(len(labels), -1) > 0, axis=1)):
            if z < shape[0]:
                mask(int(z))[:] |= labels[z, : shape[1], : shape[2]] > 0
    return masks


def _check_slices(slices: list[int] | None, n_slices: int) -> list[int]:
    if slices is None:
        return list(range(n_slices))
    bad = [z for z in slices if not 0 <= int(z) < n_slices]
    if bad:
        raise WssegError(
            f"slices {bad[:5]} are outside the image's 0..{n_slices - 1}; pick slices inside it"
        )
    return sorted({int(z) for z in slices})


def write_suggestions_csv(path: str | Path, suggestions: list[Suggestion]) -> Path:
    """Write ``z,y,x,score,y0,x0,y1,x1`` rows, in the given (best-first) order.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "suggestions.csv"
    >>> _ = write_suggestions_csv(path, [Suggestion(0, 5, 7, 0.9, 0, 0, 64, 64)])
    >>> path.read_text().splitlines()
    ['z,y,x,score,y0,x0,y1,x1', '0,5,7,0.9,0,0,64,64']
    """
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(s.as_row() for s in suggestions)
    return path
