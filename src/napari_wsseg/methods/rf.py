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

Computing the filter features dominates training time, so training keeps the features of its
slices in memory (:class:`FeatureMemo`, keyed by the slice's bytes, the normalisation and the
filter bank). A warm start (``fit(..., init=previous)``) refits the forest on all annotations
but takes over the previous model's memo, so only slices it has not seen are filtered again.
A model loaded from a folder has no memo: its first warm start computes the features once.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..annotations.model import Annotations
from ..engine.results import FitResult
from ..errors import ModelError, WssegError
from ..io.image import Image
from ..progress import Budget, ProgressEvent, report
from .base import FitOptions, Method, check_config, state_numbers

WEIGHTS_FILE = "model.safetensors"
#: What older releases wrote (skops); such folders are refused with a clear message.
_OLD_WEIGHTS_FILE = "model.skops"


#: Inclusive bounds of the numeric rf options; they also hold for a config.json read at load.
RF_BOUNDS = {
    "n_estimators": (1, 10_000),
    "max_depth": (1, 1000),
    "sigma_min": (0.05, 256.0),
    "sigma_max": (0.05, 256.0),
    "num_sigma": (1, 64),
    "max_samples_per_class": (1, 10_000_000),
}


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
    prior : str, default "training"
        The class prior the forest predicts with. ``"training"``: that of the labelled pixels it
        learnt from (a class clicked more often is predicted more often); ``"balanced"``: every
        class equally likely, however the clicks fall; ``"image"``: the image's, estimated after
        training as the mean predicted probability over pixels of the training slices (one
        step, as dsp's ``prior_correction``). Not a training choice: the forest is the same,
        its probabilities are re-weighted. ``"image"`` gained 2.3 to 11.8 Dice on drosophila_vnc
        and lost 0.8 to 2.8 on cdeep3m_mito (validation, 3 seeds), but with clicks where
        :func:`~napari_wsseg.predict.suggest.suggest` points it fell to about 20 Dice on
        drosophila_vnc, so it is not the default (docs/benchmarks.md, session 9).
    """

    n_estimators: int = 100
    max_depth: int | None = None
    sigma_min: float = 0.7
    sigma_max: float = 16.0
    num_sigma: int | None = None
    max_samples_per_class: int = 20000
    prior: Literal["training", "balanced", "image"] = "training"

    def __post_init__(self) -> None:
        check_config(self, "rf", RF_BOUNDS)
        if self.sigma_min > self.sigma_max:
            raise WssegError(
                f"rf options sigma_min={self.sigma_min} > sigma_max={self.sigma_max}; give "
                "sigma_min <= sigma_max, e.g. --sigma-min 0.7 --sigma-max 16"
            )


class RandomForestMethod(Method):
    """Random forest on multiscale filter features (the classic baseline)."""

    name = "rf"
    config_class = RFConfig
    main_options = ("n_estimators", "sigma_max")
    warm_fit_is_complete = True  # a warm fit reuses filter features and grows a new forest

    @property
    def halo(self) -> int:  # type: ignore[override]
        # Gaussian radius at the largest scale (truncate=4) plus the 2 pixels of the Hessian's
        # two gradient passes: with this much context block-wise features equal whole-slice ones.
        return int(np.ceil(4 * self.config.sigma_max)) + 2

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self.forest = None
        #: Features of the slices trained on; shared with the next model on a warm start.
        self.feature_memo = FeatureMemo()
        #: Trees a prediction uses inside :meth:`draft` (None: all).
        self._draft_trees: int | None = None
        #: log(target prior / training prior) per class, added to the log-probabilities; None:
        #: no re-weighting (the ``"training"`` prior, or a model saved before the option).
        self.log_prior_shift: list[float] | None = None
        #: The priors behind :attr:`log_prior_shift`, kept in the model's state for the reader.
        self.prior_info: dict = {}

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
        if len(annotations.region_tags):
            message = (
                f"rf ignores the {len(annotations.region_tags)} region tag row(s): it learns from "
                "labelled pixels only (points, masks); use dsp or cpews to learn from region tags"
            )
            warnings.warn(message, stacklevel=3)
            self.training_summary.setdefault("warnings", []).append(message)
        if self.warm_init is not None:
            self.feature_memo = self.warm_init.feature_memo
        budget = Budget(options.time_budget_s, total_steps=len(slices) + 1, cancel=options.cancel)
        xs, ys = [], []
        # The "image" prior's pixels: their own generator, so the forest is the same whatever
        # the prior option.
        prior_rng = np.random.default_rng([options.seed or 0, 1])
        prior_sample: list[np.ndarray] = []
        for done, z in enumerate(slices):
            if budget.should_stop():
                return FitResult(stopped=budget.stop_reason(), steps=done, seconds=budget.elapsed)
            coords, classes = _labelled_pixels(annotations, z)
            raw = image.slice(z)
            key = self.feature_memo.key(raw, self.normalization, self.config)
            feats = self.feature_memo.get(key, lambda: self.features(raw))
            xs.append(feats[coords[:, 0], coords[:, 1]])
            if self.config.prior == "image":
                prior_sample.append(_sample_pixels(feats, len(slices), prior_rng))
            ys.append(classes)
            report(
                options.progress,
                ProgressEvent(
                    done + 1,
                    budget.total_steps,
                    f"features of slice {z}",
                    eta_s=budget.eta(done + 1),
                ),
            )
        x, y = _balance(
            np.concatenate(xs), np.concatenate(ys), self.config.max_samples_per_class, rng
        )
        self.forest = RandomForestClassifier(
            n_estimators=self.config.n_estimators,
            max_depth=self.config.max_depth,
            n_jobs=-1,
            random_state=options.seed,
        ).fit(x, y)
        self.log_prior_shift = self._prior_shift(y, prior_sample)
        report(
            options.progress,
            ProgressEvent(budget.total_steps, budget.total_steps, "forest trained"),
        )
        return FitResult(stopped="done", steps=budget.total_steps, seconds=budget.elapsed)

    def _prior_shift(self, y: np.ndarray, pixel_features: list[np.ndarray]) -> list[float] | None:
        """log(target prior / training prior) per class for the ``prior`` option; None for
        ``"training"``. The training prior is the class frequency of the pixels the forest learnt
        from; classes never labelled get 0 (the forest gives them probability 0 anyway)."""
        if self.config.prior == "training":
            self.prior_info = {}
            return None
        known = self.forest.classes_.astype(int)
        counts = np.bincount(y, minlength=len(self.classes))[known].astype(np.float64)
        train_prior = counts / counts.sum()
        if self.config.prior == "balanced":
            target = np.full(len(known), 1.0 / len(known))
        else:
            target = forest_proba(self.forest, np.concatenate(pixel_features)).mean(axis=0)
        self.prior_info = {
            "train_prior": np.round(train_prior, 4).tolist(),
            f"{self.config.prior}_prior": np.round(target, 4).tolist(),
        }
        shift = np.zeros(len(self.classes))
        shift[known] = np.log(np.maximum(target, 1e-6) / train_prior)
        return shift.tolist()

    def warm_up(self, image: Image, annotations: Annotations) -> None:
        """Filter features of the slices with labelled pixels into the feature memo, with this
        model's normalisation (the one a warm start from it keeps)."""
        if self.normalization is None:
            return
        for z in _slices_with_pixel_labels(annotations):
            raw = image.slice(int(z))
            key = self.feature_memo.key(raw, self.normalization, self.config)
            self.feature_memo.get(key, lambda: self.features(raw))

    # -------------------------------------------------------------- prediction
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        if self.forest is None:
            raise ModelError("rf model is not trained; call fit() or load a model folder")
        memo = self.feature_memo
        feats = memo.peek(memo.key(slice_yxc, self.normalization, self.config))
        if feats is None:  # not a training slice: computed, not kept (prediction streams slices)
            feats = self.features(slice_yxc)
        height, width, n_features = feats.shape
        known = forest_proba(self.forest, feats.reshape(-1, n_features), self._draft_trees)
        if self.log_prior_shift is not None:
            known = reweighted(
                known, np.exp(self.log_prior_shift)[self.forest.classes_.astype(int)]
            )
        # Classes never labelled in training get probability 0.
        proba = np.zeros((height * width, len(self.classes)), dtype=np.float32)
        proba[:, self.forest.classes_.astype(int)] = known
        return proba.T.reshape(len(self.classes), height, width)

    @contextmanager
    def draft(self):
        """Predictions inside use the first :data:`DRAFT_TREES` trees only (a forest of at most
        twice as many has no cheaper version)."""
        if self.forest is None or len(self.forest.estimators_) < 2 * DRAFT_TREES:
            yield False
            return
        self._draft_trees = DRAFT_TREES
        try:
            yield True
        finally:
            self._draft_trees = None

    # ------------------------------------------------------------- persistence
    def _state_dict(self) -> dict:
        return {"log_prior_shift": self.log_prior_shift, "prior": self.prior_info}

    def _load_state_dict(self, state: dict) -> None:
        self.log_prior_shift = state_numbers(state, "log_prior_shift", len(self.classes))

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
                    f"model folder {folder} was written by an older napari-wsseg "
                    f"({_OLD_WEIGHTS_FILE}); retrain the rf model (it takes seconds)"
                )
            raise ModelError(
                f"model folder {folder}: {WEIGHTS_FILE} is missing; retrain the rf model"
            )
        try:
            with safe_open(str(path), framework="numpy") as f:
                tensors = {key: f.get_tensor(key) for key in f.keys()}
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"model file {path} is not a valid safetensors file ({exc}); retrain"
            ) from None
        forest = forest_from_tensors(tensors, metadata, path)
        self._check_forest_fits(forest, path)
        self.forest = forest

    def _check_forest_fits(self, forest, path: Path) -> None:
        """Refuse a forest whose classes or feature count differ from what config.json implies."""
        if forest.classes_.max() >= len(self.classes):
            raise ModelError(
                f"model file {path}: forest class ids {forest.classes_.tolist()} for "
                f"{len(self.classes)} classes in config.json; retrain the rf model"
            )
        expected = self.features(np.zeros((8, 8, self.n_channels), dtype=np.float32)).shape[-1]
        if forest.n_features_in_ != expected:
            raise ModelError(
                f"model file {path}: forest of {forest.n_features_in_} features but "
                f"the filter bank in config.json gives {expected}; retrain the rf model"
            )


