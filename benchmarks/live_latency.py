"""Live update latency: from a click to the refreshed prediction of a 1024 x 1024 slice (issue 17).

A real napari viewer with the Annotate and Train widgets; a first training (cold, as a user
would press Train); then live mode on and ``--clicks`` clicks, one at a time: a point is added to
the points layer programmatically (as a click does) and we wait until the live run's prediction
of the slice has been written into the prediction layer and the run has ended. Per click:

* ``debounce_s``: edit -> the live run starts (the Train widget's quiet time, DEBOUNCE_MS, plus
  building the job on the main thread);
* ``run_s``: run start -> its final prediction of the slice is emitted by the worker thread
  (sending the job, fitting, predicting; in the kept training process for "separate process");
* ``show_s``: that emit -> the prediction layer written and refreshed on the main thread;
* ``latency_s``: edit -> layer updated (what the user waits for: the sum of the three);
* ``first_shown_s``: edit -> the layer first changed in this run: rf's draft from its first
  trees (``RandomForestMethod.draft``), else the same as ``latency_s``;
* ``to_first_progress_s``, ``to_fitted_s``, ``to_draft_emitted_s``: run start -> the run's first
  progress event reached the worker thread / its fit ended / its draft prediction was emitted
  (where the time of a run goes);
* ``max_stall_ms``: the longest gap of a 5 ms main-thread timer from the edit until the run ended
  (gui_responsiveness.py's StallMeter), i.e. the longest time the viewer could not respond;
* ``feature_cache``: slices whose rf features the run computed / reused.

With ``--corrective`` each click goes where the shown prediction is wrong (a random such pixel
away from class borders, labelled with its true class), as a user corrects, and each click also
records whether the prediction at that pixel shows the clicked class afterwards (``honoured``)
and the share of correct pixels in the 65 x 65 window around it before and after
(``window_accuracy_before`` / ``_after``): does a live run act where the user clicked?

Run it under a display (Xvfb works); it prints a table and writes JSON::

    xvfb-run -a python benchmarks/live_latency.py --method rf
    xvfb-run -a python benchmarks/live_latency.py --method dsp --budget 120 --warm-steps 40

Data: slice 0 of the real EM stack in ../shared/data/drosophila_vnc (1024 x 1024, read in place,
never copied) when present, else a 2D phantom of that size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_responsiveness import DATA, StackSampler, StallMeter, load_data, run_until  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "live_latency.json"


def click_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """(N, 3) (y, x, class) rows away from class borders of a 2D label image."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(labels):
        inside = ndi.binary_erosion(labels == k, iterations=3)
        coords = np.argwhere(inside if inside.any() else labels == k)
        pick = coords[rng.choice(len(coords), min(per_class, len(coords)), replace=False)]
        rows.append(np.column_stack([pick, np.full(len(pick), k)]))
    return np.concatenate(rows).astype(np.int64)


#: Half side of the window around a corrective click whose accuracy is recorded.
WINDOW_HALF = 32


def shown_prediction(viewer) -> np.ndarray:
    """Class ids ``(Y, X)`` the prediction layer shows (its labels minus 1; -1 where empty)."""
    from napari_wsseg.widgets import _layers as L

    layer = L.find_layers(viewer.layers, "prediction")[0]
    return np.asarray(layer.data).reshape(layer.data.shape[-2:]).astype(np.int64) - 1


def corrective_row(labels: np.ndarray, shown: np.ndarray, rng) -> np.ndarray:
    """One (y, x, class) click at a random wrongly shown pixel away from class borders."""
    from scipy import ndimage as ndi

    inner = np.zeros(labels.shape, bool)
    for k in np.unique(labels):
        inner |= ndi.binary_erosion(labels == k, iterations=3)
    wrong = np.argwhere(inner & (shown != labels))
    y, x = wrong[rng.integers(len(wrong))]
    return np.array([y, x, labels[y, x]], np.int64)


def window_accuracy(labels: np.ndarray, shown: np.ndarray, y: int, x: int) -> float:
    rows = slice(max(0, y - WINDOW_HALF), y + WINDOW_HALF + 1)
    cols = slice(max(0, x - WINDOW_HALF), x + WINDOW_HALF + 1)
    return round(float(np.mean(shown[rows, cols] == labels[rows, cols])), 4)


def add_points(points, rows: np.ndarray) -> None:
    for k in np.unique(rows[:, 2]):
        points.feature_defaults["class"] = int(k)
        points.add(rows[rows[:, 2] == k, :2].astype(float))


