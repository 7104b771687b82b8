"""Benchmark of block-wise batch prediction: throughput, peak memory and the limits it meets.

For each volume size (GiB of uint8 voxels, shape ``(256 * size, 2048, 2048)``) a phantom volume is
generated chunk by chunk into zarr (tiles of the procedural FIB-SEM phantom, so memory stays
small), then, for each method and scheduler, ``predict_volume`` runs in a fresh subprocess while
this script samples the resident memory of its whole process tree (dask workers included).
Measured in the same run:

- the I/O limit: reading the volume and writing a uint8 volume of the same shape with the output's
  chunking (dask, threads): what the disk and the codec allow;
- the compute limit: the model on block inputs already in memory;
- the pipeline as a fraction of the slower of the two.

CPU time of the tree is sampled too: "CPU efficiency" (CPU seconds per voxel of the model alone
over those of the whole pipeline) does not depend on what else runs on a shared machine.

Volumes and outputs are deleted as soon as they are measured. Results are appended to a JSON file;
``--md`` writes them as a Markdown table. What produced docs/benchmarks_batch.md::

    python benchmarks/batch_predict.py --sizes 0.25,1 --methods rf --schedulers threads,cluster
    python benchmarks/batch_predict.py --sizes 4 --methods rf --schedulers cluster,threads
    python benchmarks/batch_predict.py --sizes 0.00390625 --methods dsp --schedulers threads,cluster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 2048  # y and x of every benchmark volume
TILE = (16, 512, 512)  # phantom tile the volumes are assembled from
INPUT_CHUNKS = (64, 256, 256)  # as written by `wsseg import`
BLOCK = (64, 512, 512)
RF_OPTIONS = dict(n_estimators=2, max_depth=6, sigma_min=1.0, sigma_max=1.0, num_sigma=1,
                  max_samples_per_class=2000)
DSP_TRAIN_SECONDS = 60.0


# ------------------------------------------------------------------------- data and models
def volume_shape(size_gib: float) -> tuple[int, int, int]:
    return (max(1, round(size_gib * (1 << 30) / SIDE**2)), SIDE, SIDE)


def make_volume(path: Path, shape, tile: np.ndarray, seed: int = 0) -> float:
    """Write a uint8 zarr volume chunk by chunk from shifted, flipped copies of ``tile``.

    Returns the seconds it took."""
    import zarr

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    chunks = tuple(min(c, s) for c, s in zip(INPUT_CHUNKS, shape))
    array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=np.uint8)
    cz, cy, cx = array.chunks
    for z0 in range(0, shape[0], cz):
        for y0 in range(0, shape[1], cy):
            for x0 in range(0, shape[2], cx):
                z1, y1, x1 = min(z0 + cz, shape[0]), min(y0 + cy, shape[1]), min(x0 + cx, shape[2])
                oy = rng.integers(0, TILE[1] - (y1 - y0) + 1)
                ox = rng.integers(0, TILE[2] - (x1 - x0) + 1)
                piece = tile[np.arange(z0, z1) % TILE[0], oy : oy + y1 - y0, ox : ox + x1 - x0]
                array[z0:z1, y0:y1, x0:x1] = piece[:, ::-1] if rng.random() < 0.5 else piece
    return time.perf_counter() - start


def train_models(methods, tile, labels, classes, folder: Path) -> dict[str, Path]:
    from napari_wsseg.annotations.model import Annotations
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods import get_method
    from napari_wsseg.methods.base import FitOptions

    masks = np.zeros_like(labels[:4])
    masks[0] = labels[0] + 1
    annotations = Annotations(classes=classes, masks=masks)
    paths = {}
    for name in methods:
        if name == "rf":
            model, options = get_method("rf")(**RF_OPTIONS), FitOptions(seed=0)
        else:
            model = get_method(name)()
            options = FitOptions(seed=0, device="auto", time_budget_s=DSP_TRAIN_SECONDS)
        model.fit(as_image(tile[:4]), annotations, options)
        paths[name] = model.save(folder / name)
    return paths


# ---------------------------------------------------------------------------------- limits
def io_limit(volume: Path, scratch: Path) -> dict:
    """Read the volume and write a uint8 volume of its shape with the output chunking."""
    import dask.array as da
    import zarr

    from napari_wsseg.predict.volume import output_chunks

    source = zarr.open_array(str(volume), mode="r")
    block = tuple(min(b, s) for b, s in zip(BLOCK, source.shape))
    target = zarr.create_array(str(scratch), shape=source.shape, chunks=output_chunks(block),
                               dtype=np.uint8)
    start = time.perf_counter()
    da.store(da.from_zarr(source, chunks=block), target, lock=False, scheduler="threads")
    seconds = time.perf_counter() - start
    shutil.rmtree(scratch)
    return {"seconds": seconds, "voxels_per_s": int(np.prod(source.shape)) / seconds}


def compute_limit(model_dir: Path, volume: Path, min_seconds: float = 10.0) -> dict:
    """The model on block inputs already in memory (reading excluded), at least ``min_seconds``."""
    from napari_wsseg.methods.base import load_model
    from napari_wsseg.predict.volume import (
        block_grid,
        block_region,
        model_halo,
        open_image,
        predict_block_input,
        read_block_input,
    )

    model = load_model(model_dir)
    image = open_image(volume)
    block = tuple(min(b, s) for b, s in zip(BLOCK, image.shape))
    grid = block_grid(image.shape, block)
    region = block_region(grid[len(grid) // 2], block, image.shape)
    data, crop = read_block_input(image, region, model_halo(model))
    voxels = seconds = 0.0
    cpu_start = time.process_time()
    while seconds < min_seconds:
        start = time.perf_counter()
        predict_block_input(model, data, crop)
        seconds += time.perf_counter() - start
        voxels += data.shape[0] * (crop[0].stop - crop[0].start) * (crop[1].stop - crop[1].start)
    return {"seconds": seconds, "voxels_per_s": voxels / seconds,
            "cpu_s_per_mvox": (time.process_time() - cpu_start) / voxels * 1e6}


# -------------------------------------------------------------------------------- pipeline
RUN_SCRIPT = """
import json, sys, time
from napari_wsseg.predict.volume import predict_volume
events = []
scheduler = sys.argv[4]
result = predict_volume(sys.argv[1], sys.argv[2], sys.argv[3], block=tuple(json.loads(sys.argv[5])),
                        scheduler="processes" if scheduler == "cluster" else scheduler, n_workers=2,
                        progress=lambda event: events.append(time.perf_counter()))