#: Trees of the draft prediction live mode shows before the full one (:meth:`~RandomForestMethod.
#: draft`): the subforest predicts a 1024 x 1024 slice in a sixth of the time. Chosen on the
#: validation slices of both real datasets (benchmarks/rf_draft.py, docs/benchmarks.md).
DRAFT_TREES = 16

#: Pixels per chunk of :func:`forest_proba`: small enough that a chunk's features stay in the CPU
#: cache while all trees walk them (a third faster than scikit-learn's one pass per tree over a
#: 1024 x 1024 slice, measured on 2 busy cores).
PREDICT_CHUNK = 32768


def forest_proba(forest, x: np.ndarray, n_trees: int | None = None) -> np.ndarray:
    """``forest.predict_proba(x)``: class probabilities ``(N, K)`` of ``(N, F)`` features; with
    ``n_trees``, of the subforest of the first ``n_trees`` trees.

    Rows go in chunks of :data:`PREDICT_CHUNK` to a thread pool (scikit-learn's trees release
    the GIL), each chunk through every tree in order, instead of every tree over all rows.
    """
    from concurrent.futures import ThreadPoolExecutor

    from joblib import effective_n_jobs

    x = np.ascontiguousarray(x, dtype=np.float32)
    trees = forest.estimators_[:n_trees]

    def chunk_proba(start: int) -> np.ndarray:
        rows = x[start : start + PREDICT_CHUNK]
        total = np.zeros((len(rows), forest.n_classes_))
        for tree in trees:
            total += tree.predict_proba(rows, check_input=False)
        return total

    starts = range(0, len(x), PREDICT_CHUNK)
    with ThreadPoolExecutor(max(1, min(effective_n_jobs(-1), len(starts)))) as pool:
        parts = list(pool.map(chunk_proba, starts))
    proba = np.concatenate(parts) if parts else np.zeros((0, forest.n_classes_))
    return proba / len(trees)


