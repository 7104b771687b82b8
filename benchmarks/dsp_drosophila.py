"""Benchmark of method ``dsp`` (and the ``rf`` baseline) on drosophila_vnc or the phantom.

Protocol (docs/evaluation.md): weak annotations are simulated (``simulate_annotations``, the
function behind ``wsseg simulate``) on 8 slices from z 0-12 (z 0, 2, 3, 5, 7, 9, 10, 12) and the
prediction is scored on the held-out slices z 15-19 only (never an annotated slice or its
near-duplicate neighbour, never an annotated pixel). Scenarios:

``pts1``, ``pts4``, ``pts16``   1, 4 or 16 clicks per class per slice
``boxes``                       4 boxes per class per slice (some objects boxed: not exhaustive)

The protocol over several datasets with validation and scored slices is ``benchmarks/protocol.py``
(docs/evaluation.md); this script keeps the drosophila-only scenarios and the Dice-over-time curve.
``tags_pts``                    tags + 4 clicks per class per slice
``mixed``                       per-slice mix as in the paper: full masks on z 0, 7; 4 boxes per
                                class on z 2, 9; 4 clicks per class on z 3, 10; tags on z 5, 12
``mixed_weak``                  4 clicks + 4 boxes per class + tags + scribbles on all 8 slices
``masks``                       full masks of the 8 slices (the upper bound)

Each run is a fresh process (so its peak memory is its own). For dsp, ``--curve N`` keeps N weight
snapshots during training and scores them afterwards on the centre 512 x 512 of z 15-19, giving
Dice over time and the time to plateau (first snapshot within 0.01 of the final Dice).

    .venv/bin/python benchmarks/dsp_drosophila.py --scenarios pts4 --methods rf dsp --seeds 0 1 2
    .venv/bin/python benchmarks/dsp_drosophila.py --scenarios pts4 mixed masks --budget 600 --curve 10
    .venv/bin/python benchmarks/dsp_drosophila.py --scenarios pts4 --steps 1500 --config '{"lr": 2e-3}'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import merge_annotations  # noqa: E402  (the shared benchmark code)

DROSOPHILA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drosophila_vnc"
ANNOTATED_RANGE = (0, 12)
EVAL_SLICES = [15, 16, 17, 18, 19]
SCENARIOS = ("pts1", "pts4", "pts16", "boxes", "tags_pts", "mixed", "mixed_weak", "masks")


# ------------------------------------------------------------------------------------ data
def load_data(kind: str):
    """(image (Z, Y, X), labels, classes) of drosophila_vnc or a 20 x 512 x 512 phantom."""
    from napari_wsseg.annotations.model import ClassInfo

    if kind == "drosophila":
        image = np.load(DROSOPHILA / "image.npy", mmap_mode="r")
        labels = np.load(DROSOPHILA / "labels.npy", mmap_mode="r")
        classes = [ClassInfo(c["name"], c["color"]) for c in json.loads((DROSOPHILA / "classes.json").read_text())]
        return np.asarray(image), labels, classes
    from napari_wsseg.sample import make_phantom

    return make_phantom((20, 512, 512), seed=0)


def scenario_annotations(scenario: str, labels, classes, seed: int):
    """Simulated annotations of one scenario (see the module docstring)."""
    from napari_wsseg.eval.simulate import choose_slices, simulate_annotations

    def simulate(slices=8, **kinds):
        kinds = {"points": 0} | kinds
        return simulate_annotations(labels, slices=slices, slice_range=ANNOTATED_RANGE, seed=seed,
                                    classes=classes, **kinds)

    if scenario.startswith("pts"):
        return simulate(points=int(scenario[3:]))
    if scenario == "boxes":
        return simulate(boxes=4)
    if scenario == "tags_pts":
        return simulate(points=4, tags=True)
    if scenario == "masks":
        return simulate(masks=True)
    if scenario == "mixed_weak":
        return simulate(points=4, boxes=4, tags=True, scribbles=2)
    if scenario == "mixed":
        z = choose_slices(labels.shape[0], 8, slice_range=ANNOTATED_RANGE)
        return merge_annotations([
            simulate([z[0], z[4]], masks=True),
            simulate([z[1], z[5]], boxes=4),
            simulate([z[2], z[6]], points=4),
            simulate([z[3], z[7]], tags=True),
        ])
    raise SystemExit(f"unknown scenario {scenario}; choose from {', '.join(SCENARIOS)}")


def method_options(method: str, scenario: str, args) -> dict:
    options = {}
    if method == "dsp":
        options = json.loads(args.config)
        if args.steps:
            options["max_steps"] = args.steps
    return options


# -------------------------------------------------------------------------------- one run
def run_job(job: dict) -> dict:
    """Train and score one (data, scenario, method, seed); runs in a fresh process."""
    import torch

    from napari_wsseg.eval.metrics import evaluate
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods import get_method
    from napari_wsseg.methods.base import FitOptions

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    image_zyx, labels, classes = load_data(job["data"])
    image = as_image(image_zyx)
    ann = scenario_annotations(job["scenario"], labels, classes, job["seed"])
    method = get_method(job["method"])(**job["options"])
    snapshots = []
    progress = _snapshotter(method, snapshots, job) if job["curve"] else None
    budget = None if job["method"] == "rf" or job["steps"] else job["budget"]
    start, cpu_start = time.perf_counter(), time.process_time()
    result = method.fit(image, ann, FitOptions(device=job["device"], seed=job["seed"], time_budget_s=budget,
                                               progress=progress))
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    start = time.perf_counter()
    pred = np.zeros(labels.shape, np.uint8)
    for z in EVAL_SLICES:
        pred[z] = method.predict_slice(image.slice(z))
    predict_s = time.perf_counter() - start
    names = [c.name for c in classes]
    scores = evaluate(pred, labels, slices=EVAL_SLICES, class_names=names)
    uncorrected = _without_prior_correction(method, image, labels, names)
    record = {
        **{k: job[k] for k in ("data", "scenario", "method", "seed", "options")},
        "dice": scores["dice"], "mean_fg_dice": scores["mean_fg_dice"], "miou": scores["miou"],
        "steps": result.steps, "stopped": result.stopped, "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu, 1), "predict_s_per_slice": round(predict_s / len(EVAL_SLICES), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }
    if uncorrected is not None:
        record["prior_shift"] = [round(v, 3) for v in method.log_prior_shift]
        record["dice_uncorrected"], record["mean_fg_dice_uncorrected"] = uncorrected
    if snapshots:
        record["curve"] = _score_snapshots(method, snapshots, image, labels, names)
        record["time_to_plateau_s"] = _plateau(record["curve"])
    return record


def _without_prior_correction(method, image, labels, names):
    """(dice, mean_fg_dice) of a dsp model with its class-prior correction switched off."""
    from napari_wsseg.eval.metrics import evaluate

    shift = getattr(method, "log_prior_shift", None)
    if shift is None:
        return None
    method.log_prior_shift = None
    pred = np.zeros(labels.shape, np.uint8)
    for z in EVAL_SLICES:
        pred[z] = method.predict_slice(image.slice(z))
    method.log_prior_shift = shift
    scores = evaluate(pred, labels, slices=EVAL_SLICES, class_names=names)
    return scores["dice"], scores["mean_fg_dice"]


def _snapshotter(method, snapshots: list, job: dict):
    """A progress callback keeping ``job["curve"]`` weight snapshots evenly spaced in time (or in
    steps with ``--steps``), as (seconds, step, state)."""
    start = time.perf_counter()
    every = (job["steps"] or job["budget"]) / job["curve"]

    def progress(event) -> None:
        elapsed = time.perf_counter() - start
        position = event.done if job["steps"] else elapsed
        if event.message == "training" and position >= every * (len(snapshots) + 1):
            state = {k: v.detach().clone() for k, v in method.net.state_dict().items()}
            snapshots.append((round(elapsed, 1), event.done, state))

    return progress


def _score_snapshots(method, snapshots, image, labels, names) -> list[dict]:
    from napari_wsseg.eval.metrics import evaluate

    final = {k: v.clone() for k, v in method.net.state_dict().items()}
    height, width = labels.shape[1:]
    window = (slice(max(0, height // 2 - 256), height // 2 + 256), slice(max(0, width // 2 - 256), width // 2 + 256))
    gt = np.stack([np.asarray(labels[z])[window] for z in EVAL_SLICES])
    curve = []
    for seconds, step, state in snapshots + [(None, None, final)]:
        method.net.load_state_dict(state)
        method.net.eval()
        pred = np.stack([method.predict_slice(image.slice(z)[window]) for z in EVAL_SLICES])
        score = evaluate(pred, gt, class_names=names)["mean_fg_dice"]
        curve.append({"seconds": seconds, "step": step, "mean_fg_dice": round(score, 4)})
    method.net.load_state_dict(final)
    curve[-1]["seconds"] = "final"
    return curve


def _plateau(curve: list[dict]) -> float | None:
    final = curve[-1]["mean_fg_dice"]
    for point in curve[:-1]:
        if point["mean_fg_dice"] >= final - 0.01:
            return point["seconds"]
    return None


# -------------------------------------------------------------------------------- report
def summarise(records: list[dict], names: list[str]) -> str:
    lines = [
        "| scenario | method | " + " | ".join(names) + " | mean foreground | steps | train s (cpu s) | "
        "peak MB | plateau s |",
        "|" + "---|" * (len(names) + 7),
    ]
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["method"]), []).append(r)
    for (scenario, method), runs in groups.items():
        dice = np.array([[np.nan if d is None else d for d in r["dice"]] for r in runs], dtype=float)
        fg = np.array([r["mean_fg_dice"] for r in runs], dtype=float)
        cells = [_pm(dice[:, k]) for k in range(dice.shape[1])] + [_pm(fg)]
        plateau = [r.get("time_to_plateau_s") for r in runs if r.get("time_to_plateau_s") is not None]
        lines.append(
            f"| {scenario} | {method} | " + " | ".join(cells)
            + f" | {np.mean([r['steps'] for r in runs]):.0f}"
            + f" | {np.mean([r['train_s'] for r in runs]):.0f} ({np.mean([r['train_cpu_s'] for r in runs]):.0f})"
            + f" | {max(r['peak_rss_mb'] for r in runs)}"
            + (f" | {np.mean(plateau):.0f} |" if plateau else " | – |")
        )
    return "\n".join(lines)


def _pm(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if not len(values):
        return "–"
    return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["drosophila", "phantom"], default="drosophila")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--methods", nargs="+", default=["rf", "dsp"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=600.0, help="dsp training time budget, seconds")
    parser.add_argument("--steps", type=int, default=0,
                        help="train dsp for exactly this many steps instead of a time budget "
                             "(repeatable; independent of machine load)")
    parser.add_argument("--config", default="{}", help="dsp options as JSON, e.g. '{\"lr\": 2e-3}'")
    parser.add_argument("--curve", type=int, default=0, help="weight snapshots to score during training")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_out/dsp_drosophila.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    jobs = [
        {"data": args.data, "scenario": s, "method": m, "seed": seed, "options": method_options(m, s, args),
         "budget": args.budget, "steps": args.steps, "curve": args.curve if m == "dsp" else 0,
         "threads": args.threads, "device": args.device}
        for s in args.scenarios for m in args.methods for seed in args.seeds
        if not (m == "rf" and s == "boxes")  # rf learns from labelled pixels only
    ]
    context = multiprocessing.get_context("spawn")
    for job in jobs:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            record = pool.submit(run_job, job).result()
        records.append(record)
        args.out.write_text(json.dumps(records, indent=1))
        print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
    names = [c.name for c in load_data(args.data)[2]]
    done = [r for r in records if r["data"] == args.data and r["scenario"] in args.scenarios]
    print(f"\n{args.data}: Dice on z {EVAL_SLICES[0]}-{EVAL_SLICES[-1]}, mean ± std over seeds {args.seeds}\n")
    print(summarise(done, names))
    print(f"\nraw results: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
