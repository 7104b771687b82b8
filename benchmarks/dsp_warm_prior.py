"""What re-estimating dsp's prior correction after a short warm run costs (session 10, issue 17).

From a saved ``protocol.py --save-models`` pts4 model, one corrective click on the first
annotated slice (as ``interactive_loop.py live``), then one live run of ``--steps`` (20) focused
on it, twice from the same weights: once as dsp does since session 10 (the previous model's
prior correction kept) and once from a copy without a correction, so the run estimates its own
from the labelled pixels its few steps saw (what every warm run did before). Held-out Dice of
the start model and of both runs, for each ``--lr-factors`` share of the learning rate.

    .venv/bin/python benchmarks/dsp_warm_prior.py --dataset drosophila_vnc \\
        --start-model MODELS/drosophila_vnc_dsp_pts4_s0_47b5310958064343
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interactive_loop as loop  # noqa: E402
from live_latency import corrective_row  # noqa: E402
from protocol import SPLITS, load_dataset, make_deterministic  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, choices=["drosophila_vnc", "cdeep3m_mito"])
    parser.add_argument("--start-model", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr-factors", default="0.1,0.03", help="comma-separated")
    parser.add_argument("--results", type=Path, default=None, help="JSONL file to append to")
    args = parser.parse_args(argv)
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import load_model

    make_deterministic()
    image_zyx, labels, classes = load_dataset(args.dataset)
    image, names = as_image(image_zyx), [c.name for c in classes]
    split = SPLITS[args.dataset]
    held_out, z = list(split.validation), split.annotated[0]
    annotations = loop.clicks(labels, classes, split.annotated, 4, 0)
    start = load_model(args.start_model)
    without = copy.copy(start)
    without.log_prior_shift = None
    start_dice = loop.dice(start, image, labels, held_out, names)
    y, x, cls = corrective_row(
        labels[z], start.predict_slice(image.slice(z)), np.random.default_rng(5)
    )
    annotations = loop.with_points(annotations, np.array([[z, y, x, cls]]))
    records = []
    for factor in (float(f) for f in args.lr_factors.split(",")):
        record = {"dataset": args.dataset, "lr_factor": factor, "start": round(start_dice, 4)}
        for arm, init in (("kept", start), ("re_estimated", without)):
            model, seconds = loop.train(
                "dsp",
                {},
                image,
                annotations,
                0,
                init=init,
                warm_steps=args.steps,
                focus=np.array([[z, y, x]]),
                warm_lr_factor=factor,
            )
            record[arm] = round(loop.dice(model, image, labels, held_out, names), 4)
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.results:
        with open(args.results, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