class FeatureMemo:
    """Filter features of whole slices by key, an LRU bounded by ``max_memory_mb``.

    Parameters
    ----------
    max_memory_mb : float, default 2048
        Memory the kept features may take; the least recently used go first.

    Attributes
    ----------
    stats : dict
        Counts of ``hits`` and ``computed`` slices since creation.
    """

    def __init__(self, max_memory_mb: float = 2048) -> None:
        self.max_bytes = int(max_memory_mb * 2**20)
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.stats = {"hits": 0, "computed": 0}

    @staticmethod
    def key(slice_yxc: np.ndarray, normalization, config: RFConfig) -> str:
        """Hex key of a raw slice, its normalisation and the filter bank applied to it."""
        array = np.ascontiguousarray(slice_yxc)
        digest = hashlib.sha256(
            f"{array.shape}|{array.dtype}|{normalization.low}|{normalization.high}|"
            f"{config.sigma_min}|{config.sigma_max}|{config.num_sigma}|".encode()
        )
        digest.update(array.tobytes())
        return digest.hexdigest()[:40]

    def peek(self, key: str) -> np.ndarray | None:
        """The features under ``key`` if kept (counted as a hit), else None; computes nothing."""
        features = self._entries.get(key)
        if features is not None:
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
        return features

    def get(self, key: str, compute) -> np.ndarray:
        """The features under ``key``, computed with ``compute()`` and kept when missing."""
        if key in self._entries:
            self._entries.move_to_end(key)
            self.stats["hits"] += 1
            return self._entries[key]
        features = compute()
        self.stats["computed"] += 1
        self._entries[key] = features
        while (
            sum(f.nbytes for f in self._entries.values()) > self.max_bytes
            and len(self._entries) > 1
        ):
            self._entries.popitem(last=False)
        if features.nbytes > self.max_bytes:
            self._entries.pop(key)
        return features


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
    metadata = {
        "format": "napari-wsseg random forest 1",
        "n_trees": str(len(depths)),
        "n_features": str(int(forest.n_features_in_)),
        "max_depths": json.dumps(depths),
    }
    return tensors, metadata


