"""How responsive napari stays while the Train widget trains: the longest event-loop stall.

A QTimer asks to fire every 5 ms on the main thread; the time between two firings minus 5 ms is
a stall (the event loop was busy: drawing, or waiting for the GIL the training thread holds).
We report the longest stall and the 99th percentile (a) with the viewer idle and (b) while a model
trains through the Train widget, with training in a thread of the napari process and in a
separate process (the widget's "run in" choice); each training runs ``--repeat`` times (the
first run in the napari process also pays one-time imports). Unless
``--no-pan``, the camera pans every 50 ms in every phase, so the viewer keeps redrawing as it
would while a user works (with software OpenGL under Xvfb a redraw alone takes tens of ms).

Run it under a display (Xvfb works)::

    xvfb-run -a python benchmarks/gui_responsiveness.py --method rf
    xvfb-run -a python benchmarks/gui_responsiveness.py --method dsp --budget 20

Data: the real EM stack in ../shared/data/drosophila_vnc (first slices, read in place, never
copied) when present, else the built-in phantom. Prints one JSON line per phase.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TICK_MS = 5
PAN_MS = 50
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "drosophila_vnc"


def load_data(n_slices: int, size: int):
    """(image (Z, Y, X) uint8, labels, classes) from the real EM data, or the phantom."""
    if (DATA / "image.npy").exists():
        from napari_wsseg.annotations import read_classes_json

        image = np.load(DATA / "image.npy", mmap_mode="r")[:n_slices, :size, :size]
        labels = np.load(DATA / "labels.npy", mmap_mode="r")[:n_slices, :size, :size]
        return np.ascontiguousarray(image), np.ascontiguousarray(labels), read_classes_json(DATA / "classes.json")
    from napari_wsseg.sample import make_phantom

    return make_phantom((n_slices, size, size), seed=0)


def click_points(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """(N, 4) (z, y, x, class) rows sampled from the dense labels of every slice."""
    rng = np.random.default_rng(seed)
    rows = []
    for z in range(len(labels)):
        for k in np.unique(labels[z]):
            coords = np.argwhere(labels[z] == k)
            pick = coords[rng.choice(len(coords), min(per_class, len(coords)), replace=False)]
            rows.append(np.column_stack([np.full(len(pick), z), pick, np.full(len(pick), k)]))
    return np.concatenate(rows).astype(np.int64)


class StackSampler:
    """With ``--trace``: samples the main thread's stack while it is stalled, to see what blocks.

    A background thread looks every 10 ms; when the main-thread timer has not fired for 40 ms it
    records the innermost frames of the main thread (as ``file:line function``).
    """

    def __init__(self, meter: "StallMeter") -> None:
        import threading

        self.meter, self.samples = meter, []
        self.main_id = threading.main_thread().ident
        self.running = False
        self.thread = None

    def start(self) -> None:
        import threading

        self.samples, self.running = [], True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        import traceback

        while self.running:
            time.sleep(0.01)
            last = self.meter.last
            now = time.perf_counter()
            if last is not None and now - last > 0.04:
                frame = sys._current_frames().get(self.main_id)
                if frame is not None:
                    stack = traceback.extract_stack(frame)[-8:]
                    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack]
                    self.samples.append((round(now - self.meter.t0, 2), where))

    def report(self, worst: list[tuple[float, float]]) -> None:
        """Print the stacks sampled inside each of the ``worst`` (ms, end s) stalls."""
        for ms, end in worst:
            inside = [w for t, w in self.samples if end - ms / 1000 - 0.01 <= t <= end + 0.01]
            print(f"stall {ms} ms ending at {end} s: {len(inside)} samples", flush=True)
            for where in inside[:2]:
                print("    " + " <- ".join(reversed(where)), flush=True)


class StallMeter:
    """Records gaps between the firings of a fast QTimer on the main thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self.last = None
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append((now - self.last) * 1000 - TICK_MS)
            self.ends.append(now)
        self.last = now

    def worst(self, n: int = 5) -> list[tuple[float, float]]:
        """The ``n`` longest stalls as (ms, seconds since start when the stall ended)."""
        order = np.argsort(self.gaps)[::-1][:n]
        return [(round(self.gaps[i], 1), round(self.ends[i] - self.t0, 2)) for i in order]

    def start(self) -> None:
        self.gaps, self.ends, self.last, self.t0 = [], [], None, time.perf_counter()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        gaps = np.array(self.gaps) if self.gaps else np.zeros(1)
        return {"max_stall_ms": round(float(gaps.max()), 1), "p99_stall_ms": round(float(np.percentile(gaps, 99)), 1),
                "ticks": len(self.gaps)}


