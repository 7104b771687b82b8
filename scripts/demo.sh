#!/usr/bin/env bash
# The main job on the built-in sample: phantom -> simulated clicks -> train -> predict -> evaluate.
# Usage: bash scripts/demo.sh [METHOD] [OUT_DIR]   (default: rf, ./runs/demo); re-running replaces its own outputs
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:-rf}
OUT=${2:-runs/demo}
WSSEG=.venv/bin/wsseg
mkdir -p "$OUT"
$WSSEG sample --out "$OUT/sample" --shape 16,256,256 --seed 0 --overwrite
# 4 clicks per class on 4 slices among z 0-7; slices 10-15 are held out for scoring.
$WSSEG simulate "$OUT/sample/labels.tif" --out "$OUT/clicks" --slices 4 --slice-range 0-7 --points 4 --seed 0 --overwrite
$WSSEG train "$OUT/sample/image.tif" --points "$OUT/clicks/points.csv" --classes "$OUT/sample/classes.json" \
  --method "$METHOD" --out "$OUT/model-$METHOD" --time-budget 300 --overwrite
$WSSEG predict "$OUT/model-$METHOD" "$OUT/sample/image.tif" --out "$OUT/pred-$METHOD.tif" --slices 10-15 --overwrite
$WSSEG evaluate "$OUT/pred-$METHOD.tif" "$OUT/sample/labels.tif" --slices 10-15 --classes "$OUT/sample/classes.json"
