"""What dsp's ``cpu_bf16`` (bf16 autocast for training on CPUs with native bf16) buys, and
whether it costs determinism.

Trains dsp on the protocol's annotated slices of a dataset (4 clicks / class / slice, seed 0)
for ``--steps`` steps with ``cpu_bf16`` on and off, alternating ``--rounds`` times, and prints
seconds per step of each; then repeats one short bf16 run and reports whether the two runs gave
bit-identical weights.

    .venv/bin/python benchmarks/cpu_bf16.py --dataset cdeep3m_mito --steps 60 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import SPLITS, load_dataset, make_deterministic, scenario_annotations  # noqa: E402


def train(image, ann, steps: int, bf16: bool, seed: int = 0):
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.dsp.method import DSPMethod

    method = DSPMethod(max_steps=steps, cpu_bf16=bf16, prior_correction=False)
    start = time.perf_counter()
    method.fit(image, ann, FitOptions(device="cpu", seed=seed))
    return method, (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="cdeep3m_mito", choices=list(SPLITS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from napari_wsseg.engine.trainer import cpu_bf16_supported
    from napari_wsseg.io.image import as_image

    make_deterministic()
    image_zyx, labels, classes = load_dataset(args.dataset)
    ann = scenario_annotations("pts4", labels, classes, SPLITS[args.dataset].annotated, 0)
    image = as_image(image_zyx)
    print(f"native bf16 on this CPU: {cpu_bf16_supported()}")
    train(image, ann, 5, True)  # imports, caches, first-call kernels
    seconds = {True: [], False: []}
    for _ in range(args.rounds):
        for bf16 in (True, False):
            seconds[bf16].append(train(image, ann, args.steps, bf16)[1])
    print("| cpu_bf16 | s/step (each round) | mean |")
    print("|---|---|---|")
    for bf16, values in seconds.items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {bf16} | {rounds} | {np.mean(values):.3f} |")
    first, _ = train(image, ann, 20, True, seed=1)
    second, _ = train(image, ann, 20, True, seed=1)
    a, b = first.net.state_dict(), second.net.state_dict()
    same = all(bool((a[k] == b[k]).all()) for k in a)
    print(f"two bf16 runs, same seed, 20 steps: weights bit-identical = {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
