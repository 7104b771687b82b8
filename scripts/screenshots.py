"""Take the screenshots of docs/widgets.md from the CI walk of its 5-step tutorial.

Runs ``tests/widgets/test_tutorial_walk.py`` (real mouse and key events in a napari window, the
widgets docked from the Plugins API) with ``WSSEG_SCREENSHOTS`` pointing at docs/images/, so the
pictures show exactly what the test checked. Needs a display; headless::

    xvfb-run -a -s "-screen 0 1600x1400x24" python scripts/screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WSSEG_SCREENSHOTS": str(OUT)}
    test = "tests/widgets/test_tutorial_walk.py::test_tutorial_walk_with_real_events[plugin]"
    own_display = ["--no-xvfb"] if os.environ.get("DISPLAY") else []  # e.g. xvfb-run's, in colour
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *own_display, test],
        cwd=ROOT,
        env=env,
    )
    for png in sorted(OUT.glob("*.png")):
        print(f"{png} ({png.stat().st_size // 1024} kB)")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
