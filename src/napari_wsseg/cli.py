"""The ``wsseg`` command line: sample, import, simulate, train, predict, evaluate. Imports no Qt.

Method options are not listed here: ``wsseg train --method NAME`` adds one ``--option`` per field of
that method's config dataclass, so a new method never touches this file. Errors a user can cause
print one line (``wsseg: error: ...``) and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import typing
import warnings
from pathlib import Path

from .errors import WssegError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
#: An error line longer than this keeps its start and its end (where the fix is).
MAX_ERROR_CHARS = 400
#: At most this many characters of a user's argument are quoted back.
QUOTE_CHARS = 40


class _UsageError(WssegError):
    """A command line argparse could not parse."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``wsseg: error:`` line (status 2), not usage plus message."""

    def error(self, message: str):
        raise _UsageError(f"{message}; see `{self.prog} --help`")


# ------------------------------------------------------------------ helpers
def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a shape; write e.g. 16,256,256"
        ) from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape '{text}' must be Y,X or Z,Y,X with positive sizes")
    return shape


def _quote(text) -> str:
    text = str(text)
    return repr(text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "...")


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{value} is below {minimum}; give an integer >= {minimum}"
            )
        return value

    convert.__name__ = "int"
    return convert


def _finite(minimum: float, *, inclusive: bool):
    """An argparse type: a finite number above (or, ``inclusive``, at least) ``minimum``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            raise argparse.ArgumentTypeError(
                f"{_quote(text)} is not a finite number {bound}; give one"
            )
        return value

    convert.__name__ = "float"
    return convert


def _load_classes(text: str | None):
    """--classes: comma-separated names, or a classes.json file."""
    from .annotations import read_classes_json
    from .annotations.model import default_classes

    if text is None:
        return None
    if text.endswith(".json"):
        return read_classes_json(text)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise WssegError(
            f"--classes {_quote(text)} names no class; write e.g. --classes cytoplasm,membrane,mito"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise WssegError(
            f"--classes names {_quote(', '.join(twice))} more than once; give each class once"
        )
    return default_classes(len(names), names)


def _is_inside(path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (links resolved)."""
    return Path(path).resolve().is_relative_to(folder.resolve())


def _check_sources_outside(out: Path, sources: dict[str, str | None], what: str) -> None:
    for flag, source in sources.items():
        if source and _is_inside(source, out):
            raise WssegError(
                f"--out {out} would replace {flag} {source}; choose {what} that holds none of "
                "the inputs"
            )


def _progress(desc: str):
    """A tqdm progress callback and its close function; the bar appears at the first event, so
    input refused before any work leaves stderr to the one error line."""
    from .progress import tqdm_progress

    bar: list = []

    def update(event) -> None:
        if not bar:
            bar.extend(tqdm_progress(desc))
        bar[0](event)

    def close() -> None:
        if bar:
            bar[1]()

    return update, close


# ------------------------------------------------------------- subcommands
def cmd_sample(args) -> int:
    from .sample import save_sample

    paths = save_sample(
        args.out,
        shape=args.shape,
        seed=args.seed,
        n_classes=args.n_classes,
        overwrite=args.overwrite,
    )
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def cmd_import(args) -> int:
    from .io import import_tiff_to_omezarr

    update, close = _progress("import")
    try:
        out = import_tiff_to_omezarr(args.stack, args.out, chunks=args.chunks, progress=update)
    finally:
        close()
    print(json.dumps({"out": str(out)}))
    return 0


def _parse_box_count(text: str) -> int | str:
    """--boxes of simulate: a count >= 0 or 'all'."""
    if text.strip().lower() == "all":
        return "all"
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a box count; give a number >= 0 of boxes per class per slice or 'all'"
        )
    return count


def cmd_simulate(args) -> int:
    from .annotations import write_annotations
    from .eval.simulate import simulate_annotations
    from .io import read_labels
    from .io.writers import write_labels
    from .predict.slices import parse_slices

    gt = read_labels(args.gt)
    n_slices = 1 if gt.ndim == 2 else gt.shape[0]
    classes = _load_classes(args.classes)
    slices = parse_slices(args.slice_list, n_slices, source="--slice-list")
    slice_range = None
    if args.slice_range:
        parsed = parse_slices(args.slice_range, n_slices, source="--slice-range")
        slice_range = (parsed[0], parsed[-1])
    ann = simulate_annotations(
        gt,
        classes=classes,
        n_classes=len(classes) if classes else None,
        slices=slices if slices is not None else args.slices,
        slice_range=slice_range,
        points=args.points,
        boxes=args.boxes,
        tags=args.tags,
        sizes=args.sizes or args.size_noise > 0,
        size_noise=args.size_noise,
        masks=args.masks,
        scribbles=args.scribbles,
        seed=args.seed,
        region_tags=args.region_tags,
        region_tag_cells=args.region_tag_cells,
    )
    out = Path(args.out)
    write_annotations(out, ann, overwrite=True)  # _check_simulate_out refused without --overwrite
    if ann.masks is not None:
        write_labels(out / "masks.npy", ann.masks[0] if gt.ndim == 2 else ann.masks)
    print(json.dumps({"out": str(out), **ann.summary()}))
    return 0


