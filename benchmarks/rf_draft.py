"""How good and how fast is a draft of rf's prediction from its first trees? (issue 17, live mode)

Live mode shows a draft of the slice from the forest's first ``DRAFT_TREES`` trees before the
prediction of the whole forest. This script chooses that number: per dataset and seed it fits
rf (default 100 trees) on 4 simulated clicks per class on the protocol's 8 annotated slices
(``benchmarks/protocol.py``), then predicts the ``--split`` slices (default: validation) with the
first k trees for each k of ``--trees`` and reports

* ``agree``: the share of pixels whose class equals the whole forest's;
* ``mean_fg_dice``: against the ground truth;
* ``predict_s``: seconds for the forest walk of one slice (features computed once, outside).

    .venv/bin/python benchmarks/rf_draft.py --out benchmarks/results/rf_draft.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import SPLITS, load_dataset, scenario_annotations  # noqa: E402


def run(name: str, seed: int, trees: list[int], split: str) -> list[dict]:
    from napari_wsseg.eval.metrics import evaluate
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.rf import RandomForestMethod, forest_proba

    image, labels, classes = load_dataset(name)
    zs = list(getattr(SPLITS[name], split))
    annotations = scenario_annotations("pts4", labels, classes, SPLITS[name].annotated, seed)
    model = RandomForestMethod(n_estimators=max(trees))
    model.fit(as_image(image), annotations, FitOptions(device="cpu", seed=seed))
    features = {z: model.features(image[z][..., None]) for z in zs}
    predictions, seconds = {}, {}
    for k in trees:
        pred = np.zeros(labels.shape, np.uint8)
        start = time.perf_counter()
        for z in zs:
            f = features[z]
            proba = forest_proba(model.forest, f.reshape(-1, f.shape[-1]), k)
            pred[z] = model.forest.classes_[proba.argmax(1)].reshape(f.shape[:2])
        seconds[k] = (time.perf_counter() - start) / len(zs)
        predictions[k] = pred
    full = predictions[max(trees)]
    rows = []
    for k in trees:
        result = evaluate(predictions[k], labels, slices=zs, class_names=[c.name for c in classes])
        agree = np.mean([np.mean(predictions[k][z] == full[z]) for z in zs])
        rows.append(
            {
                "dataset": name,
                "split": split,
                "seed": seed,
                "trees": k,
                "of_trees": max(trees),
                "agree": round(float(agree), 4),
                "mean_fg_dice": round(float(result["mean_fg_dice"]), 4),
                "predict_s": round(seconds[k], 3),
                "slice_shape": list(labels.shape[1:]),
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="drosophila_vnc,cdeep3m_mito")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trees", default="8,16,24,32,50,100")
    parser.add_argument("--split", default="validation", choices=["validation", "scored"])
    parser.add_argument("--out", default=None, help="append JSON lines here too")
    args = parser.parse_args(argv)
    trees = sorted(int(t) for t in args.trees.split(","))
    records = []
    for name in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for row in run(name, seed, trees, args.split):
                print(json.dumps(row), flush=True)
                records.append(row)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print("\n| dataset | trees | agreement with the forest | mean fg Dice | s per slice |")
    print("|---|---|---|---|---|")
    for name in args.datasets.split(","):
        for k in trees:
            mine = [r for r in records if r["dataset"] == name and r["trees"] == k]
            agree = np.array([r["agree"] for r in mine]) * 100
            dice = np.array([r["mean_fg_dice"] for r in mine]) * 100
            secs = np.array([r["predict_s"] for r in mine])
            print(
                f"| {name} | {k} | {agree.mean():.1f} ± {agree.std():.1f} % "
                f"| {dice.mean():.1f} ± {dice.std():.1f} | {secs.mean():.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
