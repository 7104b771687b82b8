"""Benchmark of ``wsseg measure``: throughput (voxels/s) and peak memory on phantom label volumes.

For each size (GiB of uint8 voxels, shape ``(256 * size, 2048, 2048)``, as in
``benchmarks/batch_predict.py``) a class-id volume is assembled chunk by chunk in zarr from shifted
and flipped copies of a phantom label tile (so objects cross chunks and blocks), then
``wsseg measure VOLUME --out TABLE.csv --instances INSTANCES.zarr`` runs in a subprocess while this
script samples its resident memory every 0.1 s. Volumes and outputs are deleted afterwards.
One JSON line per size is printed::

    python benchmarks/measure.py --sizes 0.25
    python benchmarks/measure.py --sizes 0.25,1 --classes 2,3
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

SIDE = 2048
TILE = (16, 512, 512)
CHUNKS = (64, 256, 256)


def make_label_volume(path: Path, size_gib: float, seed: int = 0) -> tuple[int, int, int]:
    """Write a uint8 class-id zarr volume of ``size_gib`` from phantom label tiles."""
    import zarr

    from napari_wsseg.sample import make_phantom

    shape = (max(1, round(size_gib * (1 << 30) / SIDE**2)), SIDE, SIDE)
    tile = make_phantom(TILE, seed=seed)[1].astype(np.uint8)
    rng = np.random.default_rng(seed)
    chunks = tuple(min(c, s) for c, s in zip(CHUNKS, shape))
    array = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=np.uint8)
    for z0 in range(0, shape[0], chunks[0]):
        for y0 in range(0, shape[1], chunks[1]):
            for x0 in range(0, shape[2], chunks[2]):
                z1, y1, x1 = (min(a + c, s) for a, c, s in zip((z0, y0, x0), chunks, shape))
                oy = rng.integers(0, TILE[1] - (y1 - y0) + 1)
                ox = rng.integers(0, TILE[2] - (x1 - x0) + 1)
                piece = tile[np.arange(z0, z1) % TILE[0], oy : oy + y1 - y0, ox : ox + x1 - x0]
                array[z0:z1, y0:y1, x0:x1] = piece[:, ::-1] if rng.random() < 0.5 else piece
    return shape


def run_measure(volume: Path, scratch: Path, classes: str | None) -> dict:
    """Run ``wsseg measure`` in a subprocess; return seconds and peak RSS (MB)."""
    import psutil

    command = [sys.executable, "-m", "napari_wsseg.cli", "measure", str(volume),
               "--out", str(scratch / "table.csv"), "--instances", str(scratch / "instances.zarr")]
    if classes:
        command += ["--classes", classes]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        process = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, process.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"wsseg measure failed ({proc.returncode}): {errors[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20, **json.loads(output.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.25", help="volume sizes in GiB, comma-separated")
    parser.add_argument("--classes", default=None, help="--classes passed to wsseg measure")
    parser.add_argument("--scratch", default=None, help="folder for the volumes (default: a temporary one)")
    args = parser.parse_args(argv)
    for size in (float(s) for s in args.sizes.split(",")):
        scratch = Path(tempfile.mkdtemp(prefix="wsseg-bench-measure-", dir=args.scratch))
        try:
            start = time.perf_counter()
            shape = make_label_volume(scratch / "labels.zarr", size)
            made = time.perf_counter() - start
            result = run_measure(scratch / "labels.zarr", scratch, args.classes)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        voxels = int(np.prod(shape))
        print(json.dumps({
            "size_gib": size, "shape": shape, "classes": args.classes or "all",
            "volume_seconds": round(made, 1), "seconds": round(result["seconds"], 1),
            "voxels_per_s": round(voxels / result["seconds"]), "peak_rss_mb": round(result["peak_rss_mb"]),
            "objects": result["objects_measured"], "cpus": os.cpu_count(), "machine": platform.machine(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
