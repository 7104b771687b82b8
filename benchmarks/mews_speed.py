"""MEWS speed, feature-cache memory and loss ablation (CPU; CUDA when one is visible).

No pretrained weights can be downloaded on the development machine, so the recorded numbers use a
backbone with RANDOM weights (``--backbone-weights random``). Speed does not depend on the weights;
the ablation's Dice values then only show that the machinery runs end to end and are NOT the quality
MEWS reaches with DINOv3 weights. On a machine with the weights cached, run the ablation with
``--weights pretrained`` (or ``--weights FILE``).

    .venv/bin/python benchmarks/mews_speed.py speed --out benchmarks/results/mews_speed.jsonl
    .venv/bin/python benchmarks/mews_speed.py ablation --backbone vit_small_patch16_dinov3 \
        --out benchmarks/results/mews_ablation.jsonl
    .venv/bin/python benchmarks/mews_speed.py table benchmarks/results/mews_speed.jsonl

``speed`` measures backbone features per second per slice size, one training step, the time from
a new click to an updated prediction with cached features, and the feature-cache memory per slice.
``ablation`` follows the protocol of docs/benchmarks.md on drosophila_vnc (4 simulated clicks per
class on 8 slices from z 0-12, Dice on the held-out z 15-19) for each loss combination, plus the
nearest-class-centroid baseline on the raw backbone features. Each result is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DROSOPHILA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "drosophila_vnc"
EVAL_SLICES = [15, 16, 17, 18, 19]
ABLATIONS = {
    "all three losses": {},
    "no L_triplet": {"use_triplet": False},
    "no L_corr": {"use_corr": False},
    "L_proto only": {"use_corr": False, "use_triplet": False},
    "no L_proto": {"use_proto": False},
}


def _emit(out: Path | None, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def _timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _drosophila():
    from napari_wsseg.annotations.model import ClassInfo

    image = np.load(DROSOPHILA / "image.npy", mmap_mode="r")
    labels = np.load(DROSOPHILA / "labels.npy", mmap_mode="r")
    classes = [ClassInfo(c["name"], c["color"]) for c in json.loads((DROSOPHILA / "classes.json").read_text())]
    return image, labels, classes


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def bench_features(backbones, sizes, device, out) -> None:
    from napari_wsseg.engine.vit import load_backbone

    for name in backbones:
        vit = load_backbone(name, "random", device=device)
        for size in sizes:
            slices = np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32)
            seconds = _timed(lambda: vit.features(slices))
            hp, wp = vit.grid_shape((size, size))
            _emit(out, {"bench": "features", "backbone": name, "device": _device_name(device), "slice_px": size,
                        "s_per_slice": round(seconds, 3), "slices_per_s": round(1 / seconds, 3),
                        "patches_per_s": round(hp * wp / seconds), "cache_mb_per_slice":
                        round(hp * wp * vit.embed_dim * 2 / 2**20, 2)})


def bench_train_step(embed_dims, n_classes, device, out) -> None:
    import torch

    from napari_wsseg.methods.mews.heads import ProjectionHeads
    from napari_wsseg.methods.mews.losses import correlation_loss, prototype_loss, triplet_loss

    for dim in embed_dims:
        g = torch.Generator().manual_seed(0)
        x = torch.nn.functional.normalize(torch.randn(24, 400, dim, generator=g), dim=-1).to(device)
        proto_x = torch.nn.functional.normalize(torch.randn(160, dim, generator=g), dim=-1).to(device)
        labels = torch.arange(160, device=device) % n_classes
        betas = torch.full((24, 400), 0.2, device=device)
        heads = ProjectionHeads(n_classes, dim, 70, g).to(device)
        optimizer = torch.optim.Adam(heads.parameters(), lr=1e-4)

        def step():
            z = heads(x)
            loss = (correlation_loss(x, z, betas)
                    + prototype_loss(x, z, proto_x, labels, heads.centroids(proto_x, labels), torch.zeros(n_classes,
                                                                                                    device=device))
                    + triplet_loss(heads(proto_x), labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        seconds = _timed(step, repeats=5)
        _emit(out, {"bench": "train_step", "embed_dim": dim, "classes": n_classes, "batch": "24 crops x 400 patches",
                    "device": _device_name(device), "s_per_step": round(seconds, 4)})


def bench_click_to_prediction(backbone, runs, device, out) -> None:
    """Train on 8 drosophila slices (features computed once), add one click, retrain, predict a slice."""
    from napari_wsseg.eval.simulate import simulate_annotations
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.mews.method import MEWSMethod

    image, labels, classes = _drosophila()
    img = as_image(image)
    ann = simulate_annotations(labels, slices=8, slice_range=(0, 12), points=4, seed=0, classes=classes)
    options = FitOptions(device=str(device), seed=0)
    with tempfile.TemporaryDirectory() as cache_dir:
        first = MEWSMethod(backbone=backbone, backbone_weights="random", max_steps=runs[0][0], cache_dir=cache_dir)
        start = time.perf_counter()
        first.fit(img, ann, options)
        first_s = time.perf_counter() - start
        disk_mb = sum(f.stat().st_size for f in Path(cache_dir).rglob("*") if f.is_file()) / 2**20
    memory_mb = first.feature_cache.memory_bytes / 2**20
    ann.points = np.concatenate([ann.points, ann.points[:1] + [0, 1, 1, 0]])  # the "new click"
    for steps, corr_patches in runs:
        method = MEWSMethod(backbone=backbone, backbone_weights="random", max_steps=steps, corr_patches=corr_patches)
        method.share_feature_cache(first)
        start = time.perf_counter()
        method.fit(img, ann, options)
        method.predict_proba_slice(img.slice(int(ann.points[-1, 0])))  # the clicked slice: cached features
        again = time.perf_counter() - start
        _emit(out, {"bench": "click_to_prediction", "backbone": backbone, "device": _device_name(device),
                    "max_steps": steps, "corr_patches": corr_patches, "slices": 8, "slice_px": 1024,
                    "first_training_s": round(first_s, 1),
                    "new_click_to_prediction_s": round(again, 1),
                    "disk_cache_mb_per_slice": round(disk_mb / 8, 2),
                    "memory_cache_mb_per_slice": round(memory_mb / 8, 2)})


def run_ablation(backbone, weights, seeds, steps, lr, device, out) -> None:
    from napari_wsseg.eval.metrics import evaluate
    from napari_wsseg.eval.simulate import simulate_annotations
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.mews.method import MEWSMethod

    image, labels, classes = _drosophila()
    img, names = as_image(image), [c.name for c in classes]
    for seed in seeds:
        ann = simulate_annotations(labels, slices=8, slice_range=(0, 12), points=4, seed=seed, classes=classes)
        shared = None
        for run, switches in ABLATIONS.items():
            method = MEWSMethod(backbone=backbone, backbone_weights=weights, max_steps=steps, lr=lr, **switches)
            if shared is not None:
                method.share_feature_cache(shared)
            start = time.perf_counter()
            method.fit(img, ann, FitOptions(device=str(device), seed=seed))
            seconds = time.perf_counter() - start
            shared = shared or method
            pred = np.zeros((len(EVAL_SLICES),) + image.shape[1:], np.uint8)
            for i, z in enumerate(EVAL_SLICES):
                pred[i] = method.predict_slice(img.slice(z))
            _emit(out, _score(run, backbone, weights, seed, steps, lr, seconds, pred, labels, names, evaluate))
        _emit(out, _score("raw prototypes (no heads)", backbone, weights, seed, 0, 0, 0.0,
                          _nearest_centroid(shared, img, ann), labels, names, evaluate))


def _nearest_centroid(method, img, ann) -> np.ndarray:
    """DINO+prototypes baseline: nearest class centroid of the clicked patches' raw features."""
    import torch
    import torch.nn.functional as F

    p = method.backbone.patch_size
    zs = sorted(set(ann.points[:, 0].tolist()))
    feats = {z: F.normalize(torch.from_numpy(f).float(), dim=-1)
             for z, f in zip(zs, method._features([img.slice(z) for z in zs], persist=False))}
    protos = torch.stack([feats[z][y // p, x // p] for z, y, x, _ in ann.points.tolist()])
    cls = torch.as_tensor(ann.points[:, 3])
    centroids = F.normalize(torch.stack([protos[cls == c].mean(0) for c in range(ann.n_classes)]), dim=-1)
    pred = []
    for grid in method._features([img.slice(z) for z in EVAL_SLICES], persist=False):
        patch_labels = (F.normalize(torch.from_numpy(grid).float(), dim=-1) @ centroids.T).argmax(-1).numpy()
        pred.append(patch_labels.repeat(p, 0).repeat(p, 1)[: img.shape[1], : img.shape[2]])
    return np.stack(pred).astype(np.uint8)


def _score(run, backbone, weights, seed, steps, lr, seconds, pred, labels, names, evaluate) -> dict:
    gt = np.asarray(labels[EVAL_SLICES])
    result = evaluate(pred, gt, n_classes=len(names), class_names=names)
    source = "RANDOM weights" if weights == "random" else f"weights {weights or 'pretrained (timm)'}"
    return {"bench": "ablation", "run": run, "backbone": f"{backbone} ({source})", "seed": seed,
            "max_steps": steps, "lr": lr, "train_s": round(seconds, 1),
            "dice": {n: None if d is None else round(d, 3) for n, d in zip(names, result["dice"])},
            "mean_fg_dice": round(result["mean_fg_dice"], 3), "miou": round(result["miou"], 3)}


def print_table(path: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for kind in dict.fromkeys(r["bench"] for r in records):
        rows = [r for r in records if r["bench"] == kind]
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "bench"]
        print(f"\n**{kind}**\n\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(str(r.get(k)) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--backbones", nargs="+", default=["vit_small_patch16_dinov3", "vit_base_patch16_dinov3"])
    speed.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    speed.add_argument("--click-backbone", default="vit_small_patch16_dinov3")
    speed.add_argument("--click-runs", nargs="+", default=["100", "300", "100:128"],
                       help="retrainings after the new click: MAX_STEPS or MAX_STEPS:CORR_PATCHES")
    speed.add_argument("--parts", nargs="+", choices=["features", "train_step", "click"],
                       default=["features", "train_step", "click"])
    ablation = sub.add_parser("ablation")
    ablation.add_argument("--backbone", default="vit_small_patch16_dinov3")
    ablation.add_argument("--weights", default="random",
                          help="'random' (default), 'pretrained' (Hugging Face cache) or a weights file")
    ablation.add_argument("--seeds", nargs="+", type=int, default=[0])
    ablation.add_argument("--steps", type=int, default=300)
    ablation.add_argument("--lr", type=float, default=1e-4)
    for p in (speed, ablation):
        p.add_argument("--device", default="auto")
        p.add_argument("--out", type=Path, default=None)
    table = sub.add_parser("table")
    table.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "table":
        return print_table(args.results)
    from napari_wsseg.engine.devices import resolve_device

    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")  # every run here is random, by design
    device = resolve_device(args.device)
    if args.command == "speed":
        if "features" in args.parts:
            bench_features(args.backbones, args.sizes, device, args.out)
        if "train_step" in args.parts:
            bench_train_step([384, 768], 5, device, args.out)
        if "click" in args.parts:
            runs = [(int(r.split(":")[0]), int(r.split(":")[1]) if ":" in r else None) for r in args.click_runs]
            bench_click_to_prediction(args.click_backbone, runs, device, args.out)
    else:
        weights = None if args.weights == "pretrained" else args.weights
        run_ablation(args.backbone, weights, args.seeds, args.steps, args.lr, device, args.out)


if __name__ == "__main__":
    main()
