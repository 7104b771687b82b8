#!/usr/bin/env bash
# Installs everything napari-wsseg needs on a fresh Debian/Ubuntu machine (Python >= 3.10):
# the system libraries Qt/napari need under Xvfb, then a virtual environment in .venv with
# the package in editable mode and the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(xvfb xauth libgl1 libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xinerama0)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch comes from PyPI (a CUDA build that also runs on the CPU). For a specific CUDA or a
# CPU-only build, install torch first from https://pytorch.org/get-started/locally/.
.venv/bin/python -m pip install -q -e ".[dev]"
echo "napari-wsseg installed in .venv (activate with: source .venv/bin/activate)"