def run_until(app, done, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.001)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="rf")
    parser.add_argument("--budget", type=float, default=None, help="training time budget (s)")
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--points", type=int, default=30, help="clicked points per class and slice")
    parser.add_argument("--skip-subprocess", action="store_true", help="only train in the napari process")
    parser.add_argument("--no-pan", action="store_true", help="measure without redraws (GIL only)")
    parser.add_argument("--trace", action="store_true", help="print the worst stalls and worker events")
    parser.add_argument("--repeat", type=int, default=2, help="training runs in the thread worker (the "
                        "first one also pays the one-time imports)")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wsseg.widgets._annotate import AnnotateWidget
    from napari_wsseg.widgets._train import TrainWidget

    image, labels, classes = load_data(args.slices, args.size)
    rows = click_points(labels, args.points)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(image, name="em")
    annotate = AnnotateWidget(viewer)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(annotate)
    viewer.window.add_dock_widget(train)
    session = annotate.session
    session.set_classes(list(classes))
    points = session.layer("points")
    for k in np.unique(rows[:, 3]):
        points.feature_defaults["class"] = int(k)
        points.add(rows[rows[:, 3] == k, :3].astype(float))
    meter = StallMeter()
    pan = _Panner(viewer, app)
    common = {"method": args.method, "image": list(image.shape), "points": len(rows),
              "napari": napari.__version__, "python": sys.version.split()[0]}

    run_until(app, lambda: False, 2.0)  # let the first draw and imports settle
    common["panning"] = not args.no_pan
    meter.start()
    if not args.no_pan:
        pan.start()
    run_until(app, lambda: False, 5.0)
    print(json.dumps({"phase": "idle", **common, **meter.stop()}), flush=True)

    train.method_combo.setCurrentText(args.method)
    if args.budget:
        train.budget_spin.setValue(args.budget)
    else:
        train.budget_spin.setValue(0)
    train.preview_every.setValue(5.0)
    modes = ["napari process"] + ([] if args.skip_subprocess else ["separate process"])
    for mode in modes:
        train.run_combo.setCurrentText(mode)
        for run in range(1, args.repeat + 1):
            start = time.monotonic()
            meter.start()
            sampler = StackSampler(meter)
            if args.trace:
                sampler.start()
            worker = train.train()
            trace = []
            if args.trace:
                for name in ("started", "returned", "finished"):
                    getattr(worker, name).connect(
                        lambda *_, n=name: trace.append((n, time.perf_counter() - meter.t0)))
            run_until(app, lambda: train.worker is None and time.monotonic() - start > 1, 1800)
            result = meter.stop()
            if args.trace:
                sampler.stop()
                print("worst stalls (ms, at s):", meter.worst(), flush=True)
                sampler.report(meter.worst(3))
                print("events:", [(n, round(t, 2)) for n, t in trace], flush=True)
            phase = f"training in the {mode}, run {run}" + (" (imports)" if run == 1 and mode == modes[0] else "")
            print(json.dumps({"phase": phase, "seconds": round(time.monotonic() - start, 1), **common, **result}),
                  flush=True)
            del worker
    pan.stop()
    viewer.close()
    return 0


class _Panner:
    """Moves the camera a little every 50 ms so that the canvas keeps redrawing."""

    def __init__(self, viewer, app) -> None:
        from qtpy.QtCore import QTimer

        self.viewer = viewer
        self.step = 0
        self.timer = QTimer()
        self.timer.setInterval(PAN_MS)
        self.timer.timeout.connect(self._pan)

    def _pan(self) -> None:
        self.step += 1
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        center = list(camera.center)
        center[-1] += 5 if (self.step // 20) % 2 == 0 else -5
        camera.center = center

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


if __name__ == "__main__":
    sys.exit(main())