class ClickClock:
    """Timestamps of one live run: started, final prediction emitted (worker), shown (main)."""

    def __init__(self, train) -> None:
        from qtpy.QtCore import Qt

        self.reset()
        original = train.train

        def timed_train(**kwargs):
            worker = original(**kwargs)
            if kwargs.get("live") and worker is not None and self.started is None:
                self.started = time.perf_counter()
            return worker

        train.train = timed_train  # LiveUpdater calls train.train(live=True)
        # in the worker thread, at emit time
        train._signals.preview.connect(self._emitted, Qt.ConnectionType.DirectConnection)
        train._signals.progress.connect(self._progress, Qt.ConnectionType.DirectConnection)
        # on the main thread, after the widget's own slot wrote the layer (connected before)
        train._signals.preview.connect(self._shown)

    def reset(self) -> None:
        self.started = self.emitted = self.shown = self.first_shown = None
        self.first_progress = self.fitted = self.draft_emitted = None

    def _progress(self, event) -> None:
        """Progress events relayed from the run: the first one (rf: the features of the first
        slice looked up) and the end of the fit (``done == total``)."""
        if self.started is None:
            return
        now = time.perf_counter()
        if self.first_progress is None:
            self.first_progress = now
        if event.done >= event.total and self.fitted is None:
            self.fitted = now

    def _emitted(self, result) -> None:
        if self.started is None:
            return
        if result.final:
            self.emitted = time.perf_counter()
        elif self.draft_emitted is None:
            self.draft_emitted = time.perf_counter()

    def _shown(self, result) -> None:
        if self.started is not None and self.first_shown is None:
            self.first_shown = time.perf_counter()  # rf's draft, else the final prediction
        if result.final and self.emitted is not None:
            self.shown = time.perf_counter()


