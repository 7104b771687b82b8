"""The ``rf`` baseline: multiscale filter features + a random forest on the labelled pixels. No Qt.

This is the ilastik / napari-convpaint "classic" pixel classifier every deep method must beat.
Per 2D slice, scikit-image's :func:`~skimage.feature.multiscale_basic_features` computes
intensity, edge (Sobel of Gaussian) and texture (Hessian eigenvalues) features at scales from
``sigma_min`` to ``sigma_max``; a scikit-learn random forest is trained on the pixels whose class
is known (clicked points and mask pixels) and predicts every pixel.

The forest is saved with skops (no pickle). skops marks scikit-learn's tree storage as untrusted
because out-of-range node indices in a crafted file could crash ``predict``; we allow exactly that
one type and then check every tree's node arrays are in range before the model is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.model import Annotations
from ..engine.progress import Budget, ProgressEvent, report
from ..errors import ModelError, WssegError
from ..io.image import Image
from .base import FitOptions, FitResult, Method

WEIGHTS_FILE = "model.skops"
_TRUSTED_SKOPS_TYPES = ["sklearn.tree._tree.Tree"]


@dataclass(frozen=True)
class RFConfig:
    """Options of the random-forest baseline.

    Attributes
    ----------
    n_estimators : int, default 100
        Trees in the forest.
    max_depth : int or None, default None
        Depth limit of each tree; None grows trees until leaves are pure.
    sigma_min, sigma_max : float, default 0.7 and 16.0
        Smallest and largest Gaussian scale (pixels) of the filter bank.
    num_sigma : int or None, default None
        Number of scales; None means one per octave between ``sigma_min`` and ``sigma_max``.
    max_samples_per_class : int, default 20000
        Labelled pixels used per class (a random subset of dense masks keeps training fast).
    """

    n_estimators: int = 100
    max_depth: int | None = None
    sigma_min: float = 0.7
    sigma_max: float = 16.0
    num_sigma: int | None = None
    max_samples_per_class: int = 20000


class RandomForestMethod(Method):
    """Random forest on multiscale filter features (the classic baseline)."""

    name = "rf"
    config_class = RFConfig

    @property
    def halo(self) -> int:  # type: ignore[override]
        # Gaussian radius at the largest scale (truncate=4) plus the 2 pixels of the Hessian's
        # two gradient passes: with this much context block-wise features equal whole-slice ones.
        return int(np.ceil(4 * self.config.sigma_max)) + 2

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self.forest = None

    # ---------------------------------------------------------------- features
    def features(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Filter features ``(Y, X, F)`` float32 of one raw ``(Y, X, C)`` slice."""
        from skimage.feature import multiscale_basic_features

        normalized = self.normalization.apply(slice_yxc)
        feats = multiscale_basic_features(
            normalized,
            sigma_min=self.config.sigma_min,
            sigma_max=self.config.sigma_max,
            num_sigma=self.config.num_sigma,
            channel_axis=-1,
        )
        return feats.astype(np.float32, copy=False)

    # ---------------------------------------------------------------- training
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        from sklearn.ensemble import RandomForestClassifier

        rng = np.random.default_rng(options.seed)
        slices = _slices_with_pixel_labels(annotations)
        if not slices:
            raise WssegError(
                "the rf method learns from labelled pixels: give points or a mask "
                "(boxes, tags and sizes alone are not enough for rf)"
            )
        budget = Budget(options.time_budget_s, total_steps=len(slices) + 1, cancel=options.cancel)
        xs, ys = [], []
        for done, z in enumerate(slices):
            if budget.should_stop():
                return FitResult(stopped=budget.stop_reason(), steps=done, seconds=budget.elapsed)
            coords, classes = _labelled_pixels(annotations, z)
            feats = self.features(image.slice(z))
            xs.append(feats[coords[:, 0], coords[:, 1]])
            ys.append(classes)
            report(options.progress, ProgressEvent(done + 1, budget.total_steps, f"features of slice {z}",
                                                   eta_s=budget.eta(done + 1)))
        x, y = _balance(np.concatenate(xs), np.concatenate(ys), self.config.max_samples_per_class, rng)
        self.forest = RandomForestClassifier(
            n_estimators=self.config.n_estimators,
            max_depth=self.config.max_depth,
            n_jobs=-1,
            random_state=options.seed,
        ).fit(x, y)
        report(options.progress, ProgressEvent(budget.total_steps, budget.total_steps, "forest trained"))
        return FitResult(stopped="done", steps=budget.total_steps, seconds=budget.elapsed)

    # -------------------------------------------------------------- prediction
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        if self.forest is None:
            raise ModelError("rf model is not trained; call fit() or load a model folder")
        feats = self.features(slice_yxc)
        height, width, n_features = feats.shape
        known = self.forest.predict_proba(feats.reshape(-1, n_features))
        # Classes never labelled in training get probability 0.
        proba = np.zeros((height * width, len(self.classes)), dtype=np.float32)
        proba[:, self.forest.classes_.astype(int)] = known
        return proba.T.reshape(len(self.classes), height, width)

    # ------------------------------------------------------------- persistence
    def _save_weights(self, folder: Path) -> None:
        import skops.io as sio

        sio.dump(self.forest, folder / WEIGHTS_FILE)

    def _load_weights(self, folder: Path) -> None:
        import skops.io as sio

        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(f"model folder {folder}: {WEIGHTS_FILE} is missing; retrain the rf model")
        untrusted = set(sio.get_untrusted_types(file=path)) - set(_TRUSTED_SKOPS_TYPES)
        if untrusted:
            raise ModelError(
                f"model file {path} contains unexpected types {sorted(untrusted)}; refusing to load it "
                "(retrain the model with napari-wsseg)"
            )
        forest = sio.load(path, trusted=_TRUSTED_SKOPS_TYPES)
        _check_forest(forest, path)
        self.forest = forest


