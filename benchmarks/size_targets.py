"""Benchmark of the size-target method against rf and full-mask training.

Protocol (docs/evaluation.md): annotate 8 slices from z 0-12 (z = 0, 2, 3, 5, 7, 9, 10, 12), score
the held-out slices z 15-19 with the mean foreground Dice. Sizes come from the ground truth,
corrupted with the paper's multiplicative noise sigma; the measured mean relative error (mRE) of
the sizes actually used is recorded next to sigma. Each run appends one JSON line to ``--out``
(runs already there are skipped, so an interrupted grid resumes); ``--table`` prints the
Markdown table of a results file.

    taskset -c 0 .venv/bin/python benchmarks/size_targets.py --data drosophila --steps 600 \
        --runs full_mask rf_points size_pts_s0.2 --out benchmarks/results/size_drosophila.jsonl
    .venv/bin/python benchmarks/size_targets.py --table benchmarks/results/size_drosophila.jsonl

Run names: ``full_mask`` (the same U-Net, cross-entropy on the full masks of the 8 slices),
``rf_points`` / ``rf_masks`` (random forest on the points / full masks), ``pts_only`` (U-Net,
partial CE on the points + CRF, no sizes) and ``size[_pts][_nocrf]_s<sigma>`` (size targets with
noise sigma, with 1 point per class per slice if ``_pts``, without the CRF loss if ``_nocrf``).
Extra ``key=value`` pairs after a name (``size_pts_s0.2:crf_weight=0.3``) override size options.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from napari_wsseg.annotations.model import Annotations, ClassInfo
from napari_wsseg.eval.metrics import evaluate
from napari_wsseg.eval.simulate import (
    class_fractions,
    relative_errors,
    simulate_annotations,
    size_noise_mre,
)
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions

DROSOPHILA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drosophila_vnc"
ANNOTATED = dict(slices=8, slice_range=(0, 12))
EVAL_SLICES = [15, 16, 17, 18, 19]


def load_data(kind: str):
    if kind == "drosophila":
        image = np.load(DROSOPHILA / "image.npy", mmap_mode="r")
        labels = np.load(DROSOPHILA / "labels.npy", mmap_mode="r")
        classes = [ClassInfo(c["name"], c["color"]) for c in json.loads((DROSOPHILA / "classes.json").read_text())]
        return image, labels, classes
    from napari_wsseg.sample import make_phantom

    return make_phantom((20, 256, 256), seed=0, n_classes=5)


def parse_run(name: str) -> dict:
    base, _, extra = name.partition(":")
    options = {}
    for pair in filter(None, extra.split(",")):
        key, value = pair.split("=")
        options[key] = json.loads(value) if value not in ("True", "False") else value == "True"
    if base in ("full_mask", "rf_points", "rf_masks", "pts_only"):
        spec = {"full_mask": ("size", False, True, 0), "rf_points": ("rf", False, False, 1),
                "rf_masks": ("rf", False, True, 0), "pts_only": ("size", False, False, 1)}[base]
        method, sizes, masks, points = spec
        sigma = None
        if base == "full_mask":
            options.setdefault("crf_weight", 0.0)
    else:
        match = re.fullmatch(r"size(_pts)?(_nocrf)?_s([0-9.]+)", base)
        if not match:
            raise SystemExit(f"unknown run '{name}'")
        method, sizes, masks, points = "size", True, False, 1 if match.group(1) else 0
        sigma = float(match.group(3))
        if match.group(2):
            options["crf_weight"] = 0.0
    return {"name": name, "method": method, "sizes": sizes, "masks": masks, "points": points,
            "sigma": sigma, "options": options}


def measured_mre(labels, ann: Annotations) -> float | None:
    if not len(ann.sizes):
        return None
    errors = []
    for z in np.unique(ann.sizes[:, 0].astype(int)):
        rows = ann.sizes[ann.sizes[:, 0] == z]
        noisy = np.zeros(ann.n_classes)
        noisy[rows[:, 1].astype(int)] = rows[:, 2]
        errors.append(relative_errors(class_fractions(np.asarray(labels[z]), ann.n_classes), noisy))
    return float(np.mean(np.concatenate(errors)))


def run_once(data: str, spec: dict, budget: float, seed: int, steps: int | None = None) -> dict:
    image, labels, classes = load_data(data)
    ann = simulate_annotations(
        labels, classes=classes, points=spec["points"], sizes=spec["sizes"], size_noise=spec["sigma"] or 0.0,
        masks=spec["masks"], seed=seed, **ANNOTATED,
    )
    img = as_image(np.asarray(image))
    options = dict(spec["options"])
    if spec["method"] == "size" and steps is not None:
        options.setdefault("max_steps", steps)
    method = get_method(spec["method"])(**options)
    start = time.perf_counter()
    result = method.fit(img, ann, FitOptions(device="cpu", seed=seed, time_budget_s=budget))
    train_s = time.perf_counter() - start
    pred = np.stack([method.predict_slice(img.slice(z)) for z in EVAL_SLICES])
    gt = np.asarray(labels)[EVAL_SLICES]
    scores = evaluate(pred, gt, n_classes=len(classes), class_names=[c.name for c in classes])
    uncalibrated = None
    if getattr(method, "class_bias", None) is not None:  # the same network without the size calibration
        method.class_bias = None
        raw = np.stack([method.predict_slice(img.slice(z)) for z in EVAL_SLICES])
        uncalibrated = evaluate(raw, gt, n_classes=len(classes))["mean_fg_dice"]
    return {
        "data": data, "run": spec["name"], "method": spec["method"], "seed": seed, "budget_s": budget,
        "sigma": spec["sigma"], "expected_mre": None if spec["sigma"] is None else size_noise_mre(spec["sigma"]),
        "measured_mre": measured_mre(labels, ann), "points_per_class": spec["points"], "masks": spec["masks"],
        "options": spec["options"], "steps": result.steps, "train_s": round(train_s, 1),
        "mean_fg_dice": scores["mean_fg_dice"], "dice": scores["dice"], "class_names": scores["class_names"],
        "mean_fg_dice_uncalibrated": uncalibrated,
        "pred_fractions": class_fractions(pred, len(classes)).round(4).tolist(),
        "gt_fractions": class_fractions(gt, len(classes)).round(4).tolist(),
    }


def print_table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    full = {(r["data"], r["seed"]): r["mean_fg_dice"] for r in rows if r["run"] == "full_mask"}
    names = rows[0]["class_names"] if rows else []
    print("| data | run | seed | σ | mRE measured (expected) | steps | mean fg Dice | without calibration | "
          "% of full mask | " + " | ".join(names) + " |")
    print("|" + "---|" * (9 + len(names)))
    for r in rows:
        mre = "–" if r["measured_mre"] is None else f"{100 * r['measured_mre']:.1f} % ({100 * r['expected_mre']:.0f} %)"
        sigma = "–" if r["sigma"] is None else f"{r['sigma']:g}"
        reference = full.get((r["data"], r["seed"]), full.get((r["data"], 0)))
        ratio = "–" if reference is None else f"{100 * r['mean_fg_dice'] / reference:.0f} %"
        raw = r.get("mean_fg_dice_uncalibrated")
        raw = "–" if raw is None else f"{raw:.3f}"
        dice = " | ".join("–" if d is None else f"{d:.3f}" for d in r["dice"])
        print(f"| {r['data']} | {r['run']} | {r['seed']} | {sigma} | {mre} | {r['steps']} | "
              f"{r['mean_fg_dice']:.3f} | {raw} | {ratio} | {dice} |")


def print_summary(path: Path) -> None:
    """Mean ± std over seeds per (data, run): mean foreground Dice, its share of the same seed's
    full-mask Dice, and the measured mRE."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    full = {(r["data"], r["seed"]): r["mean_fg_dice"] for r in rows if r["run"] == "full_mask"}
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["data"], r["run"]), []).append(r)
    print("| data | run | seeds | mRE measured | mean fg Dice | without calibration | % of full mask |")
    print("|---|---|---|---|---|---|---|")
    for (data, run), group in groups.items():
        def pm(values, scale=1.0, digits=3, unit=""):
            values = np.array([v for v in values if v is not None], dtype=float) * scale
            if not len(values):
                return "–"
            spread = f" ± {values.std():.{digits}f}" if len(values) > 1 else ""
            return f"{values.mean():.{digits}f}{spread}{unit}"

        seeds = ",".join(str(r["seed"]) for r in group)
        ratios = [r["mean_fg_dice"] / full[(data, r["seed"])] for r in group if (data, r["seed"]) in full]
        print(f"| {data} | {run} | {seeds} | {pm([r['measured_mre'] for r in group], 100, 1, ' %')} | "
              f"{pm([r['mean_fg_dice'] for r in group])} | {pm([r.get('mean_fg_dice_uncalibrated') for r in group])} | "
              f"{pm(ratios, 100, 0, ' %')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["drosophila", "phantom"], default="drosophila")
    parser.add_argument("--runs", nargs="+", default=[])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of the U-Net runs (fixed steps compare fairly on a busy machine)")
    parser.add_argument("--budget", type=float, default=3600.0, help="training seconds per run (a cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/size_targets.jsonl"))
    parser.add_argument("--table", type=Path, default=None, help="print the Markdown table of a results file")
    parser.add_argument("--summary", type=Path, default=None,
                        help="print mean ± std over the seeds of each run of a results file")
    args = parser.parse_args()
    if args.table or args.summary:
        print_table(args.table) if args.table else print_summary(args.summary)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        done = {(r["data"], r["run"], r["seed"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for name in args.runs:
        if (args.data, name, args.seed) in done:
            continue
        row = run_once(args.data, parse_run(name), args.budget, args.seed, args.steps)
        print(f"{row['run']}: mean fg Dice {row['mean_fg_dice']:.3f} ({row['steps']} steps, {row['train_s']} s)",
              flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
