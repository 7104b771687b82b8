"""The validation protocol: one grid of annotation scenarios x methods x seeds per dataset.

Every dataset has three disjoint groups of slices, with at least one unused slice between any two
groups (neighbouring EM sections are near-duplicates): **annotated** slices (weak labels are
simulated there with :func:`~napari_wsseg.eval.simulate.simulate_annotations`), **validation**
slices (every default is chosen on these) and **scored** slices (they only report). See
``docs/evaluation.md``.

    .venv/bin/python benchmarks/protocol.py --method dsp --datasets drosophila_vnc,cdeep3m_mito \\
        --seeds 0,1,2 --split validation --time-budget 600
    .venv/bin/python benchmarks/protocol.py --method rf --datasets phantom --scenarios pts4 \\
        --seeds 0

Each run trains ``rf`` and the method on one scenario with one seed and appends one JSON line to
``benchmarks/results/protocol.jsonl``; a run already recorded there (same dataset, split, method,
scenario, seed, budget and options) is skipped, so an interrupted grid resumes. The table per
dataset gives mean +- std over seeds of the mean foreground Dice (x 100) and the mean seconds
per run (training + prediction of the split's slices).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "protocol.jsonl"


@dataclass(frozen=True)
class Split:
    """Which slices of a dataset are annotated, validated on and scored."""

    annotated: tuple[int, ...]
    validation: tuple[int, ...]
    scored: tuple[int, ...]


#: The split of each dataset. drosophila_vnc: 20 consecutive sections (z 0-19); cdeep3m_mito:
#: block A z 0-19 and block B z 20-29 (20 sections apart); phantom: 16 x 256 x 256, seed 0.
SPLITS = {
    "drosophila_vnc": Split(
        annotated=(0, 2, 3, 5, 7, 9, 10, 12), validation=(14, 15), scored=(17, 18, 19)
    ),
    "cdeep3m_mito": Split(
        annotated=(0, 3, 5, 8, 11, 14, 16, 19), validation=(21, 22, 23), scored=(26, 27, 28, 29)
    ),
    "phantom": Split(annotated=(0, 3, 5, 8), validation=(10, 11), scored=(13, 14, 15)),
}

#: Voxel size (z, y, x) in nm of each dataset, as a user would give it (``--voxel-size``): from
#: the dataset READMEs (cdeep3m_mito's is inferred from the data's name there); the phantom is
#: isotropic. Only methods that see volumes (rewis3d's 3D U-Net) use it.
VOXEL_SIZES_NM = {
    "drosophila_vnc": (50.0, 4.6, 4.6),
    "cdeep3m_mito": (40.0, 5.9, 5.9),
    "phantom": (1.0, 1.0, 1.0),
}

#: Scenario name -> what the annotator gives on every annotated slice (per class present).
SCENARIOS = {
    "pts1": {"points": 1},
    "pts4": {"points": 4},
    "pts16": {"points": 16},
    "pts4_boxes": {"points": 4, "boxes": 2},
    "pts4_tags": {"points": 4, "tags": True},
    "pts4_boxes_tags": {"points": 4, "boxes": 2, "tags": True},
    "scribbles": {"scribble_share": 0.01},
    "masks": {"masks": True},
    # Issue 16: every cell of a coarse grid tagged with the classes in it, alone or with clicks,
    # and as many clicks as those tagged cells are actions (see :func:`scenario_annotations`).
    "rtags": {"points": 0, "region_tags": "coarse"},
    "pts4_rtags": {"points": 4, "region_tags": "coarse"},
    "pts_as_rtags": {"points": "as_rtags"},
}
#: Cells per side of the coarse counting grid (the Annotate widget's coarse grid: 5 x 5 cells).
COARSE_GRID = 5
#: Share of the annotated slices' pixels the simulated scribbles cover (about; at least this).
SCRIBBLE_SHARE = 0.01


def check_split(name: str, split: Split, n_slices: int) -> None:
    """Raise when groups overlap, touch (no unused slice between them) or leave the volume."""
    groups = {"annotated": split.annotated, "validation": split.validation, "scored": split.scored}
    for group, zs in groups.items():
        if not zs or min(zs) < 0 or max(zs) >= n_slices:
            raise SystemExit(f"{name}: {group} slices {zs} must lie in 0..{n_slices - 1}")
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            close = [(p, q) for p in groups[a] for q in groups[b] if abs(p - q) <= 1]
            if close:
                raise SystemExit(f"{name}: {a} and {b} slices {close[0]} are equal or neighbours")


# ------------------------------------------------------------------------------------ data
def load_dataset(name: str):
    """(image (Z, Y, X), labels (Z, Y, X), classes) of a dataset of :data:`SPLITS`."""
    from napari_wsseg.annotations import read_classes_json

    if name == "phantom":
        from napari_wsseg.sample import make_phantom

        return make_phantom((16, 256, 256), seed=0)
    folder = DATA / name
    if name == "drosophila_vnc":
        image, labels = np.load(folder / "image.npy"), np.load(folder / "labels.npy")
    elif name == "cdeep3m_mito":
        import tifffile

        image, labels = (
            tifffile.imread(folder / "image.tif"),
            tifffile.imread(folder / "labels.tif"),
        )
    else:
        raise SystemExit(f"unknown dataset {name}; choose from {', '.join(SPLITS)}")
    return image, labels, read_classes_json(folder / "classes.json")


def scenario_annotations(scenario: str, labels, classes, slices, seed: int):
    """Simulated annotations of ``scenario`` (see :data:`SCENARIOS`) on ``slices``."""
    from napari_wsseg.eval.simulate import simulate_annotations

    kinds = dict(SCENARIOS[scenario])
    share = kinds.pop("scribble_share", None)
    if kinds.get("region_tags") == "coarse":
        kinds["region_tags"] = coarse_cell(labels.shape)
    if kinds.get("points") == "as_rtags":
        kinds["points"] = points_as_rtags(labels.shape, len(classes))
    if share is None:
        return simulate_annotations(
            labels,
            slices=list(slices),
            seed=seed,
            classes=classes,
            points=kinds.pop("points", 0),
            **kinds,
        )
    return _scribbles(labels, classes, slices, seed, share)


def coarse_cell(shape) -> int:
    """Side in pixels of a coarse-grid cell (:data:`COARSE_GRID` cells across the larger side)."""
    return -(-max(shape[-2:]) // COARSE_GRID)


def points_as_rtags(shape, n_classes: int) -> int:
    """Clicks per class per slice that cost as many actions as tagging every coarse-grid cell of
    the slice (one action per tagged cell; at least 1 click per class)."""
    cell = coarse_cell(shape)
    cells = -(-shape[-2] // cell) * -(-shape[-1] // cell)
    return max(1, round(cells / n_classes))


def count_actions(ann) -> int:
    """Annotation cost in actions: a click, a box, a slice tag or a tagged region cell is one
    (issue 16). Masks and scribbles are painted, not counted here."""
    cells = {tuple(row) for row in np.asarray(ann.region_tags)[:, [0, 2, 3, 4, 5]].tolist()}
    return len(ann.points) + len(ann.boxes) + len(ann.tags) + len(cells)


def _scribbles(labels, classes, slices, seed: int, share: float):
    """Scribbles per class per slice, as few as cover ``share`` of the annotated slices."""
    from napari_wsseg.eval.simulate import simulate_annotations

    area = len(slices) * labels.shape[1] * labels.shape[2]
    for count in range(1, 33):
        ann = simulate_annotations(
            labels, slices=list(slices), seed=seed, classes=classes, points=0, scribbles=count
        )
        if np.count_nonzero(ann.masks) >= share * area:
            break
    return ann


def merge_annotations(parts):
    """One Annotations from several (rows concatenated, masks combined: the first label wins)."""
    from napari_wsseg.annotations.model import Annotations

    masks = [p.masks for p in parts if p.masks is not None]
    combined = None
    if masks:
        combined = masks[0].copy()
        for m in masks[1:]:
            combined = np.where(combined > 0, combined, m)
    return Annotations(
        classes=parts[0].classes,
        points=np.concatenate([p.points for p in parts]),
        boxes=np.concatenate([p.boxes for p in parts]),
        tags=np.concatenate([p.tags for p in parts]),
        masks=combined,
        exhaustive_boxes=np.concatenate([p.exhaustive_boxes for p in parts]),
        region_tags=np.concatenate([p.region_tags for p in parts]),
    )


# -------------------------------------------------------------------------------- one run
def make_deterministic() -> None:
    """Deterministic torch kernels (warn where an op has none), no benchmark-chosen algorithms."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def run_one(job: dict, data, save_models: Path | None = None) -> dict:
    """Train and score one (dataset, split, method, scenario, seed); returns its record.

    With ``save_models`` the trained model is saved in a folder under it (named in the record's
    ``model_dir``) for analyses after the run (e.g. ``benchmarks/posthoc.py``)."""
    from napari_wsseg.eval.metrics import evaluate
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods import get_method
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.predict.slices import predict_slice_proba

    image_zyx, labels, classes = data
    split = SPLITS[job["dataset"]]
    ann = scenario_annotations(job["scenario"], labels, classes, split.annotated, job["seed"])
    image = as_image(image_zyx)
    if job.get("voxel_size_zyx"):
        image.voxel_size_zyx = tuple(job["voxel_size_zyx"])
    method = get_method(job["method"])(**job["options"])
    start = time.perf_counter()
    result = method.fit(
        image,
        ann,
        FitOptions(device=job["device"], seed=job["seed"], time_budget_s=job["time_budget_s"]),
    )
    train_s = time.perf_counter() - start
    model_dir = None
    if save_models is not None:
        name = f"{job['dataset']}_{job['method']}_{job['scenario']}_s{job['seed']}_{job_key(job)}"
        model_dir = save_models / name
        method.save(model_dir, overwrite=True)
    slices = list(getattr(split, job["split"]))
    pred = np.zeros(labels.shape, np.uint8)
    start = time.perf_counter()
    for z in slices:  # with z context for methods that ask for it (rewis3d's 3D student)
        pred[z] = np.argmax(predict_slice_proba(method, image, z), axis=0)
    predict_s = time.perf_counter() - start
    names = [c.name for c in classes]
    scores = evaluate(pred, labels, slices=slices, class_names=names)
    mask_share = (
        0.0
        if ann.masks is None
        else np.count_nonzero(ann.masks)
        / (len(split.annotated) * labels.shape[1] * labels.shape[2])
    )
    return (
        job
        | {
            "key": job_key(job),
            "mean_fg_dice": round(float(scores["mean_fg_dice"]), 4),
            "dice": {n: round(float(d), 4) for n, d in zip(names, scores["dice"])},
            "confusion_matrix": scores["confusion_matrix"],  # rows: truth, columns: prediction
            "train_s": round(train_s, 1),
            "predict_s": round(predict_s, 1),
            "steps": int(getattr(result, "steps", 0) or 0),
            "stopped": getattr(result, "stopped", None),
            "mask_share": round(mask_share, 4),
            "n_points": len(ann.points),
            "n_boxes": len(ann.boxes),
            "n_actions": count_actions(ann),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        | ({} if model_dir is None else {"model_dir": str(model_dir)})
    )


def job_key(job: dict) -> str:
    """What makes two runs the same run (the resume key)."""
    keys = ("dataset", "split", "method", "scenario", "seed", "time_budget_s", "options")
    # runs before session 13 had no voxel size (isotropic); their keys stay what they were
    fields = {k: job[k] for k in keys + ("voxel_size_zyx",) if k in job}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------- reporting
def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(
    records: list[dict], dataset: str, split: str, scenarios, methods, options: dict | None = None
) -> str:
    """Markdown table: scenario rows, per method mean +- std of mean foreground Dice and s/run.

    Runs of a method other than rf count only with exactly ``options`` (default: none), so a
    lever's runs never mix with the defaults' runs.
    """
    options = options or {}
    lines = [
        f"### {dataset} ({split} slices {list(getattr(SPLITS[dataset], split))})",
        "",
        "| scenario | " + " | ".join(f"{m} Dice | {m} s/run" for m in methods) + " |",
        "|---|" + "---|---|" * len(methods),
    ]
    for scenario in scenarios:
        cells = []
        for method in methods:
            runs = [
                r
                for r in records
                if (r["dataset"], r["split"], r["scenario"], r["method"])
                == (dataset, split, scenario, method)
                and (method == "rf" or r["options"] == options)
            ]
            dice = np.array([r["mean_fg_dice"] for r in runs]) * 100
            seconds = np.array([r["train_s"] + r["predict_s"] for r in runs])
            if not len(runs):
                cells += ["—", "—"]
                continue
            cells += [
                f"{dice.mean():.1f} ± {dice.std():.1f} (n={len(runs)})",
                f"{seconds.mean():.0f}",
            ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", required=True, help="the method to compare with rf (e.g. dsp)")
    parser.add_argument("--datasets", default="drosophila_vnc,cdeep3m_mito", help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--split", choices=["validation", "scored"], default="validation")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--time-budget", type=float, default=600.0, help="training seconds per run")
    parser.add_argument("--options", default="{}", help="the method's options as JSON")
    parser.add_argument("--no-rf", action="store_true", help="skip the rf baseline runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSONL file (appended)")
    parser.add_argument(
        "--save-models", type=Path, default=None, help="save each trained model in a folder here"
    )
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS] + [
        d for d in datasets if d not in SPLITS
    ]
    if unknown:
        parser.error(
            f"unknown scenario or dataset {unknown}; scenarios: {', '.join(SCENARIOS)}; "
            f"datasets: {', '.join(SPLITS)}"
        )
    methods = list(dict.fromkeys(([] if args.no_rf else ["rf"]) + [args.method]))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    make_deterministic()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in read_records(args.results)}
    for dataset in datasets:
        data = load_dataset(dataset)
        check_split(dataset, SPLITS[dataset], data[1].shape[0])
        for scenario in scenarios:
            for method in methods:
                for seed in seeds:
                    job = {
                        "dataset": dataset,
                        "split": args.split,
                        "method": method,
                        "scenario": scenario,
                        "seed": seed,
                        "device": args.device,
                        "time_budget_s": None if method == "rf" else args.time_budget,
                        "options": {} if method == "rf" else json.loads(args.options),
                        "voxel_size_zyx": list(VOXEL_SIZES_NM[dataset]),
                    }
                    if job_key(job) in done:
                        continue
                    record = run_one(job, data, args.save_models)
                    with open(args.results, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    print(
                        json.dumps(
                            {
                                k: record[k]
                                for k in (
                                    "dataset",
                                    "scenario",
                                    "method",
                                    "seed",
                                    "mean_fg_dice",
                                    "train_s",
                                )
                            }
                        ),
                        flush=True,
                    )
        print()
        print(
            table(
                read_records(args.results),
                dataset,
                args.split,
                scenarios,
                methods,
                json.loads(args.options),
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
