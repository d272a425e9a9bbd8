#!/usr/bin/env bash
# Trains the source-robustness variants behind the README table "Training for a new site":
# MobileNetV2 from the official TFLite ImageNet weights, 3 epochs at 224 px (the README recipe),
# each variant calibrated (temperature, conformal sets, OOD head) so that "refer" and "refuse"
# are what the device runner would do.
#   bash scripts/train_site_variants.sh [SHARED_DATA] [OUT]     (finished variants are skipped)
# Variants (all keep the three COVID-19 Radiography classes; tbcxr gives Normal images only):
#   base_loso       covid-radiography only (tbcxr held out: the unseen source)
#   aug_loso        + --site-augment                     (tbcxr held out)
#   multi           + tbcxr Normal, --balance source     (no source held out)
#   robust          + tbcxr Normal, --balance source --site-augment
#   base_losoN      Normal from tbcxr only (covid-radiography/Normal held out: the unseen source)
#   robust_losoN    the same with --balance source --site-augment
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/site}
EDGECXR=${EDGECXR:-edgecxr}
TRAIN_ARGS=${TRAIN_ARGS:-}
REF=${REF:-../shared/reference-models/tf2_mobilenet_v2_1.0_224_ptq.tflite}
mkdir -p "$OUT"
common=(--data "$DATA/covid-radiography" --data "$DATA/tbcxr" --classes COVID,Normal,Viral_Pneumonia
        --arch mobilenet_v2 --weights "$REF" --img-size 224 --epochs 3 --lr 3e-4 --scheduler cosine --early-stop 0 --seed 0)

variant() {  # name, extra train flags...
  local name=$1 dir="$OUT/$1"
  shift
  if [ -f "$dir/calibrated" ]; then echo "$dir: done, skipping"; return; fi
  if [ ! -f "$dir/metrics.json" ]; then
    local resume=()
    [ -f "$dir/last.pt" ] && resume=(--resume)
    $EDGECXR train $TRAIN_ARGS "${common[@]}" "$@" "${resume[@]}" --out "$dir"
  fi
  $EDGECXR calibrate "$dir/best.pt" --quiet
  touch "$dir/calibrated"
}

variant base_loso --holdout tbcxr
variant aug_loso --holdout tbcxr --site-augment
variant robust --balance source --site-augment
variant multi --balance source
variant robust_losoN --holdout covid-radiography/Normal --balance source --site-augment
variant base_losoN --holdout covid-radiography/Normal