#: What ``wsseg simulate`` writes (or removes, for kinds it does not write) in its --out folder.
_SIMULATE_FILES = ("points.csv", "boxes.csv", "tags.csv", "sizes.csv", "classes.json", "masks.npy")


def _check_simulate_out(args) -> None:
    """Refuse to replace annotation files in ``--out`` without ``--overwrite``."""
    from .annotations.csv import CLASSES_FILE, find_annotation_files

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WssegError(f"simulate --out {out} is a file; give a folder for the annotation CSVs")
    if Path(args.gt).resolve().parent == out.resolve() and Path(args.gt).name in _SIMULATE_FILES:
        raise WssegError(
            f"simulate --out {out} would replace the ground truth {args.gt}; choose another folder"
        )
    if not out.is_dir() or args.overwrite:
        return
    existing = [p.name for p in find_annotation_files(out).values()]
    existing += [name for name in (CLASSES_FILE, "masks.npy") if (out / name).exists()]
    if existing:
        raise WssegError(
            f"simulate --out {out} already holds {', '.join(sorted(existing))}; pass --overwrite "
            "to replace them or choose another folder"
        )


def cmd_train(args, method_options: dict) -> int:
    from .annotations import load_annotations
    from .io import read_image, read_labels
    from .methods import get_method
    from .methods.base import FitOptions, check_model_destination
    from .progress import ProgressEvent

    fit_options = FitOptions(
        device=args.device,
        seed=args.seed,
        time_budget_s=args.time_budget,
        warm_steps=args.warm_steps,
    )
    method = get_method(args.method)(**method_options)
    init = _load_init_model(args.init, args.method)
    out = Path(args.out)
    _check_sources_outside(
        out,
        {
            "the image": args.image,
            "--points": args.points,
            "--boxes": args.boxes,
            "--tags": args.tags,
            "--sizes": args.sizes,
            "--masks": args.masks,
            "--classes": args.classes if args.classes and args.classes.endswith(".json") else None,
        },
        "a model folder",
    )
    check_model_destination(out, overwrite=args.overwrite)
    image = _with_voxel_size(read_image(args.image), args.voxel_size)
    masks = None
    if args.masks:
        masks = read_labels(args.masks)
        import numpy as np

        masks = np.asarray(masks)
    annotations = load_annotations(
        points=args.points,
        boxes=args.boxes,
        tags=args.tags,
        sizes=args.sizes,
        masks=masks,
        classes=_load_classes(args.classes),
        image_shape=image.shape,
        masks_file=args.masks,
    )
    update, close = _progress(f"train {args.method}")
    last: dict = {}

    def progress(event: ProgressEvent) -> None:
        last.update(event.metrics)
        update(event)

    try:
        fit_options.progress = progress
        result, notes = _fit_noting_cold_start(method, image, annotations, fit_options, init)
    finally:
        close()
    for note in notes:
        print(f"wsseg: warning: {note}", file=sys.stderr)
    folder = method.save(out, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "model": str(folder),
                "method": args.method,
                "stopped": result.stopped,
                "steps": result.steps,
                "seconds": round(result.seconds, 2),
                "last_metrics": last,
                "warnings": method.training_summary.get("warnings", []),
                "warm_start": method.training_summary.get("warm_start", False),
            }
        )
    )
    return 0


