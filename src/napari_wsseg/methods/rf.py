"""The ``rf`` baseline: multiscale filter features + a random forest on the labelled pixels. No Qt.

This is the ilastik / napari-convpaint "classic" pixel classifier every deep method must beat.
Per 2D slice, scikit-image's :func:`~skimage.feature.multiscale_basic_features` computes
intensity, edge (Sobel of Gaussian) and texture (Hessian eigenvalues) features at scales from
``sigma_min`` to ``sigma_max``; a scikit-learn random forest is trained on the pixels whose class
is known (clicked points and mask pixels) and predicts every pixel.

The forest is saved as safetensors + JSON, never pickled: every tree's node table (children,
feature, threshold, ...) and leaf values become plain arrays, and loading rebuilds scikit-learn's
own tree objects from them (:func:`forest_to_tensors`, :func:`forest_from_tensors`). Out-of-range
node indices in a crafted file could crash scikit-learn's ``predict``, so every tree is checked
before the model is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..annotations.model import Annotations
from ..engine.progress import Budget, ProgressEvent, report
from ..errors import ModelError, WssegError
from ..io.image import Image
from .base import FitOptions, FitResult, Method

WEIGHTS_FILE = "model.safetensors"
#: What older releases wrote (skops); such folders are refused with a clear message.
_OLD_WEIGHTS_FILE = "model.skops"


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
        from safetensors.numpy import save_file

        tensors, metadata = forest_to_tensors(self.forest)
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata=metadata)

    def _load_weights(self, folder: Path) -> None:
        from safetensors import SafetensorError, safe_open

        path = folder / WEIGHTS_FILE
        if not path.is_file():
            if (folder / _OLD_WEIGHTS_FILE).is_file():
                raise ModelError(
                    f"model folder {folder} was written by an older napari-wsseg ({_OLD_WEIGHTS_FILE}); "
                    "retrain the rf model (it takes seconds)"
                )
            raise ModelError(f"model folder {folder}: {WEIGHTS_FILE} is missing; retrain the rf model")
        try:
            with safe_open(str(path), framework="numpy") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"model file {path} is not a valid safetensors file ({exc}); retrain") from None
        self.forest = forest_from_tensors(tensors, metadata, path)


def forest_to_tensors(forest) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A fitted ``RandomForestClassifier`` as named arrays + string metadata (for safetensors).

    Tree ``i`` becomes ``tree{i}.<node field>`` arrays (one per field of scikit-learn's node table)
    and ``tree{i}.values``; the metadata holds the classes, feature count and each tree's depth.
    """
    tensors = {"classes": np.asarray(forest.classes_, dtype=np.int64)}
    depths = []
    for i, estimator in enumerate(forest.estimators_):
        state = estimator.tree_.__getstate__()
        nodes = state["nodes"]
        for name in nodes.dtype.names:
            tensors[f"tree{i}.{name}"] = np.ascontiguousarray(nodes[name])
        tensors[f"tree{i}.values"] = np.ascontiguousarray(state["values"])
        depths.append(int(state["max_depth"]))
    metadata = {"format": "napari-wsseg random forest 1", "n_trees": str(len(depths)),
                "n_features": str(int(forest.n_features_in_)), "max_depths": json.dumps(depths)}
    return tensors, metadata


def forest_from_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Path):
    """Rebuild the ``RandomForestClassifier`` :func:`forest_to_tensors` stored, after checking it."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    try:
        n_trees, n_features = int(metadata["n_trees"]), int(metadata["n_features"])
        depths = json.loads(metadata["max_depths"])
        classes = tensors["classes"]
    except (KeyError, ValueError) as exc:
        raise ModelError(f"model file {path} lacks the forest description ({exc}); retrain") from None
    n_classes = len(classes)
    node_dtype = _node_dtype()
    estimators = []
    for i in range(n_trees):
        values = tensors.get(f"tree{i}.values")
        fields = {name: tensors.get(f"tree{i}.{name}") for name in node_dtype.names}
        missing = [name for name, array in fields.items() if array is None] + ([] if values is not None else ["values"])
        if missing:
            raise ModelError(
                f"model file {path}: tree {i} lacks {missing} (written by another scikit-learn "
                "version?); retrain the rf model"
            )
        nodes = np.zeros(len(values), dtype=node_dtype)
        for name, array in fields.items():
            nodes[name] = array
        _check_tree(nodes, values, n_features, n_classes, path)
        tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": depths[i], "node_count": len(nodes), "nodes": nodes,
                           "values": np.ascontiguousarray(values, dtype=np.float64)})
        estimators.append(_fitted(DecisionTreeClassifier(), tree, classes, n_features))
    forest = RandomForestClassifier(n_estimators=n_trees, n_jobs=-1)
    forest.estimators_ = estimators
    forest.estimator_ = DecisionTreeClassifier()
    return _fitted(forest, None, classes, n_features)


def _fitted(estimator, tree, classes: np.ndarray, n_features: int):
    """Set the fitted attributes scikit-learn's ``predict_proba`` reads."""
    estimator.classes_ = classes
    estimator.n_classes_ = len(classes)
    estimator.n_outputs_ = 1
    estimator.n_features_in_ = n_features
    if tree is not None:
        estimator.tree_ = tree
        estimator.max_features_ = n_features
    return estimator


def _node_dtype() -> np.dtype:
    """The node table dtype of the installed scikit-learn (its field names and layout)."""
    from sklearn.tree._tree import Tree

    return Tree(1, np.array([1], dtype=np.intp), 1).__getstate__()["nodes"].dtype


def _check_tree(nodes: np.ndarray, values: np.ndarray, n_features: int, n_classes: int,
                path: Path) -> None:
    """Refuse node tables that point outside their own storage (crafted or corrupt files)."""
    n_nodes = len(nodes)
    children = np.concatenate([nodes["left_child"], nodes["right_child"]])
    leaves = nodes["left_child"] == -1
    bad_children = np.any((children < -1) | (children >= n_nodes))
    bad_features = np.any((nodes["feature"][~leaves] < 0) | (nodes["feature"][~leaves] >= n_features))
    if n_nodes == 0 or bad_children or bad_features or values.shape != (n_nodes, 1, n_classes):
        raise ModelError(f"model file {path} has a corrupt tree (node indices out of range); retrain")


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