def _slices_with_pixel_labels(annotations: Annotations) -> list[int]:
    zs = set(annotations.points[:, 0].tolist())
    if annotations.masks is not None:
        flat = np.asarray(annotations.masks).reshape(len(annotations.masks), -1)
        zs.update(np.flatnonzero(flat.max(axis=1) > 0).tolist())
    return sorted(zs)


def _labelled_pixels(annotations: Annotations, z: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) yx coordinates and (N,) classes of the points and mask pixels in slice z."""
    points = annotations.points[annotations.points[:, 0] == z]
    coords = [points[:, 1:3]]
    classes = [points[:, 3]]
    if annotations.masks is not None and z < len(annotations.masks):
        mask = np.asarray(annotations.masks[z])
        ys, xs = np.nonzero(mask)
        coords.append(np.stack([ys, xs], axis=1))
        classes.append(mask[ys, xs].astype(np.int64) - 1)
    return np.concatenate(coords).astype(np.int64), np.concatenate(classes).astype(np.int64)


def _balance(x: np.ndarray, y: np.ndarray, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``per_class`` random samples of each class."""
    keep = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        if len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        keep.append(idx)
    keep = np.concatenate(keep)
    return x[keep], y[keep]


def _check_forest(forest, path: Path) -> None:
    """Refuse forests whose node arrays point outside their own storage (crafted files)."""
    from sklearn.ensemble import RandomForestClassifier

    if not isinstance(forest, RandomForestClassifier):
        raise ModelError(f"model file {path} holds a {type(forest).__name__}, not a random forest; retrain")
    n_features = int(forest.n_features_in_)
    for estimator in forest.estimators_:
        tree = estimator.tree_
        n_nodes = tree.node_count
        children = np.concatenate([tree.children_left, tree.children_right])
        leaves = tree.children_left == -1
        bad_children = np.any((children < -1) | (children >= n_nodes))
        bad_features = np.any((tree.feature[~leaves] < 0) | (tree.feature[~leaves] >= n_features))
        if bad_children or bad_features or tree.value.shape[0] != n_nodes:
            raise ModelError(f"model file {path} has a corrupt tree (node indices out of range); retrain")