def _fit_noting_cold_start(method, image, annotations, fit_options, init):
    """``method.fit`` and the messages of a warm start that fell back to a cold one (printed as
    one line each after the progress bar); other warnings are shown as usual."""
    import warnings

    from .methods.warm import WarmStartWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WarmStartWarning)
        result = method.fit(image, annotations, fit_options, init=init)
    notes = [str(w.message) for w in caught if issubclass(w.category, WarmStartWarning)]
    for w in caught:
        if not issubclass(w.category, WarmStartWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result, notes


def _load_init_model(folder: str | None, method: str):
    """The model ``train --init`` continues from (None without --init); refuses another method."""
    if folder is None:
        return None
    from .methods.base import load_model, read_model_config

    found = read_model_config(folder).get("method")
    if found != method:
        raise WssegError(
            f"--init {folder} is a {_quote(found)} model, not {method}; give a {method} model "
            f"folder or leave out --init to train from scratch"
        )
    return load_model(folder)


def _check_predict_out(args, out_path: Path) -> None:
    """Refuse an output that would replace the input image or land in the model folder."""
    if _is_inside(out_path, Path(args.model)):
        raise WssegError(
            f"--out {out_path} lies in the model folder {args.model}; choose a path outside it"
        )
    if out_path.resolve() == Path(args.image).resolve():
        raise WssegError(f"--out {out_path} is the input image; choose another path for the labels")
    if out_path.is_dir() and out_path.suffix.lower() != ".zarr":
        raise WssegError(f"--out {out_path} is a folder; give a .npy, .tif or .zarr file name")


def cmd_predict(args) -> int:
    out_path = Path(args.out)
    _check_predict_out(args, out_path)
    if out_path.suffix.lower() == ".zarr" and args.slices is None:
        return _predict_blockwise(args, out_path)
    batch_only = [
        flag
        for flag, used in (
            ("--probabilities", args.probabilities),
            ("--block", args.block is not None),
            ("--resume", args.resume),
            ("--scheduler", args.scheduler != "threads"),
            ("--workers", args.workers is not None),
        )
        if used
    ]
    if batch_only:
        given = f"--out {out_path}" + (f" --slices {args.slices}" if args.slices else "")
        raise WssegError(
            f"{', '.join(batch_only)} apply to block-wise prediction only, which needs a .zarr "
            f"--out and no --slices (got {given})"
        )
    from .io import read_image
    from .io.writers import create_labels_zarr, finalize_labels_zarr, write_labels
    from .methods.base import load_model
    from .predict.slices import parse_slices, predict_image

    model = load_model(args.model)
    image = _with_voxel_size(read_image(args.image), args.voxel_size)
    model.check_image(image)
    slices = parse_slices(args.slices, image.n_slices)
    if out_path.exists() and not args.overwrite:
        raise WssegError(
            f"output {out_path} exists; pass --overwrite to replace it or choose another path"
        )
    update, close = _progress("predict")
    try:
        if out_path.suffix == ".zarr":
            target = create_labels_zarr(
                out_path, image.shape, classes=model.classes, overwrite=args.overwrite
            )
            predict_image(model, image, slices=slices, out=target, progress=update)
            finalize_labels_zarr(out_path)
        else:
            labels = predict_image(model, image, slices=slices, progress=update)
            write_labels(out_path, labels[0] if image.was_2d else labels, classes=model.classes)
    finally:
        close()
    print(json.dumps({"out": str(out_path), "slices": slices if slices is not None else "all"}))
    return 0


def _predict_blockwise(args, out_path: Path) -> int:
    from .predict.volume import predict_volume

    image = args.image
    if args.voxel_size is not None:
        if args.scheduler != "threads":
            raise WssegError(
                f"--voxel-size with --scheduler {args.scheduler} is not supported yet; "
                "store the voxel size in the image metadata or use --scheduler threads"
            )
        from .predict.blocks import open_image

        image = _with_voxel_size(open_image(args.image), args.voxel_size)
    update, close = _progress("predict")
    try:
        result = predict_volume(
            args.model,
            image,
            out_path,
            block=args.block,
            probabilities=args.probabilities,
            scheduler=args.scheduler,
            n_workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=update,
        )
    finally:
        close()
    print(json.dumps(result.to_dict()))
    return 0


def cmd_evaluate(args) -> int:
    from .eval.metrics import evaluate
    from .io import read_labels
    from .predict.slices import parse_slices

    pred = read_labels(args.pred)
    gt = read_labels(args.gt)
    n_slices = 1 if gt.ndim == 2 else gt.shape[0]
    classes = _load_classes(args.classes)
    result = evaluate(
        pred,
        gt,
        n_classes=len(classes) if classes else args.n_classes,
        slices=parse_slices(args.slices, n_slices),
        class_names=[c.name for c in classes] if classes else None,
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_measure(args) -> int:
    from .io import read_image, read_label_classes, read_labels
    from .measure import measure_labels, parse_voxel_size, voxel_size_from_metadata, write_tables
    from .measure.tables import table_paths

    labels = read_labels(args.labels)
    if args.instances and _is_inside(args.labels, Path(args.instances)):
        raise WssegError(
            f"--instances {args.instances} would replace the labels {args.labels}; "
            "choose another path"
        )
    if not args.overwrite:
        existing = [str(p) for p in table_paths(args.out).values() if p.exists()]
        if existing:
            raise WssegError(
                f"{', '.join(existing)} exist(s); pass --overwrite or choose another --out"
            )
    image = read_image(args.image) if args.image else None
    voxel_size = (
        parse_voxel_size(args.voxel_size, labels.ndim)
        if args.voxel_size
        else voxel_size_from_metadata(args.labels, labels.ndim)
        or (voxel_size_from_metadata(args.image, labels.ndim) if args.image else None)
    )
    classes = _load_classes(args.class_names) or read_label_classes(args.labels)
    names = [c.name for c in classes] if classes else None
    measured = _measured_classes(args.classes, names)
    if args.instances and Path(args.instances).exists() and not args.overwrite:
        raise WssegError(
            f"--instances {args.instances} exists; pass --overwrite or choose another path"
        )
    update, close = _progress("measure")
    try:
        result = measure_labels(
            labels,
            image=image,
            classes=measured,
            class_names=names,
            voxel_size=voxel_size,
            instances_out=args.instances,
            block=args.block,
            surface=not args.no_surface,
            overwrite=args.overwrite,
            progress=update,
        )
    finally:
        close()
    paths = write_tables(result, args.out, overwrite=True)
    print(
        json.dumps(
            {
                **{k: str(v) for k, v in paths.items()},
                "objects_measured": len(result.objects),
                "units": result.units,
                "voxel_size_um": voxel_size,
                "instances": str(result.instances) if args.instances else None,
            }
        )
    )
    return 0


def _measured_classes(text: str | None, names: list[str] | None) -> list[int] | None:
    """--classes of `wsseg measure`: class names or ids, comma-separated."""
    if text is None:
        return None
    chosen = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.isdigit():
            chosen.append(int(item))
        elif names and item in names:
            chosen.append(names.index(item))
        else:
            known = ", ".join(names) if names else "none (the labels carry no class names)"
            raise WssegError(
                f"--classes: '{item}' is neither a class id nor a class name; known "
                f"names: {known}; give ids such as 2,3 or --class-names"
            )
    return chosen


def cmd_suggest(args) -> int:
    """Rank where to annotate next and write z,y,x,score,y0,x0,y1,x1 rows, best first."""
    from .io import read_image
    from .methods.base import load_model
    from .predict.slices import parse_slices
    from .predict.suggest import SuggestConfig, suggest, write_suggestions_csv

    out = Path(args.out)
    if out.is_dir() or (out.exists() and not args.overwrite):
        raise WssegError(
            f"--out {out} exists; pass --overwrite to replace it or choose another file name"
        )
    if _is_inside(out, Path(args.model)) or out.resolve() == Path(args.image).resolve():
        raise WssegError(
            f"--out {out} is the image or lies in the model folder; choose another path"
        )
    if not out.parent.is_dir():
        raise WssegError(
            f"--out {out}: folder {out.parent} does not exist; create it or choose another path"
        )
    config = SuggestConfig(
        n=args.n,
        cell=args.cell,
        per_slice=args.per_slice,
        min_distance=args.min_distance,
        measure=args.measure,
        pick_sigma=SuggestConfig.pick_sigma if args.pick_sigma is None else args.pick_sigma,
        seed=args.seed,
    )
    model = load_model(args.model)
    image = read_image(args.image)
    annotations = _suggest_annotations(args.annotations, model, image) if args.annotations else None
    update, close = _progress("suggest")
    try:
        found = suggest(
            model,
            image,
            annotations=annotations,
            config=config,
            slices=parse_slices(args.slices, image.n_slices),
            progress=update,
        )
    finally:
        close()
    write_suggestions_csv(out, found)
    print(json.dumps({"out": str(out), "suggestions": len(found)}))
    return 0


def _suggest_annotations(folder: str, model, image):
    """The annotations in ``folder`` (CSVs and masks.npy), read with the model's classes."""
    import numpy as np

    from .annotations import load_annotations
    from .annotations.csv import find_annotation_files

    files = find_annotation_files(folder)
    masks_path = Path(folder) / "masks.npy"
    masks = np.load(masks_path, allow_pickle=False) if masks_path.is_file() else None
    if not files and masks is None:
        raise WssegError(
            f"--annotations {folder} holds no points.csv, boxes.csv, tags.csv, "
            "sizes.csv or masks.npy; give the folder of the current annotations"
        )
    return load_annotations(
        **files,
        masks=masks,
        classes=model.classes,
        image_shape=image.shape,
        masks_file=masks_path if masks is not None else None,
    )


def _add_suggest_parser(sub) -> None:
    p = sub.add_parser(
        "suggest",
        help="rank where to annotate next (CSV: z,y,x,score,y0,x0,y1,x1)",
        description="Score grid cells by the model's uncertainty, weighted towards "
        "classes with few labels and spread out; write the pixel to label in each "
        "of the best cells, best first (see docs/cli.md).",
    )
    p.add_argument("model", help="model folder written by `wsseg train`")
    p.add_argument("image", help="image or volume the model was trained for")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--n", type=_count(1), default=20, help="suggestions at most (default 20)")
    p.add_argument("--slices", default=None, help="look only in these slices, e.g. 3,5,7 or 15-19")
    p.add_argument(
        "--annotations",
        default=None,
        metavar="DIR",
        help="folder of the current annotations (points.csv, ..., masks.npy): class "
        "counts and labelled pixels (default: the counts the model was trained on)",
    )
    p.add_argument(
        "--cell", type=_count(2), default=64, help="grid cell side in pixels (default 64)"
    )
    p.add_argument(
        "--per-slice", type=_count(1), default=5, help="suggestions per slice at most (default 5)"
    )
    p.add_argument(
        "--min-distance",
        type=_finite(0, inclusive=True),
        default=None,
        help="pixels between suggestions of one slice at least (default: --cell)",
    )
    p.add_argument(
        "--measure",
        default="entropy",
        choices=["entropy", "margin", "disagreement"],
        help="uncertainty measure (default entropy); disagreement: between a dsp model's EMA "
        "teacher and its student",
    )
    p.add_argument(
        "--pick-sigma",
        type=float,
        default=None,
        help="Gaussian sigma (pixels) of the scores each cell's pixel is picked from; 0 picks "
        "the most uncertain pixel (default 6)",
    )
    p.add_argument("--seed", type=_count(0), default=0, help="orders cells with equal scores")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def cmd_export(args) -> int:
    from .export import export_bioimageio
    from .io import read_image

    image = read_image(args.image) if args.image else None
    authors = [a.strip() for a in (args.authors or "").split(",") if a.strip()]
    out = export_bioimageio(
        args.model,
        args.out,
        licence=args.licence,
        authors=authors or None,
        image=image,
        name=args.name,
        overwrite=args.overwrite,
    )
    print(json.dumps({"out": str(out), "format": args.format}))
    return 0


def cmd_pretrain(args) -> int:
    """Self-supervised DINO pretraining of a ViT backbone on IMAGE (see docs/pretrain.md)."""
    import signal
    import threading

    from .engine.pretrain import PretrainConfig, pretrain
    from .io import read_image
    from .progress import tqdm_progress

    image = read_image(args.image)
    given = {
        "arch": args.arch,
        "patch_size": args.patch_size,
        "steps": args.steps,
        "batch": args.batch,
        "seed": args.seed,
        "voxel_size_zyx": args.voxel_size,
    }
    given = {k: v for k, v in given.items() if v is not None}
    config = PretrainConfig(**given) if given or not args.resume else None
    if args.fast_views:
        config = (config or PretrainConfig()).with_fast_views()
    cancel = threading.Event()  # Ctrl-C stops within a block with a checkpoint (resumable)
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    update, close = tqdm_progress("pretrain")
    try:
        result = pretrain(
            image,
            args.out,
            config,
            time_budget_s=args.time_budget,
            device=args.device,
            resume=args.resume,
            checkpoint_every_s=args.checkpoint_every,
            progress=update,
            cancel=cancel,
        )
    finally:
        close()
        signal.signal(signal.SIGINT, previous)
    losses = [h["loss"] for h in result.history]
    print(
        json.dumps(
            {
                "out": str(result.out),
                "stopped": result.stopped,
                "steps": result.steps,
                "planned_steps": result.planned_steps,
                "seconds": round(result.seconds, 1),
                "images_per_s": round(result.images_per_s, 2),
                "loss": losses[-1] if losses else None,
                "weights_hash": result.info.weights_hash,
            }
        )
    )
    return 0


def _add_pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="learn a ViT backbone from the image itself (for mews)",
        description="Self-supervised DINO pretraining of a small timm ViT on every "
        "slice of IMAGE (no labels). Writes a backbone folder for `wsseg train "
        "--method mews --backbone-weights FOLDER`; resumable with --resume (see "
        "docs/pretrain.md).",
    )
    p.add_argument("image", help="image or volume (.zarr/OME-Zarr and large .tif are read lazily)")
    p.add_argument(
        "--out",
        required=True,
        help="backbone folder to write (new or empty; or the run to --resume)",
    )
    p.add_argument("--arch", default=None, help="timm ViT name (default vit_tiny_patch16_224)")
    p.add_argument(
        "--patch-size", type=_count(2), default=None, help="patch side in pixels (default 8)"
    )
    p.add_argument(
        "--steps",
        type=_count(1),
        default=None,
        help="optimisation steps (default: as many as fit --time-budget, else 2000)",
    )
    p.add_argument("--batch", type=_count(1), default=None, help="windows per step (default 16)")
    p.add_argument(
        "--time-budget",
        type=_finite(0, inclusive=False),
        default=None,
        help="stop after this many seconds (with a checkpoint; --resume continues)",
    )
    p.add_argument(
        "--voxel-size",
        type=_parse_voxel_size,
        default=None,
        help="Z,Y,X voxel size; near-isotropic volumes also train on xz and yz planes",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_finite(0, inclusive=False),
        default=120.0,
        help="seconds between checkpoints (default 120)",
    )
    p.add_argument(
        "--fast-views",
        action="store_true",
        help="64/32 px views, 4 local crops: 2-3x faster on a CPU, effect on features unmeasured",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--seed", type=_count(0), default=None, help="seed of the weights and views (default 0)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )


def _with_voxel_size(image, voxel_size):
    """``image`` with the voxel size given by --voxel-size (None: keep the file's metadata)."""
    if voxel_size is not None:
        if image.was_2d:
            raise WssegError(
                f"--voxel-size is Z,Y,X for volumes, but image {image.name} is 2D; "
                "leave it out for 2D images"
            )
        image.voxel_size_zyx = voxel_size
    return image


def _parse_voxel_size(text: str) -> tuple[float, float, float]:
    from .io.voxel_size import parse_voxel_size

    try:
        return parse_voxel_size(text, 3, source="voxel size")
    except WssegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------ parser
def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    from .engine.devices import DEVICE_CHOICES
    from .methods import available_methods

    parser = _Parser(
        prog="wsseg",
        description="Weakly-supervised segmentation of microscopy images and volumes.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "sample", help="write the procedural FIB-SEM-like phantom (image, labels, classes)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--shape",
        type=_parse_shape,
        default=(16, 256, 256),
        help="Z,Y,X or Y,X (default 16,256,256)",
    )
    p.add_argument(
        "--n-classes", type=int, default=4, choices=[3, 4, 5], help="number of classes (default 4)"
    )
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace image.tif, labels.tif, classes.json in --out",
    )

    p = sub.add_parser("import", help="convert a TIFF stack to chunked OME-Zarr")
    p.add_argument("stack", help="TIFF stack")
    p.add_argument("--out", required=True, help="output .zarr folder (must not exist)")
    p.add_argument(
        "--chunks", type=_parse_shape, default=None, help="chunk shape Z,Y,X (default 8,512,512)"
    )

    p = sub.add_parser("simulate", help="sample weak annotations (CSV) from dense ground truth")
    p.add_argument("gt", help="dense label image (.npy, .tif, .png, .zarr)")
    p.add_argument(
        "--out", required=True, help="output folder for points.csv, boxes.csv, tags.csv, sizes.csv"
    )
    p.add_argument(
        "--slices", type=int, default=None, help="annotate N evenly spaced slices (default: all)"
    )
    p.add_argument(
        "--slice-list", default=None, help="annotate exactly these slices, e.g. 0,2,4 or 0-12"
    )
    p.add_argument(
        "--slice-range", default=None, help="pick the N slices within this range, e.g. 0-12"
    )
    p.add_argument("--points", type=int, default=0, help="points per class per slice")
    p.add_argument(
        "--boxes",
        type=_parse_box_count,
        default=0,
        metavar="K|all",
        help="K boxes per class per slice (some objects boxed, not exhaustive), or 'all': "
        "every object of every class boxed, marked exhaustive",
    )
    p.add_argument("--tags", action="store_true", help="write slice tags (class presence)")
    p.add_argument(
        "--region-tags",
        type=_count(1),
        default=0,
        metavar="CELL",
        help="write region tags (tags.csv rows with y0,x0,y1,x1): the classes present "
        "in each CELL x CELL pixel cell of a grid over the chosen slices",
    )
    p.add_argument(
        "--region-tag-cells",
        type=_count(0),
        default=None,
        metavar="N",
        help="with --region-tags: tag N random cells per slice (default: every cell)",
    )
    p.add_argument("--sizes", action="store_true", help="write class size fractions")
    p.add_argument(
        "--size-noise",
        type=_finite(0, inclusive=True),
        default=0.0,
        help="sigma of the multiplicative size noise",
    )
    p.add_argument(
        "--masks", action="store_true", help="write the full masks of the chosen slices (masks.npy)"
    )
    p.add_argument(
        "--scribbles",
        type=int,
        default=0,
        help="scribbles per class per slice (written to masks.npy)",
    )
    p.add_argument("--classes", default=None, help="class names (a,b,c) or classes.json")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--overwrite", action="store_true", help="replace annotation files in --out")

    p = sub.add_parser("train", help="train a method from weak annotations")
    p.add_argument("image", help="image or volume (.tif, .png, .npy, .zarr)")
    p.add_argument("--points", help="points.csv (z,y,x,class)")
    p.add_argument("--boxes", help="boxes.csv (z,y0,x0,y1,x1,class)")
    p.add_argument("--tags", help="tags.csv (z,class)")
    p.add_argument("--sizes", help="sizes.csv (z,class,fraction)")
    p.add_argument("--masks", help="partial label image: 0 unlabeled, k = class k-1")
    p.add_argument(
        "--classes",
        help="class names (a,b,c) or classes.json; default: largest class id + 1 classes",
    )
    p.add_argument(
        "--method", required=True, choices=available_methods(), help="segmentation method"
    )
    p.add_argument("--out", required=True, help="model folder to write (missing or empty)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a model folder written by wsseg train"
    )
    p.add_argument(
        "--device",
        default="auto",
        help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (default auto)",
    )
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument(
        "--time-budget",
        type=_finite(0, inclusive=False),
        default=None,
        help="stop after this many seconds",
    )
    p.add_argument(
        "--init",
        metavar="MODEL_DIR",
        default=None,
        help="warm start: continue from this model of the same method and classes "
        "(other classes: from scratch, with a warning)",
    )
    p.add_argument(
        "--warm-steps",
        type=_count(1),
        default=None,
        help="training steps of a warm start (default: the method's, see docs/cli.md)",
    )
    p.add_argument(
        "--voxel-size",
        type=_parse_voxel_size,
        default=None,
        help="Z,Y,X micrometres (default: OME-Zarr/TIFF metadata; else unknown)",
    )
    if method is not None:
        _add_method_options(p, method)

    p = sub.add_parser(
        "predict",
        help="predict labels with a trained model",
        description="Predict labels. A .zarr --out (without --slices) is predicted block by block: "
        "memory stays flat, the run can be resumed after a crash, and dask can spread it over "
        "processes or a cluster (see docs/batch.md).",
    )
    p.add_argument("model", help="model folder written by `wsseg train`")
    p.add_argument("image", help="image or volume (.zarr/OME-Zarr and .tif are read lazily)")
    p.add_argument("--out", required=True, help="output labels (.npy, .tif or .zarr)")
    p.add_argument(
        "--slices", default=None, help="only these slices, e.g. 3,5,7 or 15-19 (others stay 0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write uint8 class probabilities to OUT_probabilities.zarr (.zarr --out)",
    )
    p.add_argument(
        "--block",
        type=_parse_shape,
        default=None,
        help="block shape Z,Y,X (Y,X for 2D images; default 64,512,512 or 512,512, for mews "
        "4,2048,2048: see docs/cli.md)",
    )
    p.add_argument(
        "--scheduler",
        default="threads",
        help="threads (default), processes (a local dask cluster) or a dask scheduler "
        "address such as tcp://HOST:8786",
    )
    p.add_argument(
        "--workers", type=_count(1), default=None, help="worker processes for --scheduler processes"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted .zarr prediction: finished blocks are kept",
    )
    p.add_argument(
        "--voxel-size",
        type=_parse_voxel_size,
        default=None,
        help="Z,Y,X micrometres (default: OME-Zarr/TIFF metadata; else unknown)",
    )

    p = sub.add_parser(
        "evaluate", help="Dice/IoU of a prediction against dense ground truth (JSON)"
    )
    p.add_argument("pred", help="predicted labels")
    p.add_argument("gt", help="ground-truth labels")
    p.add_argument("--slices", default=None, help="score only these slices, e.g. 15-19")
    p.add_argument("--classes", default=None, help="class names (a,b,c) or classes.json")
    p.add_argument(
        "--n-classes",
        type=_count(1),
        default=None,
        help="number of classes (default: from the data)",
    )
    _add_measure_parser(sub)
    _add_suggest_parser(sub)
    _add_pretrain_parser(sub)
    _add_export_parser(sub)
    return parser