def _since(start: float, then: float | None) -> float | None:
    return None if then is None else round(then - start, 3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="rf")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--points", type=int, default=10, help="first clicks per class")
    parser.add_argument("--budget", type=float, default=0.0, help="first training's budget (s)")
    parser.add_argument(
        "--run-in", default="separate process", choices=["separate process", "napari process"]
    )
    parser.add_argument(
        "--warm-steps",
        type=int,
        default=0,
        help="steps of a live run (the widget's 'live run steps'; 0: the method's)",
    )
    parser.add_argument(
        "--pause-after-live",
        type=float,
        default=0.0,
        help="extra seconds between ticking live and the first click (besides the 0.5 s before "
        "every click; the kept process prepares meanwhile)",
    )
    parser.add_argument(
        "--corrective",
        action="store_true",
        help="click where the shown prediction is wrong and record whether the click shows",
    )
    parser.add_argument(
        "--options",
        default="{}",
        help="the method's options as JSON for the first training, e.g. '{\"max_steps\": 200}' "
        "(a step count instead of a budget makes it the same on a busy machine)",
    )
    parser.add_argument(
        "--no-focus",
        action="store_true",
        help="live runs get no focus on the new clicks (to measure what the focus does)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--trace", action="store_true", help="print what the worst stalls ran")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wsseg.widgets._annotate import AnnotateWidget
    from napari_wsseg.widgets._live import DEBOUNCE_MS, visible_window
    from napari_wsseg.widgets._train import TrainWidget

    image, labels, classes = load_data(1, args.size)
    image, labels = image[0], labels[0]
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="em")
    annotate, train = AnnotateWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    viewer.window.add_dock_widget(train)
    annotate.session.set_classes(list(classes))
    points = annotate.session.layer("points")
    add_points(points, click_rows(labels, args.points, seed=0))
    train.method_combo.setCurrentText(args.method)
    train.run_combo.setCurrentText(args.run_in)
    train.budget_spin.setValue(args.budget)
    train.live_steps_spin.setValue(args.warm_steps)
    if args.no_focus:
        train._live_focus = lambda annotations: None
    if json.loads(args.options):
        train.options.set_values(**json.loads(args.options))
    run_until(app, lambda: False, 2.0)  # first draw and imports settle

    load_before = os.getloadavg()
    start = time.perf_counter()
    train.train()
    run_until(app, lambda: not train.is_running, 3600)
    first_s = time.perf_counter() - start
    clock = ClickClock(train)
    train.live_check.setChecked(True)
    run_until(app, lambda: False, args.pause_after_live)
    meter = StallMeter()
    extra = click_rows(labels, args.clicks, seed=1)
    order = np.random.default_rng(2).permutation(len(extra))[: args.clicks]
    results = []
    rng = np.random.default_rng(3)
    for i, row in enumerate(extra[order]):
        run_until(app, lambda: False, 0.5)
        before = shown_prediction(viewer) if args.corrective else None
        if before is not None:
            row = corrective_row(labels, before, rng)
        clock.reset()
        meter.start()
        sampler = StackSampler(meter)
        if args.trace:
            sampler.start()
        edit = time.perf_counter()
        add_points(points, row[None])
        run_until(app, lambda: clock.shown is not None and not train.is_running, 3600)
        stall = meter.stop()
        if args.trace:
            sampler.stop()
            sampler.report(meter.worst(2))
        outcome = train.last_outcome
        if before is not None:
            after = shown_prediction(viewer)
            y, x = int(row[0]), int(row[1])
            correction = {
                "clicked": [y, x, int(row[2])],
                "honoured": bool(after[y, x] == row[2]),
                "window_accuracy_before": window_accuracy(labels, before, y, x),
                "window_accuracy_after": window_accuracy(labels, after, y, x),
            }
        else:
            correction = {}
        results.append(
            correction
            | {
                "click": i + 1,
                "debounce_s": round(clock.started - edit, 3),
                "run_s": round(clock.emitted - clock.started, 3),
                "show_s": round(clock.shown - clock.emitted, 3),
                "latency_s": round(clock.shown - edit, 3),
                "first_shown_s": round(clock.first_shown - edit, 3),
                # run start -> first progress event of the run / fit done / draft emitted
                "to_first_progress_s": _since(clock.started, clock.first_progress),
                "to_fitted_s": _since(clock.started, clock.fitted),
                "to_draft_emitted_s": _since(clock.started, clock.draft_emitted),
                "max_stall_ms": stall["max_stall_ms"],
                "p99_stall_ms": stall["p99_stall_ms"],
                "child_run_training_s": round(outcome.seconds, 3),  # in the training process
                "warm": bool(outcome.warm),
                "feature_cache": outcome.feature_cache,
                "process_pid": train.live_process.pid,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    record = {
        "benchmark": "live_latency",
        "method": args.method,
        "run_in": args.run_in,
        "image": list(image.shape),
        "data": "drosophila_vnc slice 0" if (DATA / "image.npy").exists() else "phantom",
        "debounce_ms": DEBOUNCE_MS,
        "warm_steps": args.warm_steps or "method default",
        "first_training_s": round(first_s, 1),
        "pause_after_live_s": args.pause_after_live,
        "load_avg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": len(os.sched_getaffinity(0)),
        "napari": napari.__version__,
        "clicks": results,
        "median_latency_s": float(np.median([r["latency_s"] for r in results])),
        "median_first_shown_s": float(np.median([r["first_shown_s"] for r in results])),
        "median_run_s": float(np.median([r["run_s"] for r in results])),
        "max_stall_ms": max(r["max_stall_ms"] for r in results),
        "corrective": args.corrective,
        "focus": not args.no_focus,
        "options": json.loads(args.options),
    }
    if args.corrective:
        record["honoured"] = sum(r["honoured"] for r in results)
    window = visible_window(train.session.image_layer, train.session.image)
    record["visible_window"] = None if window is None else [[w.start, w.stop] for w in window]
    print_table(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    records = [r for r in records if (r["method"], r["run_in"]) != (args.method, args.run_in)]
    args.out.write_text(json.dumps(records + [record], indent=1) + "\n")
    train.live_check.setChecked(False)
    viewer.close()
    return 0


def print_table(record: dict) -> None:
    print(
        f"\n{record['method']} ({record['run_in']}), image {record['image']}, first training "
        f"{record['first_training_s']} s, load {record['load_avg_1min_before_after']}"
    )
    print(
        "click  debounce_s  run_s  show_s  latency_s  first_shown_s  max_stall_ms  computed/reused"
    )
    for r in record["clicks"]:
        cache = r["feature_cache"]
        reuse = f"{cache.get('computed', '-')}/{cache.get('hits', '-')}"
        print(
            f"{r['click']:5d}  {r['debounce_s']:10.2f}  {r['run_s']:5.2f}  {r['show_s']:6.2f}  "
            f"{r['latency_s']:9.2f}  {r['first_shown_s']:13.2f}  {r['max_stall_ms']:12.1f}  "
            f"{reuse:>15}"
        )


if __name__ == "__main__":
    sys.exit(main())
