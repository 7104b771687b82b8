"""Choices made after training, scored on saved protocol models (no retraining).

``benchmarks/protocol.py --save-models DIR`` keeps each trained model; this script reloads the
models of the records it is given and scores, on the record's split, the variants of a choice
that does not change the training:

* ``prior`` (dsp, and any method): the class-prior correction applied to the logits after
  training. ``none``: no shift; ``one-step``: log(image prior / training prior), the image prior
  being the mean predicted probability (dsp's default; ``one-step, saved`` is the shift dsp saved,
  estimated on random training crops); ``em``: the same correction iterated to its
  fixed point (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to
  new a priori probabilities"): the prior is re-estimated from the corrected probabilities until
  it no longer changes. Both estimate the image prior on every ``--stride``-th pixel of the
  annotated slices; the training prior is dsp's recorded one, else that of the record's clicks.
* ``inference`` (rewis3d): predict from the 2D student, the 3D student or their average, each
  with the z context it asks for.
* ``score``: the saved model as it is. With ``--split scored`` it scores models trained in
  validation runs on the scored slices: training sees only the annotated slices, never the
  split, so this is the scored run of the same model (a run cut by a time budget would not
  repeat its step count exactly).

    .venv/bin/python benchmarks/posthoc.py prior \\
        --results benchmarks/results/protocol_session7.jsonl
    .venv/bin/python benchmarks/posthoc.py inference --results benchmarks/results/protocol.jsonl \\
        --method rewis3d
    .venv/bin/python benchmarks/posthoc.py score --results benchmarks/results/protocol.jsonl \\
        --method rewis3d --split scored
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import SPLITS, load_dataset, read_records, scenario_annotations  # noqa: E402


def em_prior(proba: np.ndarray, train_prior: np.ndarray, iterations: int = 200) -> np.ndarray:
    """The image prior at the fixed point of Saerens et al.'s EM, from ``(N, C)`` probabilities
    of a model trained under ``train_prior``.

    Examples
    --------
    >>> p = np.array([[0.95, 0.05], [0.1, 0.9], [0.5, 0.5], [0.9, 0.1]])
    >>> p.mean(axis=0).round(4).tolist(), em_prior(p, np.array([0.5, 0.5])).round(2).tolist()
    ([0.6125, 0.3875], [0.72, 0.28])
    """
    prior = train_prior.copy()
    for _ in range(iterations):
        adjusted = proba * (prior / train_prior)[None]
        adjusted /= adjusted.sum(axis=1, keepdims=True)
        new = adjusted.mean(axis=0)
        if np.abs(new - prior).max() < 1e-6:
            return new
        prior = new
    return prior


def _shifted_labels(raw: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Labels of ``(C, Y, X)`` probabilities after adding ``shift`` to their log."""
    return np.argmax(np.log(np.maximum(raw, 1e-12)) + shift[:, None, None], axis=0)


def training_prior(model, record: dict, labels, classes) -> np.ndarray:
    """The class prior of the labelled pixels the model learnt from: dsp records it; for other
    methods the record's simulated clicks are counted (add-one smoothed, as dsp does)."""
    recorded = getattr(model, "fit_info", {}).get("train_prior")
    if recorded is not None:
        return np.asarray(recorded, dtype=np.float64)
    split = SPLITS[record["dataset"]]
    points = scenario_annotations(
        record["scenario"], labels, classes, split.annotated, record["seed"]
    ).points
    counts = np.bincount(points[:, 3], minlength=len(classes)).astype(np.float64)
    return (counts + 1) / (counts.sum() + len(counts))