def _add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a torch model (dsp, size, mews) as a bioimage.io package",
        description="Write a bioimage.io model package (weights, normalisation, "
        "test tensors, README) that bioimageio.core, deepImageJ or ilastik can run "
        "(see docs/export.md).",
    )
    p.add_argument("model", help="model folder written by `wsseg train`")
    p.add_argument("--format", default="bioimageio", choices=["bioimageio"], help="package format")
    p.add_argument("--out", required=True, help="package to write, MODEL.zip")
    p.add_argument(
        "--licence", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)"
    )
    p.add_argument("--authors", default=None, help="author names, comma-separated")
    p.add_argument(
        "--image", default=None, help="image to cut the test slice from (default: the phantom)"
    )
    p.add_argument("--name", default=None, help="model name in the package")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")


def _add_measure_parser(sub) -> None:
    p = sub.add_parser(
        "measure",
        help="objects of each class: instances, volumes, surfaces (CSV)",
        description="Label each class's connected components (3D for volumes) and "
        "write one row per object plus TABLE_summary.csv and TABLE_per_slice.csv. "
        "zarr input is processed block by block (see docs/measure.md).",
    )
    p.add_argument("labels", help="class-id labels, e.g. a prediction (.tif, .npy, .zarr)")
    p.add_argument("--out", required=True, help="objects table TABLE.csv")
    p.add_argument("--image", default=None, help="image for the mean intensity of each object")
    p.add_argument(
        "--classes",
        default=None,
        help="classes to measure, names or ids, e.g. mito,nucleus (default all)",
    )
    p.add_argument(
        "--class-names",
        default=None,
        help="class names (a,b,c) or classes.json (default: the labels' metadata)",
    )
    p.add_argument(
        "--voxel-size",
        default=None,
        help="Z,Y,X micrometres (default: OME-Zarr/TIFF metadata; else results in voxels)",
    )
    p.add_argument("--instances", default=None, help="write the instance label volume to OUT.zarr")
    p.add_argument(
        "--block", type=_parse_shape, default=None, help="block Z,Y,X (default 64,512,512)"
    )
    p.add_argument(
        "--no-surface",
        action="store_true",
        help="skip surface areas (marching cubes; most of the time on big objects)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing tables")


