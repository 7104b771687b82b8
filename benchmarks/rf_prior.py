"""rf's class prior (``prior`` option): the forest's own training prior, balanced, or the image's.

For each dataset, seed and scenario of ``benchmarks/protocol.py`` one set of simulated
annotations is made and rf is trained once per prior (the forest is the same; only its
probabilities are re-weighted) and scored on the split's held-out slices (validation by
default). The filter features of every slice are computed once per dataset and shared by all
models (they depend on the image and the filter bank only). Prints a table per dataset, mean ± std
over the seeds, and appends one JSON line per run with ``--results``::

    .venv/bin/python benchmarks/rf_prior.py --datasets drosophila_vnc,cdeep3m_mito --seeds 0,1,2 \
        --results benchmarks/results/rf_prior.jsonl

The clicks-added-at-random loop, where the training prior drifts towards the common class, is
``interactive_loop.py suggest --options '{"prior": "image"}'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interactive_loop import train  # noqa: E402
from protocol import SPLITS, load_dataset, make_deterministic, scenario_annotations  # noqa: E402

PRIORS = ("training", "balanced", "image")


def scores(model, image, labels, slices: list[int], names: list[str]) -> dict:
    """Mean foreground Dice and per-class Dice of ``model`` on ``slices``."""
    from napari_wsseg.eval.metrics import evaluate

    pred = np.zeros(labels.shape, np.uint8)
    memo = model.feature_memo
    for z in slices:
        raw = image.slice(z)
        memo.get(memo.key(raw, model.normalization, model.config), lambda: model.features(raw))
        pred[z] = model.predict_slice(raw)
    result = evaluate(pred, labels, slices=slices, class_names=names)
    return {
        "dice": round(float(result["mean_fg_dice"]), 4),
        "class_dice": [round(float(d), 4) for d in result["dice"]],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="drosophila_vnc,cdeep3m_mito")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--scenarios", default="pts1,pts4,pts16,scribbles,masks")
    parser.add_argument("--priors", default=",".join(PRIORS))
    parser.add_argument("--split", choices=["validation", "scored"], default="validation")
    parser.add_argument("--results", type=Path, default=None, help="JSONL file to append to")
    args = parser.parse_args(argv)
    make_deterministic()
    from napari_wsseg.io.image import as_image

    priors = args.priors.split(",")
    for dataset in args.datasets.split(","):
        image_zyx, labels, classes = load_dataset(dataset)
        image, names = as_image(image_zyx), [c.name for c in classes]
        split = SPLITS[dataset]
        held_out = list(getattr(split, args.split))
        table: dict[tuple[str, str], list[float]] = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            for scenario in args.scenarios.split(","):
                ann = scenario_annotations(scenario, labels, classes, split.annotated, seed)
                for prior in priors:
                    model, seconds = train("rf", {"prior": prior}, image, ann, seed)
                    record = {
                        "bench": "rf_prior",
                        "dataset": dataset,
                        "split": args.split,
                        "seed": seed,
                        "scenario": scenario,
                        "prior": prior,
                        "train_s": round(seconds, 1),
                        **scores(model, image, labels, held_out, names),
                        "priors": model.prior_info,
                    }
                    table.setdefault((scenario, prior), []).append(record["dice"])
                    print(json.dumps(record), flush=True)
                    if args.results:
                        with open(args.results, "a") as fh:
                            fh.write(json.dumps(record) + "\n")
        print(f"\n# {dataset}, {args.split} slices {held_out}: mean fg Dice x 100, mean ± std")
        print("| scenario | " + " | ".join(priors) + " |")
        print("|---|" + "---|" * len(priors))
        for scenario in args.scenarios.split(","):
            cells = [
                f"{100 * np.mean(table[scenario, p]):.1f} ± {100 * np.std(table[scenario, p]):.1f}"
                for p in priors
            ]
            print(f"| {scenario} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