end = time.perf_counter()
# events[0]: outputs created; events[1]: first block written; events[-1]: last block written.
# perf_counter is CLOCK_MONOTONIC, shared with the parent, which samples CPU time on that clock.
times = [events[1] - events[0], events[-1] - events[1], end - events[-1]]
print(json.dumps({**result.to_dict(), "times": times, "marks": [events[1], events[-1]]}))
"""


def pipeline(model_dir: Path, volume: Path, out: Path, scheduler: str, shape) -> dict:
    """Run predict_volume in a subprocess; sample the RSS of its process tree every 0.1 s."""
    import psutil

    block = [min(b, s) for b, s in zip(BLOCK, shape)]
    # Output to files, not pipes: dask workers inherit them and would block on a full pipe.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        command = [sys.executable, "-c", RUN_SCRIPT, str(model_dir), str(volume), str(out),
                   scheduler, json.dumps(block)]
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        root = psutil.Process(proc.pid)
        peak_tree = 0
        cpu_by_pid: dict[int, float] = {}
        cpu_samples = []  # (perf_counter, CPU seconds of the whole tree so far)
        while proc.poll() is None:
            peak_tree = max(peak_tree, _tree_sample(root, cpu_by_pid))
            cpu_samples.append((time.perf_counter(), sum(cpu_by_pid.values())))
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{scheduler} run failed ({proc.returncode}): {errors[-2000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    voxels = int(np.prod(shape))
    for path in (out, out.with_name(out.stem + "_probabilities.zarr")):
        shutil.rmtree(path, ignore_errors=True)
    # Steady throughput: from the first block written to the last (start-up, i.e. imports, model
    # loading, cluster start and the first block, and the pyramid at the end are listed apart).
    first_block, blocks, pyramid = result["times"]
    if result["blocks"] > 1:
        steady = voxels * (result["blocks"] - 1) / result["blocks"] / blocks
    else:
        steady = voxels / first_block
    steady_cpu = _cpu_at(cpu_samples, result["marks"][1]) - _cpu_at(cpu_samples, result["marks"][0])
    steady_voxels = voxels * (result["blocks"] - 1) / result["blocks"]
    return {"seconds": seconds, "startup_seconds": seconds - blocks - pyramid,
            "pyramid_seconds": pyramid,
            "voxels_per_s": steady, "wall_voxels_per_s": voxels / seconds,
            "cpu_s_per_mvox": steady_cpu / steady_voxels * 1e6 if steady_voxels else None,
            "peak_rss_tree_mb": peak_tree / 2**20, "blocks": result["blocks"]}


def _cpu_at(samples, when: float) -> float:
    """CPU seconds of the tree at the sample nearest to ``when``."""
    return min(samples, key=lambda sample: abs(sample[0] - when))[1]


def _tree_sample(root, cpu_by_pid: dict) -> int:
    """RSS of the process tree now; updates the CPU seconds seen per process."""
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
            times = process.cpu_times()
            cpu_by_pid[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.25,1,4",
                        help="volume sizes in GiB (default 0.25,1,4)")
    parser.add_argument("--methods", default="rf", help="methods, e.g. rf,dsp (default rf)")
    parser.add_argument("--schedulers", default="threads,cluster",
                        help="threads and/or cluster (a LocalCluster of 2 worker processes)")
    parser.add_argument("--workdir", default=None,
                        help="scratch folder (default: a temporary folder)")
    parser.add_argument("--json", default="benchmark_batch.json", help="results file (appended to)")
    parser.add_argument("--md", default=None,
                        help="write a Markdown table of all results in --json here")
    args = parser.parse_args(argv)

    from napari_wsseg.sample import make_phantom

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wsseg-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tile, labels, classes = make_phantom(TILE, seed=0)
    methods = args.methods.split(",")
    models = train_models(methods, tile, labels, classes, workdir / "models")
    results = _load(args.json)
    for size in (float(s) for s in args.sizes.split(",")):
        shape = volume_shape(size)
        volume = workdir / f"volume_{size}.zarr"
        generate_s = make_volume(volume, shape, tile)
        io = io_limit(volume, workdir / "io_limit.zarr")
        print(f"{size} GiB {shape}: generated in {generate_s:.0f} s, "
              f"I/O limit {io['voxels_per_s'] / 1e6:.1f} Mvox/s", flush=True)
        for method in methods:
            compute = compute_limit(models[method], volume)
            for scheduler in args.schedulers.split(","):
                run = pipeline(models[method], volume, workdir / "pred.zarr", scheduler, shape)
                limit = min(io["voxels_per_s"], compute["voxels_per_s"])
                efficiency = None
                if run["cpu_s_per_mvox"]:
                    efficiency = compute["cpu_s_per_mvox"] / run["cpu_s_per_mvox"]
                row = {"size_gib": size, "shape": list(shape), "method": method,
                       "scheduler": scheduler, "io_limit_vox_s": io["voxels_per_s"],
                       "compute_limit_vox_s": compute["voxels_per_s"],
                       "compute_cpu_s_per_mvox": compute["cpu_s_per_mvox"],
                       **{f"pipeline_{k}": v for k, v in run.items()},
                       "fraction_of_limit": run["voxels_per_s"] / limit,
                       "cpu_efficiency": efficiency,
                       "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M")}
                results.append(row)
                _save(args.json, results)
                print(json.dumps(row), flush=True)
        shutil.rmtree(volume)
    shutil.rmtree(workdir / "models", ignore_errors=True)
    if args.md:
        Path(args.md).write_text(markdown(results))
    return 0


def _load(path) -> list:
    return json.loads(Path(path).read_text()) if Path(path).exists() else []


def _save(path, results) -> None:
    Path(path).write_text(json.dumps(results, indent=1))


def markdown(results: list[dict]) -> str:
    lines = [
        "| volume | method | scheduler | pipeline Mvox/s | I/O limit Mvox/s | "
        "compute limit Mvox/s | pipeline / slower limit | CPU efficiency | peak RSS (MiB) | "
        "start-up s | wall s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        volume = f"{r['size_gib']:g} GiB {tuple(r['shape'])}"
        efficiency = f"{100 * r['cpu_efficiency']:.0f} %" if r.get("cpu_efficiency") else "-"
        lines.append(
            f"| {volume} | {r['method']} | {r['scheduler']} | "
            f"{r['pipeline_voxels_per_s'] / 1e6:.2f} | {r['io_limit_vox_s'] / 1e6:.1f} | "
            f"{r['compute_limit_vox_s'] / 1e6:.2f} | {100 * r['fraction_of_limit']:.0f} % | "
            f"{efficiency} | {r['pipeline_peak_rss_tree_mb']:.0f} | "
            f"{r['pipeline_startup_seconds']:.0f} | {r['pipeline_seconds']:.0f} | "
            f"{r['load_avg_1min']:.1f} |"
        )
    env = f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}"
    return "\n".join(lines) + f"\n\n{env}\n"


if __name__ == "__main__":
    sys.exit(main())