def _add_method_options(parser: argparse.ArgumentParser, method: str) -> None:
    """One --option per field of the method's config dataclass."""
    from .methods import get_method
    from .methods.base import option_summaries

    config_class = get_method(method).config_class
    group = parser.add_argument_group(f"{method} options")
    hints = typing.get_type_hints(config_class)
    summaries = option_summaries(config_class.__doc__ or "")
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        kind = _option_type(hints[field.name])
        summary = summaries.get(field.name, "")
        if kind is bool:
            group.add_argument(
                flag,
                dest=f"opt_{field.name}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{summary} (default {default})".lstrip(),
            )
        elif typing.get_origin(hints[field.name]) is typing.Literal:
            group.add_argument(
                flag,
                dest=f"opt_{field.name}",
                default=argparse.SUPPRESS,
                choices=typing.get_args(hints[field.name]),
                help=f"{summary} (default {default})".lstrip(),
            )
        elif kind is tuple:
            group.add_argument(
                flag,
                dest=f"opt_{field.name}",
                default=argparse.SUPPRESS,
                type=lambda s: tuple(_scalar(v) for v in s.split(",")),
                help=f"{summary} comma-separated (default {','.join(map(str, default))})".lstrip(),
            )
        else:
            group.add_argument(
                flag,
                dest=f"opt_{field.name}",
                default=argparse.SUPPRESS,
                type=_optional(kind),
                metavar=kind.__name__.upper(),
                help=f"{summary} (default {default})".lstrip(),
            )