#: Upper bounds on what a model file may declare (a file is untrusted input).
_MAX_TREES = 10_000
_MAX_FEATURES = 1_000_000


def forest_from_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Path):
    """Rebuild the ``RandomForestClassifier`` :func:`forest_to_tensors` stored, after checking it.

    Every tree's node table is checked before scikit-learn sees it (:func:`_tree_problem`): a
    crafted file could otherwise make ``predict`` loop forever or read outside the table.

    Raises
    ------
    ModelError
        Naming ``path`` and the first problem found.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    n_trees, n_features = _forest_sizes(tensors, metadata, path)
    classes = _forest_classes(tensors, path)
    n_classes = len(classes)
    node_dtype = _node_dtype()
    estimators = []
    for i in range(n_trees):
        nodes, values = _tree_table(tensors, i, node_dtype, path)
        problem = _tree_problem(nodes, values, n_features, n_classes)
        if problem:
            raise ModelError(
                f"model file {path}: corrupt tree {i} ({problem}); retrain the rf model"
            )
        tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
        tree.__setstate__(
            {
                "max_depth": _tree_depth(nodes),
                "node_count": len(nodes),
                "nodes": nodes,
                "values": np.ascontiguousarray(values, dtype=np.float64),
            }
        )
        estimators.append(_fitted(DecisionTreeClassifier(), tree, classes, n_features))
    forest = RandomForestClassifier(n_estimators=n_trees, n_jobs=-1)
    forest.estimators_ = estimators
    forest.estimator_ = DecisionTreeClassifier()
    return _fitted(forest, None, classes, n_features)


def _forest_sizes(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Path
) -> tuple[int, int]:
    """The tree and feature counts of the metadata, bounded and matching the stored trees."""
    try:
        n_trees, n_features = int(metadata["n_trees"]), int(metadata["n_features"])
    except (KeyError, ValueError) as exc:
        raise ModelError(
            f"model file {path} lacks the forest description ({exc}); retrain"
        ) from None
    stored = sum(1 for key in tensors if key.startswith("tree") and key.endswith(".values"))
    if not 1 <= n_trees <= _MAX_TREES or n_trees != stored:
        raise ModelError(
            f"model file {path} declares {n_trees} trees but holds "
            f"{stored} (at most {_MAX_TREES}); retrain the rf model"
        )
    if not 1 <= n_features <= _MAX_FEATURES:
        raise ModelError(
            f"model file {path} declares {n_features} features "
            f"(1 to {_MAX_FEATURES}); retrain the rf model"
        )
    return n_trees, n_features


def _forest_classes(tensors: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """The forest's class ids: a non-empty, strictly increasing 1-D array of ids >= 0."""
    classes = tensors.get("classes")
    ok = (
        classes is not None
        and classes.ndim == 1
        and len(classes) >= 1
        and np.issubdtype(classes.dtype, np.integer)
        and classes.min() >= 0
        and np.all(np.diff(classes) > 0)
    )
    if not ok:
        raise ModelError(
            f"model file {path}: 'classes' is missing or not increasing class ids; "
            "retrain the rf model"
        )
    return classes.astype(np.int64)


