"""Frozen-feature quality of in-domain pretrained backbones (``wsseg pretrain``), and its cost.

For each dataset this script

1. pretrains one backbone per time budget (``--minutes``, default 15,30,60,120) with the real
   ``wsseg pretrain`` command in a child process on the whole image (self-supervised: no labels
   are used, so pretraining on every slice, scored ones included, is what a user would do), and
   records its throughput (windows/s, each giving 2 global + n_local views) and the child's peak
   resident memory (``wait4`` rusage);
2. fits a linear probe (standardised features + logistic regression) on the frozen features at 4
   simulated clicks per class on the 8 annotated slices of the protocol split
   (``benchmarks/protocol.py``), for: the same architecture with random weights, each in-domain
   backbone, and rf's filter bank (skimage ``multiscale_basic_features`` with rf's defaults);
3. predicts the ``--split`` slices (default: the scored ones) and reports the mean foreground Dice.

ViT patch features are upsampled bilinearly to pixels. The probe is linear and bilinear weights
sum to one, so the logits are computed on the patch grid and upsampled (exactly equal to
classifying upsampled features, at a fraction of the memory); the clicks' features are the
same bilinear interpolation at the click.

    .venv/bin/python benchmarks/pretrain.py --datasets drosophila_vnc,cdeep3m_mito \\
        --minutes 15,30,60,120 --out benchmarks/results/pretrain.jsonl
    # is --fast-views (2-3x the windows/s) as good per minute? the same with --fast-views
    # windows/s only (default, fast views, patch 16; phantom, no data sets), ~2 min on one core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrain.py --throughput --batch 8
    # smoke run (a few minutes of CPU, numbers meaningless): crop 256 x 256, 15 s budgets
    .venv/bin/python benchmarks/pretrain.py --crop 256 --minutes 0.25 --work /tmp/pt_smoke

Backbones are kept in ``--work`` (one folder per dataset, architecture, budget and seed) and a
finished one is reused, so an interrupted benchmark continues. One JSON line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import SPLITS, load_dataset, scenario_annotations  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _emit(out: Path | None, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


# ------------------------------------------------------------------ pretraining
def pretrain_child(image_path: Path, folder: Path, minutes: float, args) -> dict:
    """Run ``wsseg pretrain`` in a child process; its JSON summary plus its peak RSS in MiB."""
    from napari_wsseg.engine.backbones import read_backbone_info

    if (folder / "backbone.json").is_file() and read_backbone_info(folder).training.get("finished"):
        return {"reused": True, **read_backbone_info(folder).training}
    resume = (folder / "checkpoint" / "latest.json").is_file()
    argv = [
        sys.executable,
        "-m",
        "napari_wsseg.cli",
        "pretrain",
        str(image_path),
        "--out",
        str(folder),
        "--device",
        args.device,
    ]
    if resume:
        argv.append("--resume")
    else:
        argv += [
            "--arch",
            args.arch,
            "--patch-size",
            str(args.patch_size),
            "--batch",
            str(args.batch),
            "--seed",
            str(args.seed),
            "--time-budget",
            str(minutes * 60),
        ] + (["--fast-views"] if args.fast_views else [])
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"wsseg pretrain failed ({child.returncode}): {' '.join(argv)}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return summary | {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss is KiB on Linux


# ------------------------------------------------------------------ features
def vit_grid_features(backbone, image_zyx: np.ndarray, normalization, zs) -> dict:
    """Patch-feature grids ``(Hp, Wp, D)`` float32 of the slices ``zs``."""
    return {
        z: backbone.features(normalization.apply(image_zyx[z][None, ..., None]))[0].astype(
            np.float32
        )
        for z in zs
    }


def sample_grid(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
    """Bilinear values of a ``(Hp, Wp, D)`` grid at pixels (as torch's align_corners=False)."""
    hp, wp = grid.shape[:2]
    u = np.clip((ys + 0.5) / patch - 0.5, 0, hp - 1)
    v = np.clip((xs + 0.5) / patch - 0.5, 0, wp - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    u1, v1 = np.minimum(u0 + 1, hp - 1), np.minimum(v0 + 1, wp - 1)
    du, dv = (u - u0)[:, None], (v - v0)[:, None]
    return (
        (1 - du) * (1 - dv) * grid[u0, v0]
        + (1 - du) * dv * grid[u0, v1]
        + du * (1 - dv) * grid[u1, v0]
        + du * dv * grid[u1, v1]
    )


def upsampled_logits(grid_logits: np.ndarray, shape_yx, patch: int) -> np.ndarray:
    """``(Hp, Wp, C)`` logits -> ``(Y, X, C)`` with bilinear upsampling (align_corners=False)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(grid_logits.transpose(2, 0, 1)))[None].float()
    up = F.interpolate(t, scale_factor=patch, mode="bilinear", align_corners=False)[0]
    return up[:, : shape_yx[0], : shape_yx[1]].permute(1, 2, 0).numpy()


def fit_probe(features: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features, labels)


def _logits(probe, flat: np.ndarray) -> np.ndarray:
    scores = probe.decision_function(flat)
    return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores


def probe_vit(backbone, data, clicks, score_zs, normalization) -> np.ndarray:
    """Predicted labels of ``score_zs`` from a linear probe on a frozen ViT's features."""
    image, labels, _ = data
    p = backbone.patch_size
    grids = vit_grid_features(
        backbone, image, normalization, sorted(set(clicks[:, 0]) | set(score_zs))
    )
    x = np.concatenate(
        [
            sample_grid(grids[z], clicks[clicks[:, 0] == z, 1], clicks[clicks[:, 0] == z, 2], p)
            for z in sorted(set(clicks[:, 0]))
        ]
    )
    y = np.concatenate([clicks[clicks[:, 0] == z, 3] for z in sorted(set(clicks[:, 0]))])
    probe = fit_probe(x, y)
    pred = np.zeros(labels.shape, np.uint8)
    for z in score_zs:
        grid = grids[z]
        logits = _logits(probe, grid.reshape(-1, grid.shape[-1])).reshape(*grid.shape[:2], -1)
        pred[z] = probe.classes_[upsampled_logits(logits, image.shape[1:], p).argmax(-1)]
    return pred


def probe_filter_bank(data, clicks, score_zs, normalization) -> np.ndarray:
    """Predicted labels of ``score_zs`` from a linear probe on rf's filter bank."""
    from skimage.feature import multiscale_basic_features

    from napari_wsseg.methods.rf import RFConfig

    image, labels, _ = data
    cfg = RFConfig()

    def feats(z):
        return multiscale_basic_features(
            normalization.apply(image[z][..., None]),
            sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max,
            num_sigma=cfg.num_sigma,
            channel_axis=-1,
        )

    zs = sorted(set(clicks[:, 0]))
    x = np.concatenate(
        [feats(z)[clicks[clicks[:, 0] == z, 1], clicks[clicks[:, 0] == z, 2]] for z in zs]
    )
    y = np.concatenate([clicks[clicks[:, 0] == z, 3] for z in zs])
    probe = fit_probe(x, y)
    pred = np.zeros(labels.shape, np.uint8)
    for z in score_zs:
        f = feats(z)
        pred[z] = probe.classes_[_logits(probe, f.reshape(-1, f.shape[-1])).argmax(-1)].reshape(
            f.shape[:2]
        )
    return pred


def random_backbone(info):
    """The architecture with the run's seeded initial weights (what pretraining starts from)."""
    import torch

    from napari_wsseg.engine.backbones import build_model
    from napari_wsseg.engine.vit import FrozenViT, hash_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(info.training.get("seed", 0)))
        model = build_model(info)
    return FrozenViT(
        model,
        name=info.arch,
        weights_source="random",
        weights_hash=hash_weights(model),
        mean=info.mean,
        std=info.std,
    )


# ------------------------------------------------------------------ driver
def score(pred, labels, zs, classes) -> dict:
    from napari_wsseg.eval.metrics import evaluate

    result = evaluate(pred, labels, slices=list(zs), class_names=[c.name for c in classes])
    return {
        "mean_fg_dice": round(float(result["mean_fg_dice"]), 4),
        "dice": {c.name: round(float(d), 4) for c, d in zip(classes, result["dice"])},
    }


def run_dataset(name: str, args, out: Path | None) -> None:
    from napari_wsseg.engine.backbones import read_backbone_info
    from napari_wsseg.engine.vit import load_backbone
    from napari_wsseg.io.image import as_image
    from napari_wsseg.io.normalize import Normalization

    image, labels, classes = load_dataset(name)
    if args.crop:
        image, labels = image[:, : args.crop, : args.crop], labels[:, : args.crop, : args.crop]
    image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)
    split = SPLITS[name]
    score_zs = list(getattr(split, args.split))
    clicks = scenario_annotations("pts4", labels, classes, split.annotated, args.seed).points
    normalization = Normalization.from_image(as_image(image))
    data = (image, labels, classes)
    base = {
        "dataset": name,
        "split": args.split,
        "slices": score_zs,
        "clicks": len(clicks),
        "crop": args.crop,
        "seed": args.seed,
        "arch": args.arch,
        "patch_size": args.patch_size,
        "fast_views": args.fast_views,
        "threads": _threads(),
    }

    start = time.perf_counter()
    pred = probe_filter_bank(data, clicks, score_zs, normalization)
    _emit(
        out,
        base
        | {"features": "rf filter bank", "probe_s": round(time.perf_counter() - start, 1)}
        | score(pred, labels, score_zs, classes),
    )

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    image_path = work / f"{name}_crop{args.crop or 'none'}.npy"
    if not image_path.exists():
        np.save(image_path, image)
    for i, minutes in enumerate(args.minutes):
        folder = (
            work / f"{name}_crop{args.crop or 'none'}_{args.arch}_p{args.patch_size}"
            f"{'_fast' if args.fast_views else ''}_{minutes:g}min_s{args.seed}"
        )
        run = pretrain_child(image_path, folder, minutes, args)
        info = read_backbone_info(folder)
        if i == 0:
            start = time.perf_counter()
            pred = probe_vit(random_backbone(info), data, clicks, score_zs, normalization)
            _emit(
                out,
                base
                | {"features": "random ViT", "probe_s": round(time.perf_counter() - start, 1)}
                | score(pred, labels, score_zs, classes),
            )
        start = time.perf_counter()
        pred = probe_vit(load_backbone(info.arch, folder), data, clicks, score_zs, normalization)
        _emit(
            out,
            base
            | {
                "features": f"in-domain {minutes:g} min",
                "minutes": minutes,
                "probe_s": round(time.perf_counter() - start, 1),
                "pretrain": {
                    k: run.get(k)
                    for k in (
                        "steps",
                        "planned_steps",
                        "seconds",
                        "images_per_s",
                        "peak_rss_mib",
                        "reused",
                    )
                },
                "weights_hash": info.weights_hash[:12],
            }
            | score(pred, labels, score_zs, classes),
        )


