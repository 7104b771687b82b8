"""The interactive loop (issue 17): warm vs cold retraining, and suggested vs random clicks.

Datasets and slice groups come from ``benchmarks/protocol.py`` (:data:`SPLITS`,
:func:`load_dataset`): clicks are simulated on the split's annotated slices and Dice is
measured on its held-out slices (``--split validation`` by default, ``scored`` to report).

``warm``: start from ``--start-points`` (4) clicks per class on every annotated slice, then in each
of ``--rounds`` (5) rounds add 1 click per class per slice; retrain once from scratch (cold) and
once warm (``fit(..., init=...)``) from the previous round's warm model (``--warm-from chain``, as
the plugin's loop does) or from its cold model (``--warm-from cold``). Per round: Dice and training
seconds of both, the Dice of the model the warm run started from, and ``target`` (the issue's:
the warm run took at most 60 s and is at least as good as the model it started from).
``--warm-keep`` sets the share of the previous weights a warm model keeps (``--live-keep`` for
the live bench). ``--start-model`` starts from a saved ``protocol.py --save-models`` pts4 model
instead of the first cold training, ``--no-cold`` skips the cold retraining of each round (the
target compares the warm model with the model it started from), ``--warm-steps`` sets the warm
run's length.

``live``: from the same start, ``--clicks`` corrective clicks on the first annotated slice (each
at a random wrongly predicted pixel, labelled with its true class), each followed by a warm run
of ``--live-steps`` (default: the library's live length, 10 since session 10) focused on it
(``FitOptions.focus``; ``--no-focus`` to compare) at ``--live-lr-factor`` of the learning rate
(default: the live rate), continuing from the previous click's model or, with ``--rebase``, from
the start model focused on all clicks so far. Per click: whether the pixel then shows the
clicked class, how many of the clicks so far show, the accuracy of the 65 x 65 window around it
before and after, and the Dice on the held-out slices; with ``--consolidate``, the held-out Dice
of a *Train* press (a default warm run on every annotation) from the last live model and from
the start model.

``suggest``: start from 1 click per class per annotated slice; in each round add ``--k`` clicks
(default: one per class per annotated slice), either at the pixels :func:`~napari_wsseg.predict.
suggest.suggest` proposes on the annotated slices or at uniformly random pixels of the same slices,
each labelled with its ground-truth class, and retrain from scratch (``--warm``: continue each
arm's previous model, as a Train press does). ``--measures entropy,disagreement`` adds one
suggested arm per ranking measure (``suggested_disagreement``: the model's EMA teacher against its
student). Per round: Dice of every arm.

    .venv/bin/python benchmarks/interactive_loop.py warm --method dsp --dataset drosophila_vnc \
        --seeds 0,1,2
    .venv/bin/python benchmarks/interactive_loop.py warm --method dsp --dataset cdeep3m_mito \
        --no-cold --warm-steps 100 --start-model 'models/cdeep3m_mito_dsp_pts4_s{seed}'
    .venv/bin/python benchmarks/interactive_loop.py suggest --method rf --dataset cdeep3m_mito \
        --seeds 0,1,2
    .venv/bin/python benchmarks/interactive_loop.py both --method rf --dataset phantom \
        --rounds 2  # smoke

Each round is printed as a table row and, with ``--results FILE``, appended as one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import SPLITS, load_dataset, make_deterministic, merge_annotations  # noqa: E402

#: rf's filter features of every slice seen, shared by all models of a run: they depend on the
#: image and the filter bank, not on the forest, so sharing them changes no result and spares
#: computing a 1024^2 slice's features again for every model (rf's "cold" is a new forest).
SHARED_RF_FEATURES = None
#: ``--time-budget``: seconds every training of the run may take (None: the method's steps).
TIME_BUDGET_S: float | None = None


def dice(model, image, labels, slices: list[int], names: list[str]) -> float:
    """Mean foreground Dice of ``model`` on ``slices``."""
    from napari_wsseg.eval.metrics import evaluate

    pred = np.zeros(labels.shape, np.uint8)
    for z in slices:
        raw = image.slice(z)
        memo = getattr(model, "feature_memo", None)
        if memo is not None:  # keep the held-out slices' features too (rf only)
            memo.get(memo.key(raw, model.normalization, model.config), lambda: model.features(raw))
        pred[z] = model.predict_slice(raw)
    return float(evaluate(pred, labels, slices=slices, class_names=names)["mean_fg_dice"])


def train(
    method: str,
    options: dict,
    image,
    annotations,
    seed: int,
    *,
    init=None,
    device="cpu",
    warm_steps: int | None = None,
    focus=None,
    warm_lr_factor: float | None = None,
    warm_keep: float | None = None,
):
    """A model of ``method`` trained on ``annotations`` (warm from ``init`` when given, for
    ``warm_steps`` steps at ``warm_lr_factor`` of the learning rate, keeping ``warm_keep`` of
    ``init``'s weights: None is the library's default) and the seconds it took."""
    from napari_wsseg.methods import get_method
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.warm import WarmStartWarning

    global SHARED_RF_FEATURES
    model = get_method(method)(**options)
    if hasattr(model, "feature_memo"):
        if SHARED_RF_FEATURES is None:
            SHARED_RF_FEATURES = model.feature_memo
        model.feature_memo = SHARED_RF_FEATURES
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", WarmStartWarning)  # a cold start would make "warm" a lie
        model.fit(
            image,
            annotations,
            FitOptions(
                device=device,
                seed=seed,
                time_budget_s=TIME_BUDGET_S,
                warm_steps=warm_steps,
                focus=focus,
                warm_lr_factor=warm_lr_factor,
                warm_keep=warm_keep,
            ),
            init=init,
        )
    return model, time.perf_counter() - start


def clicks(labels, classes, slices, per_class: int, seed: int):
    """``per_class`` simulated clicks per class present on each of ``slices``."""
    from napari_wsseg.eval.simulate import simulate_annotations

    return simulate_annotations(
        labels, slices=list(slices), seed=seed, classes=classes, points=per_class
    )


def with_points(annotations, points: np.ndarray):
    """``annotations`` plus ``points`` rows (z, y, x, class)."""
    from napari_wsseg.annotations.model import Annotations

    return merge_annotations([annotations, Annotations(annotations.classes, points=points)])


def run_warm(args, data, seed: int, held_out: list[int]) -> list[dict]:
    """Warm vs cold retraining over the rounds; one record per round."""
    image, labels, names, annotated, ann, cold = starting_point(args, data, seed)
    warm = cold
    records = []
    for round_ in range(1, args.rounds + 1):
        ann = merge_annotations([ann, clicks(labels, data[2], annotated, 1, seed + 1000 * round_)])
        start = warm if args.warm_from == "chain" else cold
        start_dice = dice(start, image, labels, held_out, names)
        record = {
            "bench": "warm",
            "dataset": args.dataset,
            "method": args.method,
            "seed": seed,
            "warm_from": args.warm_from,
            "warm_steps": args.warm_steps,
            "warm_keep": args.warm_keep,
            "round": round_,
            "points": len(ann.points),
            "start_dice": round(start_dice, 4),
        }
        if not args.no_cold:
            cold, cold_s = train(args.method, args.options, image, ann, seed, device=args.device)
            record |= {
                "cold_dice": round(dice(cold, image, labels, held_out, names), 4),
                "cold_s": round(cold_s, 1),
            }
        warm, warm_s = train(
            args.method,
            args.options,
            image,
            ann,
            seed,
            init=start,
            device=args.device,
            warm_steps=args.warm_steps,
            warm_keep=args.warm_keep,
        )
        warm_dice = dice(warm, image, labels, held_out, names)
        records.append(
            record
            | {
                "warm_dice": round(warm_dice, 4),
                "warm_s": round(warm_s, 1),
                "target": bool(warm_s <= 60 and warm_dice >= start_dice),
            }
        )
        emit(args, records[-1])
    return records


def run_live(args, data, seed: int, held_out: list[int]) -> list[dict]:
    """Live mode without the GUI: corrective clicks on one annotated slice, each followed by a
    short warm run focused on it (as the Train widget's live mode runs); one record per click.

    Each run continues from the previous run's model, or with ``--rebase`` from the start model
    with a focus on every click so far (so the drift of the runs does not add up)."""
    from live_latency import corrective_row, window_accuracy

    image, labels, names, annotated, ann, base = starting_point(args, data, seed)
    z, rng = annotated[0], np.random.default_rng(seed + 5)
    start_dice = dice(base, image, labels, held_out, names)
    print(f"  start_dice={start_dice:.4f}", flush=True)
    model, clicked, records = base, np.zeros((0, 4), np.int64), []
    for click in range(1, args.clicks + 1):
        before = model.predict_slice(image.slice(z))
        y, x, cls = corrective_row(labels[z], before, rng)
        clicked = np.vstack([clicked, [[z, y, x, cls]]])
        ann = with_points(ann, clicked[-1:])
        focus = clicked[:, :3] if args.rebase else clicked[-1:, :3]
        model, seconds = train(
            args.method,
            args.options,
            image,
            ann,
            seed,
            init=base if args.rebase else model,
            device=args.device,
            warm_steps=args.live_steps,
            focus=None if args.no_focus else focus,
            warm_lr_factor=args.live_lr_factor,
            warm_keep=args.live_keep,
        )
        after = model.predict_slice(image.slice(z))
        records.append(
            {
                "bench": "live",
                "dataset": args.dataset,
                "method": args.method,
                "seed": seed,
                "click": click,
                "live_steps": args.live_steps,
                "live_lr_factor": args.live_lr_factor,
                "live_keep": args.live_keep,
                "focus": not args.no_focus,
                "rebase": args.rebase,
                "clicked": [int(z), int(y), int(x), int(cls)],
                "honoured": bool(after[y, x] == cls),
                "clicks_shown": int(sum(after[r[1], r[2]] == r[3] for r in clicked)),
                "window_accuracy_before": window_accuracy(labels[z], before, y, x),
                "window_accuracy_after": window_accuracy(labels[z], after, y, x),
                "train_s": round(seconds, 1),
                "held_out_dice": round(dice(model, image, labels, held_out, names), 4),
            }
        )
        emit(args, records[-1])
    summary = {"start_dice": round(start_dice, 4), "end_dice": records[-1]["held_out_dice"]}
    if args.consolidate:
        summary |= consolidate(
            args, (image, labels, names), ann, clicked, seed, held_out, model, base
        )
        print("  " + "  ".join(f"{k}={v}" for k, v in summary.items()), flush=True)
    for record in records:
        record |= summary
    return records


def consolidate(args, data, annotations, clicked, seed, held_out, live, base) -> dict:
    """What a *Train* press (a warm run of the library's default length and rate on every
    annotation) gives after the live clicks: continued from the last live model, or from the
    model the live session started from: held-out Dice of each and how many of the live clicks
    (``clicked``, z y x class rows) it shows."""
    image, labels, names = data
    z = clicked[0, 0]
    out = {}
    for arm, init in (("from_live", live), ("from_start", base)):
        model, seconds = train(
            args.method,
            args.options,
            image,
            annotations,
            seed,
            init=init,
            device=args.device,
            warm_keep=args.warm_keep,
        )
        out[f"train_{arm}_dice"] = round(dice(model, image, labels, held_out, names), 4)
        shown = model.predict_slice(image.slice(z))
        out[f"train_{arm}_clicks_shown"] = int(sum(shown[r[1], r[2]] == r[3] for r in clicked))
        out[f"train_{arm}_s"] = round(seconds, 1)
    return out


def starting_point(args, data, seed: int):
    """What the warm and live benches start from: the image, labels, class names, annotated
    slices, ``--start-points`` clicks per class on them, and a model of those clicks
    (``--start-model``, else trained from scratch)."""
    from napari_wsseg.io.image import as_image

    image_zyx, labels, classes = data
    image, annotated = as_image(image_zyx), SPLITS[args.dataset].annotated
    ann = clicks(labels, classes, annotated, args.start_points, seed)
    model = (
        start_model(args, ann, seed)
        or train(args.method, args.options, image, ann, seed, device=args.device)[0]
    )
    return image, labels, [c.name for c in classes], annotated, ann, model


def start_model(args, annotations, seed: int):
    """The model of ``--start-model`` (seed ``{seed}`` in the path is replaced), checked to have
    learnt from as many clicks per class as ``annotations`` hold; None without the option.

    A protocol run's saved model (``protocol.py --save-models``, scenario ``pts4``) was trained on
    the same simulated clicks as the warm bench's start, so it spares the first cold training.
    """
    if args.start_model is None:
        return None
    from napari_wsseg.methods.base import load_model

    folder = Path(args.start_model.replace("{seed}", str(seed)))
    model = load_model(folder)
    learnt = model.training_summary.get("counts", {}).get("points")
    given = np.bincount(annotations.points[:, 3], minlength=len(annotations.classes)).tolist()
    if learnt != given:
        raise SystemExit(f"{folder} learnt from {learnt} clicks per class, the start has {given}")
    return model


def run_suggest(args, data, seed: int, held_out: list[int]) -> list[dict]:
    """Suggested vs random added clicks over the rounds; one record per round."""
    from napari_wsseg.io.image import as_image
    from napari_wsseg.predict.suggest import SuggestConfig, suggest

    image_zyx, labels, classes = data
    image, names, annotated = (
        as_image(image_zyx),
        [c.name for c in classes],
        SPLITS[args.dataset].annotated,
    )
    k = args.k or len(classes) * len(annotated)
    start = clicks(labels, classes, annotated, 1, seed)
    measures = {suggested_arm(m): m for m in args.measures.split(",")}
    arms = dict.fromkeys([*measures, "random"], start)
    first = train(args.method, args.options, image, start, seed, device=args.device)[0]
    models = dict.fromkeys(arms, first)  # training is deterministic: one start model for all
    rng = np.random.default_rng(seed + 17)
    picking = {} if args.pick_sigma is None else {"pick_sigma": args.pick_sigma}
    config = SuggestConfig(
        n=k, cell=args.cell, per_slice=max(1, -(-k // len(annotated))), seed=seed, **picking
    )
    records = []
    for round_ in range(1, args.rounds + 1):
        picks = {}
        for arm, measure in measures.items():
            found = suggest(
                models[arm],
                image,
                annotations=arms[arm],
                slices=list(annotated),
                config=dataclasses.replace(config, measure=measure),
            )
            picks[arm] = np.array([[s.z, s.y, s.x] for s in found], np.int64).reshape(-1, 3)
        picks["random"] = random_pixels(rng, annotated, labels.shape[1:], k)
        record = {
            "bench": "suggest",
            "dataset": args.dataset,
            "method": args.method,
            "seed": seed,
            "round": round_,
            "k": k,
            "pick_sigma": config.pick_sigma,
            "warm": args.warm,
            "measures": args.measures,
        }
        for arm, zyx in picks.items():
            labelled = np.column_stack([zyx, labels[zyx[:, 0], zyx[:, 1], zyx[:, 2]]])
            arms[arm] = with_points(arms[arm], labelled)
            models[arm], seconds = train(
                args.method,
                args.options,
                image,
                arms[arm],
                seed,
                init=models[arm] if args.warm else None,
                device=args.device,
            )
            record |= {
                f"{arm}_points": len(arms[arm].points),
                f"{arm}_s": round(seconds, 1),
                f"{arm}_dice": round(dice(models[arm], image, labels, held_out, names), 4),
            }
        records.append(record)
        emit(args, record)
    return records


def suggested_arm(measure: str) -> str:
    """The record prefix of the arm that follows suggestions ranked by ``measure`` ("suggested"
    for entropy, as before other measures were compared)."""
    return "suggested" if measure == "entropy" else f"suggested_{measure}"


def random_pixels(rng, slices, shape_yx, k: int) -> np.ndarray:
    """``k`` uniformly random ``(z, y, x)`` on ``slices``."""
    zs = rng.choice(np.asarray(slices), k)
    return np.column_stack(
        [zs, rng.integers(0, shape_yx[0], k), rng.integers(0, shape_yx[1], k)]
    ).astype(np.int64)


def emit(args, record: dict) -> None:
    """Print the record as a row and, with ``--results``, append it at once (a stopped run keeps
    the rounds it finished)."""
    print_row(record)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as fh:
            extra = {"split": args.split, "options": args.options, "time_budget_s": TIME_BUDGET_S}
            fh.write(json.dumps(record | extra) + "\n")


def print_row(record: dict) -> None:
    skip = ("bench", "dataset", "method")
    print(
        "  ".join(f"{key}={value}" for key, value in record.items() if key not in skip), flush=True
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bench", choices=["warm", "suggest", "both", "live"])
    parser.add_argument("--method", default="rf")
    parser.add_argument("--dataset", default="phantom", choices=list(SPLITS))
    parser.add_argument(
        "--split",
        choices=["validation", "scored"],
        default="validation",
        help="held-out slices Dice is measured on",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--start-points", type=int, default=4, help="warm: clicks per class per slice at start"
    )
    parser.add_argument(
        "--warm-from",
        choices=["chain", "cold"],
        default="chain",
        help="warm: continue from the previous warm model or the previous cold one",
    )
    parser.add_argument(
        "--start-model",
        default=None,
        help="warm: a saved model to start from instead of the first cold training "
        "({seed} is replaced by the seed)",
    )
    parser.add_argument(
        "--no-cold", action="store_true", help="warm: skip the cold retraining of each round"
    )
    parser.add_argument(
        "--warm-steps", type=int, default=None, help="warm: steps of a warm run (library default)"
    )
    parser.add_argument(
        "--warm-keep",
        type=float,
        default=None,
        help="warm (and --consolidate): share of the previous weights a warm model keeps "
        "(FitOptions.warm_keep; default: the library's)",
    )
    parser.add_argument("--clicks", type=int, default=6, help="live: corrective clicks")
    parser.add_argument(
        "--live-steps",
        type=int,
        default=None,
        help="live: steps of each run (default: LIVE_WARM_STEPS; it was 20 until session 10)",
    )
    parser.add_argument(
        "--no-focus", action="store_true", help="live: runs get no focus on the new click"
    )
    parser.add_argument(
        "--live-lr-factor",
        type=float,
        default=None,
        help="live: share of the learning rate of each run (default: the live rate, "
        "LIVE_LR_FACTOR)",
    )
    parser.add_argument(
        "--live-keep",
        type=float,
        default=None,
        help="live: share of the previous weights each live model keeps (default: LIVE_KEEP)",
    )
    parser.add_argument(
        "--consolidate",
        action="store_true",
        help="live: after the clicks, one Train-press warm run from the last live model and "
        "one from the start model, on all annotations",
    )
    parser.add_argument(
        "--rebase",
        action="store_true",
        help="live: every run starts from the start model, focused on all clicks so far",
    )
    parser.add_argument("--k", type=int, default=None, help="suggest: clicks added per round")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="suggest: each round continues the arm's previous model (a Train press with the "
        "library's warm defaults) instead of training from scratch",
    )
    parser.add_argument("--cell", type=int, default=64, help="suggest: grid cell side in pixels")
    parser.add_argument(
        "--measures",
        default="entropy",
        help="suggest: comma-separated SuggestConfig measures, one suggested arm each "
        "(entropy, margin, disagreement)",
    )
    parser.add_argument(
        "--pick-sigma",
        type=float,
        default=None,
        help="suggest: SuggestConfig.pick_sigma (default: the library's default)",
    )
    parser.add_argument("--options", default="{}", help="the method's options as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds each training may take, cold and warm (the Train widget's budget; "
        "default: none, the method's own step count)",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="JSONL file to append records to"
    )
    args = parser.parse_args(argv)
    args.options = json.loads(args.options)
    global TIME_BUDGET_S
    TIME_BUDGET_S = args.time_budget
    if args.bench == "live":
        from napari_wsseg.methods.warm import LIVE_KEEP, LIVE_LR_FACTOR, LIVE_WARM_STEPS

        args.live_lr_factor = args.live_lr_factor or LIVE_LR_FACTOR
        args.live_keep = LIVE_KEEP if args.live_keep is None else args.live_keep
        args.live_steps = args.live_steps or LIVE_WARM_STEPS
    make_deterministic()
    data = load_dataset(args.dataset)
    held_out = list(getattr(SPLITS[args.dataset], args.split))
    benches = ["warm", "suggest"] if args.bench == "both" else [args.bench]
    runs = {"warm": run_warm, "suggest": run_suggest, "live": run_live}
    for bench in benches:
        print(
            f"# {bench}: {args.method} on {args.dataset}, Dice on {args.split} slices {held_out}",
            flush=True,
        )
        for seed in (int(s) for s in args.seeds.split(",") if s):
            runs[bench](args, data, seed, held_out)  # each record is emitted as it is made
    return 0


if __name__ == "__main__":
    sys.exit(main())