def _tree_table(
    tensors: dict[str, np.ndarray], i: int, node_dtype: np.dtype, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Tree ``i``'s node table (scikit-learn's dtype) and leaf values, with matching lengths."""
    values = tensors.get(f"tree{i}.values")
    fields = {name: tensors.get(f"tree{i}.{name}") for name in node_dtype.names}
    missing = [name for name, array in fields.items() if array is None] + (
        [] if values is not None else ["values"]
    )
    if missing:
        raise ModelError(
            f"model file {path}: tree {i} lacks {missing} (written by another scikit-learn "
            "version?); retrain the rf model"
        )
    n_nodes = len(values) if values.ndim else 0
    for name, array in fields.items():
        kind = node_dtype[name].kind
        if array.shape != (n_nodes,) or (kind in "iu" and array.dtype.kind not in "iub"):
            raise ModelError(
                f"model file {path}: corrupt tree {i} (field {name} has shape {array.shape} and "
                f"dtype {array.dtype} for {n_nodes} nodes); retrain the rf model"
            )
    nodes = np.zeros(n_nodes, dtype=node_dtype)
    for name, array in fields.items():
        nodes[name] = array
    return nodes, values


def _tree_problem(
    nodes: np.ndarray, values: np.ndarray, n_features: int, n_classes: int
) -> str | None:
    """What makes a node table unsafe to predict with (None when it is a proper tree).

    scikit-learn numbers nodes so that children come after their parent, and a leaf has both
    children -1. Requiring exactly that, plus one parent per node, rules out cycles, self-loops,
    shared and unreachable nodes in O(nodes).
    """
    n_nodes = len(nodes)
    if n_nodes == 0:
        return "no nodes"
    if values.shape != (n_nodes, 1, n_classes):
        return f"leaf values of shape {values.shape}, expected {(n_nodes, 1, n_classes)}"
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        return "leaf values that are negative or not finite"
    left, right = nodes["left_child"], nodes["right_child"]
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        return "a node with one child"
    inner = np.flatnonzero(~leaf)
    children = np.concatenate([left[inner], right[inner]])
    parents = np.concatenate([inner, inner])
    if np.any(children <= parents) or np.any(children >= n_nodes):
        return "a child index that is out of range or not after its parent"
    if np.any(np.bincount(children, minlength=n_nodes)[1:] != 1):
        return "a node with no parent or several parents"
    feature = nodes["feature"][inner]
    if np.any((feature < 0) | (feature >= n_features)):
        return f"a feature index outside 0..{n_features - 1}"
    if not np.all(np.isfinite(nodes["threshold"][inner])):
        return "a threshold that is not finite"
    return None


def _tree_depth(nodes: np.ndarray) -> int:
    """Depth of a checked tree (root at depth 0), one numpy step per level."""
    left, right = nodes["left_child"], nodes["right_child"]
    level, depth = np.array([0]), -1
    while level.size:
        depth += 1
        inner = level[left[level] != -1]
        level = np.concatenate([left[inner], right[inner]])
    return depth


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


#: Pixels of the training slices the ``"image"`` prior is estimated on (a forest of 100 trees
#: predicts them in about 0.1 s on 2 cores).
PRIOR_SAMPLE_PIXELS = 20_000


def _sample_pixels(feats: np.ndarray, n_slices: int, rng) -> np.ndarray:
    """Features ``(N, F)`` of this slice's share of :data:`PRIOR_SAMPLE_PIXELS` random pixels
    (spread evenly over ``n_slices`` slices)."""
    flat = feats.reshape(-1, feats.shape[-1])
    count = min(max(1, PRIOR_SAMPLE_PIXELS // n_slices), len(flat))
    return flat[rng.choice(len(flat), count, replace=False)]


def reweighted(proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K)`` multiplied by per-class ``weights`` and renormalised
    (Bayes' rule for a change of class prior); rows that become all zero stay zero."""
    scaled = proba * weights[None, :]
    total = scaled.sum(axis=1, keepdims=True)
    return np.divide(scaled, total, out=np.zeros_like(scaled), where=total > 0)


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
