#!/usr/bin/env bash
# Protonet vs supervised on the COVID-19 Radiography data: trains the protonet runs
# (all training images, and only K per class), a supervised baseline on the same K
# images, evaluates each on the shared test split and prints the Markdown table.
#   bash scripts/reproduce/protonet_table.sh [DATA] [RUNS]
#   ARCHS="mobilenet_v2" K=10 EPOCHS=10 IMG=128 bash scripts/reproduce/protonet_table.sh
# The full-data supervised rows come from scripts/reproduce/train_reference_models.sh (runs/ARCH).
# Every run uses RUNS/mobilenet_v2_128/split.csv (the reference split), so all rows
# share one test set. Finished runs (with eval_test/eval.json) are skipped.
# Settings are modest on purpose (2 shared CPU cores): 128 px, EPOCHS epochs of 20
# episodes (3-way 5-shot 5-query); K=10 is the smallest K that fills a 5-shot 5-query
# episode from training images alone.
set -euo pipefail
DATA=${1:-../shared/data/covid-radiography}
RUNS=${2:-runs}
ARCHS=${ARCHS:-mobilenet_v2 efficientnet_lite0 squeezenet1_1}
K=${K:-10}
EPOCHS=${EPOCHS:-10}
IMG=${IMG:-128}
THREADS=${THREADS:-1}
EDGECXR=${EDGECXR:-edgecxr}
PYTHON=${PYTHON:-python}
SPLIT=${SPLIT:-$RUNS/mobilenet_v2_128/split.csv}
[ -f "$SPLIT" ] || { echo "error: $SPLIT not found; run scripts/reproduce/train_reference_models.sh first or set SPLIT=" >&2; exit 2; }
$PYTHON scripts/reproduce/protonet_table.py kshot-split "$SPLIT" "$K" "$RUNS/kshot${K}_split.csv"

start_flag() {  # EfficientNet-Lite0 starts from ImageNet like its reference run; the others from random init
  [ "$1" = efficientnet_lite0 ] && echo "--pretrained" || true
}

run() {  # out, train args...
  local out=$1; shift
  if [ -f "$out/eval_test/eval.json" ]; then echo "skip $out (done)"; return; fi
  $EDGECXR train --out "$out" --data "$DATA" --img-size "$IMG" --epochs "$EPOCHS" --threads "$THREADS" --quiet "$@"
  $EDGECXR eval "$out/best.pt" --out "$out/eval_test" --threads "$THREADS" --quiet > "$out/eval_test.txt"
  echo "done $out"
}

for arch in $ARCHS; do
  run "$RUNS/protonet_$arch" --arch "$arch" $(start_flag "$arch") --method protonet --split-csv "$SPLIT"
  run "$RUNS/protonet_${arch}_kshot" --arch "$arch" $(start_flag "$arch") --method protonet --train-shots "$K" --split-csv "$SPLIT"
  # supervised K-shot: 3 steps per epoch, so 7x the epochs gives about the optimizer steps of the protonet run.
  # No early stopping: with 3 steps per epoch BatchNorm's running statistics need dozens of epochs to settle,
  # and until then the eval-mode network predicts one class (validation loss flat at chance).
  run "$RUNS/${arch}_kshot" --arch "$arch" $(start_flag "$arch") --split-csv "$RUNS/kshot${K}_split.csv" --batch-size 10 \
      --epochs $((EPOCHS * 7)) --early-stop 0
done
# SUPERVISED="mobilenet_v2=runs/mobilenet_v2_first ..." points the full-data supervised rows at other run folders
SUP_ARGS=()
for item in ${SUPERVISED:-}; do SUP_ARGS+=(--supervised "$item"); done
$PYTHON scripts/reproduce/protonet_table.py table --runs "$RUNS" --archs "$(echo $ARCHS | tr ' ' ',')" "${SUP_ARGS[@]}" | tee "$RUNS/protonet_table.md"
