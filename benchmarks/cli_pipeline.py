"""End-to-end benchmark through the `wsseg` CLI: simulate -> train -> predict -> evaluate.

Protocol (docs/evaluation.md): annotate 8 slices from z 0-12, score held-out slices z 15-19,
never an annotated slice or its neighbour. Prints a per-class Dice table (mean ± std over seeds)
and writes the raw JSON results.

    .venv/bin/python benchmarks/cli_pipeline.py --data drosophila --method rf --points 4 --seeds 0 1 2
    .venv/bin/python benchmarks/cli_pipeline.py --data phantom --method rf --points 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DROSOPHILA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drosophila_vnc"
WSSEG = str(Path(sys.executable).with_name("wsseg"))


def wsseg(*args) -> str:
    out = subprocess.run([WSSEG, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"wsseg {' '.join(map(str, args))} failed: {out.stderr.strip()}")
    return out.stdout


def prepare_data(kind: str, workdir: Path) -> tuple[Path, Path, Path]:
    if kind == "drosophila":
        return DROSOPHILA / "image.npy", DROSOPHILA / "labels.npy", DROSOPHILA / "classes.json"
    sample = workdir / "phantom"
    if not (sample / "image.tif").exists():
        wsseg("sample", "--out", sample, "--shape", "20,512,512", "--seed", "0")
    return sample / "image.tif", sample / "labels.tif", sample / "classes.json"


def run_once(args, image, gt, classes, seed: int, workdir: Path) -> dict:
    run = workdir / f"{args.data}-{args.method}-p{args.points}-b{args.boxes}-s{seed}"
    ann = run / "ann"
    sim = ["simulate", gt, "--out", ann, "--slices", "8", "--slice-range", "0-12", "--points", args.points,
           "--boxes", args.boxes, "--classes", classes, "--seed", seed]
    if args.masks:
        sim.append("--masks")
    wsseg(*sim)
    train = ["train", image, "--classes", classes, "--method", args.method, "--out", run / "model",
             "--seed", seed, "--time-budget", args.time_budget, *args.method_args]
    for kind in ("points", "boxes"):
        if (ann / f"{kind}.csv").exists():
            train += [f"--{kind}", ann / f"{kind}.csv"]
    if args.masks:
        train += ["--masks", ann / "masks.npy"]
    start = time.perf_counter()
    wsseg(*train)
    train_s = time.perf_counter() - start
    pred = run / "pred.npy"
    wsseg("predict", run / "model", image, "--out", pred, "--slices", "15-19", "--overwrite")
    scores = json.loads(wsseg("evaluate", pred, gt, "--slices", "15-19", "--classes", classes))
    scores["train_seconds"] = train_s
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["drosophila", "phantom"], default="drosophila")
    parser.add_argument("--method", default="rf")
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--boxes", type=int, default=0)
    parser.add_argument("--masks", action="store_true", help="full masks of the 8 slices (upper bound)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--time-budget", type=float, default=600)
    parser.add_argument("--workdir", type=Path, default=Path("bench_out"))
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    parser.add_argument("method_args", nargs="*", help="extra method options after --, e.g. -- --n-estimators 200")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    image, gt, classes = prepare_data(args.data, args.workdir)
    results = [run_once(args, image, gt, classes, seed, args.workdir) for seed in args.seeds]
    names = results[0]["class_names"]
    dice = np.array([[np.nan if d is None else d for d in r["dice"]] for r in results], dtype=float)
    fg = np.array([r["mean_fg_dice"] for r in results], dtype=float)
    print(f"{args.data} {args.method} points={args.points} boxes={args.boxes} masks={args.masks} "
          f"seeds={args.seeds} (held-out z 15-19)")
    print(f"{'class':<22}{'Dice mean':>10}{'std':>8}")
    for k, name in enumerate(names):
        print(f"{name:<22}{np.nanmean(dice[:, k]):>10.3f}{np.nanstd(dice[:, k]):>8.3f}")
    print(f"{'mean foreground':<22}{fg.mean():>10.3f}{fg.std():>8.3f}")
    print(f"train seconds: {np.mean([r['train_seconds'] for r in results]):.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