def _option_type(hint):
    if hint in (bool, int, float, str):
        return hint
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0]
    return str


def _optional(kind):
    def convert(text: str):
        if text.lower() == "none":
            return None
        value = kind(text)
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not a finite number; give one")
        return value

    convert.__name__ = kind.__name__
    return convert


def _scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _method_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``wsseg`` command; returns the exit code (0 done, 2 a user error).

    Python warnings are printed as one line each, ``wsseg: warning: <message>``, while it runs.
    """
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return _run(argv)
    finally:
        warnings.showwarning = previous


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line without its source line (the ``warnings.showwarning`` hook)."""
    print(f"wsseg: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def _run(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("WSSEG_DEBUG") == "1"
    try:
        method = _method_from_argv(argv) if "train" in argv else None
        from .methods import available_methods

        parser = build_parser(method if method in available_methods() else None)
        args = parser.parse_args(argv)
        if args.command == "train":
            options = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_")}
            return cmd_train(args, options)
        if args.command == "simulate":
            _check_simulate_out(args)
        handler = {
            "sample": cmd_sample,
            "import": cmd_import,
            "simulate": cmd_simulate,
            "predict": cmd_predict,
            "evaluate": cmd_evaluate,
            "suggest": cmd_suggest,
            "measure": cmd_measure,
            "export": cmd_export,
            "pretrain": cmd_pretrain,
        }[args.command]
        return handler(args)
    except (
        WssegError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ) as exc:
        if debug:
            raise
        print(f"wsseg: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("wsseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one line, with the way to get details
        if debug:
            raise
        print(
            f"wsseg: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


def _one_line(exc: BaseException) -> str:
    text = (
        str(exc)
        if not isinstance(exc, (FileNotFoundError, PermissionError)) or not exc.filename
        else (f"{exc.strerror}: {exc.filename}")
    )
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:  # e.g. a 17 MB argument quoted back by a library
        tail = MAX_ERROR_CHARS // 3
        text = f"{text[: MAX_ERROR_CHARS - tail - 5]} ... {text[-tail:]}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