def prior_variants(model, image, labels, record: dict, stride: int) -> dict[str, np.ndarray]:
    """Predicted labels of the record's split slices per prior-correction variant."""
    from napari_wsseg.predict.slices import predict_slice_proba

    n_classes = len(model.classes)
    saved = getattr(model, "log_prior_shift", None)
    if saved is not None:
        model.log_prior_shift = None  # raw probabilities from here on
    split = SPLITS[record["dataset"]]
    sample = np.concatenate(
        [
            predict_slice_proba(model, image, z)[:, ::stride, ::stride].reshape(n_classes, -1).T
            for z in split.annotated
        ]
    )
    train_prior = training_prior(model, record, labels, model.classes)
    one_step = np.log(np.maximum(sample.mean(axis=0), 1e-6) / train_prior)
    em_shift = np.log(np.maximum(em_prior(sample, train_prior), 1e-6) / train_prior)
    shifts = {"none": np.zeros(n_classes), "one-step": one_step, "em": em_shift}
    if saved is not None:
        shifts["one-step, saved"] = np.asarray(saved)
    out = {name: np.zeros(labels.shape, np.uint8) for name in shifts}
    for z in getattr(split, record["split"]):
        raw = predict_slice_proba(model, image, z)
        for name, shift in shifts.items():
            out[name][z] = _shifted_labels(raw, shift)
    return out


def inference_variants(model, image, labels, record: dict, stride: int) -> dict[str, np.ndarray]:
    """Predicted labels of the record's split slices from the 2D, the 3D student and both."""
    from napari_wsseg.predict.slices import predict_slice_proba

    out = {}
    for inference in ("2d", "3d", "average"):
        model.config = dataclasses.replace(model.config, inference=inference)
        pred = np.zeros(labels.shape, np.uint8)
        for z in getattr(SPLITS[record["dataset"]], record["split"]):
            pred[z] = np.argmax(predict_slice_proba(model, image, z), axis=0)
        out[inference] = pred
    return out


def as_saved(model, image, labels, record: dict, stride: int) -> dict[str, np.ndarray]:
    """Predicted labels of the record's split slices from the saved model as it is."""
    from napari_wsseg.predict.slices import predict_slice_proba

    pred = np.zeros(labels.shape, np.uint8)
    for z in getattr(SPLITS[record["dataset"]], record["split"]):
        pred[z] = np.argmax(predict_slice_proba(model, image, z), axis=0)
    return {"saved": pred}


ANALYSES = {"prior": prior_variants, "inference": inference_variants, "score": as_saved}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("analysis", choices=sorted(ANALYSES))
    parser.add_argument("--results", type=Path, required=True, help="protocol JSONL records")
    parser.add_argument("--method", default="dsp")
    parser.add_argument("--stride", type=int, default=4, help="prior: pixel stride of the sample")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here too")
    parser.add_argument(
        "--split",
        choices=sorted(("validation", "scored")),
        default=None,
        help="score these slices instead of the record's split (training never saw either)",
    )
    args = parser.parse_args(argv)

    from napari_wsseg.eval.metrics import evaluate
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import load_model

    records = [
        r | {"trained_in_split": r["split"], "split": args.split or r["split"]}
        for r in read_records(args.results)
        if r["method"] == args.method and "model_dir" in r
    ]
    if not records:
        raise SystemExit(f"{args.results}: no {args.method} record with a saved model_dir")
    datasets = {}
    for record in records:
        name = record["dataset"]
        if name not in datasets:
            datasets[name] = load_dataset(name)
        image_zyx, labels, classes = datasets[name]
        model = load_model(record["model_dir"])
        variants = ANALYSES[args.analysis](model, as_image(image_zyx), labels, record, args.stride)
        zs = list(getattr(SPLITS[name], record["split"]))
        for variant, pred in variants.items():
            scores = evaluate(pred, labels, slices=zs, class_names=[c.name for c in classes])
            row = {
                k: record[k]
                for k in ("dataset", "split", "trained_in_split", "method", "scenario", "seed")
            } | {
                "options": record["options"],
                "steps": record.get("steps"),
                "model_dir": record["model_dir"],
                "analysis": args.analysis,
                "variant": variant,
                "mean_fg_dice": round(float(scores["mean_fg_dice"]), 4),
                "dice": {c.name: round(float(d), 4) for c, d in zip(classes, scores["dice"])},
                "record_dice": record["mean_fg_dice"],
            }
            print(json.dumps(row), flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