# ------------------------------------------------------------------ throughput only
#: View settings compared by ``--throughput`` (each on top of the defaults).
THROUGHPUT_VARIANTS = {
    "default": {},
    "fast views": {"global_px": 64, "local_px": 32, "n_local": 4},
    "patch 16": {"patch_size": 16},
}


def throughput(args, out: Path | None) -> None:
    """Windows per second of each view setting on the phantom, by wall and by CPU time.

    Variants alternate, ``args.rounds`` times, so that a change in the machine's load hits all
    of them; the first step of each run (warm-up) is left out. CPU seconds (this process) are
    less sensitive to other processes on a shared machine than wall seconds.
    """
    import torch

    from napari_wsseg.engine.pretrain import PretrainConfig, pretrain
    from napari_wsseg.io.image import as_image
    from napari_wsseg.sample import make_phantom

    image = as_image(make_phantom((8, 384, 384), seed=1, n_classes=4)[0], source="phantom")
    steps = args.throughput_steps
    for round_ in range(args.rounds):
        for name, options in THROUGHPUT_VARIANTS.items():
            config = PretrainConfig(
                arch=args.arch, patch_size=args.patch_size, batch=args.batch, steps=steps
            )
            config = PretrainConfig.from_dict(config.to_dict() | options)
            marks = []  # (wall, cpu) after each step
            with tempfile.TemporaryDirectory() as folder:
                pretrain(
                    image,
                    Path(folder) / "backbone",
                    config,
                    device=args.device,
                    report_every_s=0,
                    progress=lambda e: marks.append((time.perf_counter(), time.process_time())),
                )
            wall = (marks[-1][0] - marks[0][0]) / (len(marks) - 1)
            cpu = (marks[-1][1] - marks[0][1]) / (len(marks) - 1)
            _emit(
                out,
                {
                    "throughput": name,
                    "round": round_,
                    "config": options,
                    "batch": config.batch,
                    "steps_timed": len(marks) - 1,
                    "windows_per_s_wall": round(config.batch / wall, 2),
                    "windows_per_s_cpu": round(config.batch / cpu, 2),
                    "threads": torch.get_num_threads(),
                    "load_average": round(os.getloadavg()[0], 1),
                },
            )


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="drosophila_vnc,cdeep3m_mito")
    parser.add_argument(
        "--minutes", default="15,30,60,120", help="pretraining budgets, comma-separated"
    )
    parser.add_argument("--split", default="scored", choices=["validation", "scored"])
    parser.add_argument("--arch", default="vit_tiny_patch16_224")
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--fast-views",
        action="store_true",
        help="pretrain with `wsseg pretrain --fast-views` (64/32 px views, 4 local crops)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--crop", type=int, default=0, help="use only the top-left CROP x CROP pixels (smoke runs)"
    )
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "wsseg-pretrain-bench"),
        help="folder for the backbones (reused when finished)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines here too")
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="only measure windows/s of the default, fast-view and patch-16 settings on the "
        "phantom (no data sets, no probes)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--throughput: alternations")
    parser.add_argument(
        "--throughput-steps", type=int, default=4, help="--throughput: steps per run (>= 2)"
    )
    args = parser.parse_args(argv)
    args.minutes = [float(m) for m in args.minutes.split(",")]
    out = Path(args.out) if args.out else None
    if args.throughput:
        throughput(args, out)
        return 0
    for name in args.datasets.split(","):
        run_dataset(name, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
