#!/usr/bin/env bash
# Trains the source-robustness variants behind the README table "Training for a new site":
# MobileNetV2 from the official TFLite ImageNet weights, 3 epochs at 224 px (the README recipe),
# each variant calibrated (temperature, conformal sets, OOD head) so that "refer" and "refuse"
# are what the device runner would do.
#   bash scripts/reproduce/train_site_variants.sh [SHARED_DATA] [OUT]     (finished variants are skipped)
# Variants (all keep the three COVID-19 Radiography classes; tbcxr gives Normal images only):
#   base_loso       covid-radiography only (tbcxr held out: the unseen source)
#   aug_loso        + --site-augment                     (tbcxr held out)
#   multi           + tbcxr Normal, --balance source     (no source held out)
#   robust          + tbcxr Normal, --balance source --site-augment
#   base_losoN      Normal from tbcxr only (covid-radiography/Normal held out: the unseen source)
#   robust_losoN    the same with --balance source --site-augment
#   robust_long     robust + 3 more epochs at lr 1e-4 (the harder, augmented task converges slower)
#   robust_losoN_long  robust_losoN + the same 3 epochs (the robust recipe in the fold that holds covid Normal out)
#   robust_lc, robust_losoN_lc  robust and robust_losoN with local-contrast augmentation on
#                   (--site-augment-p local_contrast=0.3: random CLAHE or unsharp masking, a vendor's post-processing)
#   *_s1, *_s2      base_losoN, robust_losoN(_lc) with seeds 1 and 2 (another split of the training sources,
#                   initialisation and draws): how much of a fold-B difference is the seed?
#   base_site50, robust_site50_lc, base_site200 (+ _s1, _s2)   fold B after "training for the site": 50 (200) labelled images of
#                   covid-radiography/Normal (drawn with the seed; scripts/reproduce/site_sample.py, symbolic links
#                   under $SITES) added as a third source, the other 950 (800) held out as the unseen site
#   lp_losoN, lpft_losoN (+ _s1, _s2)   fold B, linear probe (--freeze-backbone, 3 epochs), then every layer
#                   3 more epochs from it (LP-FT)
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-runs/site}
EDGECXR=${EDGECXR:-edgecxr}
TRAIN_ARGS=${TRAIN_ARGS:-}
REF=${REF:-../shared/reference-models/tf2_mobilenet_v2_1.0_224_ptq.tflite}
mkdir -p "$OUT"
SITES=${SITES:-/tmp/edgecxr_sites}
PYTHON=${PYTHON:-python}
data=(--data "$DATA/covid-radiography" --data "$DATA/tbcxr")
common=(--classes COVID,Normal,Viral_Pneumonia
        --arch mobilenet_v2 --img-size 224 --epochs 3 --scheduler cosine --early-stop 0)

variant() {  # name, [from RUN], extra train flags...
  local name=$1 dir="$OUT/$1"
  shift
  local start=(--weights "$REF" --lr 3e-4 --seed 0)
  # a continuation takes another seed: with seed 0 its epochs would draw the very augmentations and
  # images of its start's epochs again (both seeded by seed and epoch); it overfitted so (val loss up)
  if [ "${1:-}" = from ]; then start=(--weights "$OUT/$2/best.pt" --split-csv "$OUT/$2/split.csv" --lr 1e-4 --seed 1); shift 2; fi
  if [ -f "$dir/calibrated" ]; then echo "$dir: done, skipping"; return; fi
  if [ ! -f "$dir/metrics.json" ]; then
    local resume=()
    [ -f "$dir/last.pt" ] && resume=(--resume)
    $EDGECXR train $TRAIN_ARGS "${data[@]}" "${common[@]}" "${start[@]}" "$@" "${resume[@]}" --out "$dir"
  fi
  $EDGECXR calibrate "$dir/best.pt" --quiet
  touch "$dir/calibrated"
}

site_variant() {  # name, N, seed, extra train flags: fold B plus N labelled images of the site (covid-radiography/Normal)
  local name=$1 n=$2 seed=$3 lay="$SITES/site$2_s$3"
  shift 3
  [ -f "$lay/SITE.json" ] || $PYTHON scripts/reproduce/site_sample.py --data "$DATA/covid-radiography" --site-class Normal \
      --n "$n" --seed "$seed" --out "$lay"
  local data=(--data "$lay/covid-radiography" --data "$DATA/tbcxr" --data "$lay/site" --data "$lay/site_rest")  # seen by variant (bash scopes locals dynamically)
  variant "$name" --holdout site_rest --seed "$seed" "$@"
}

variant base_loso --holdout tbcxr
variant aug_loso --holdout tbcxr --site-augment
variant robust --balance source --site-augment
variant multi --balance source
variant robust_losoN --holdout covid-radiography/Normal --balance source --site-augment
variant base_losoN --holdout covid-radiography/Normal
variant robust_long from robust --balance source --site-augment
variant robust_losoN_long from robust_losoN --balance source --site-augment
variant robust_lc --balance source --site-augment --site-augment-p local_contrast=0.3
variant robust_losoN_lc --holdout covid-radiography/Normal --balance source --site-augment --site-augment-p local_contrast=0.3
variant robust_losoN_lc_s1 --holdout covid-radiography/Normal --balance source --site-augment --site-augment-p local_contrast=0.3 --seed 1
variant base_losoN_s1 --holdout covid-radiography/Normal --seed 1
variant robust_losoN_s1 --holdout covid-radiography/Normal --balance source --site-augment --seed 1
variant base_losoN_s2 --holdout covid-radiography/Normal --seed 2
variant robust_losoN_lc_s2 --holdout covid-radiography/Normal --balance source --site-augment --site-augment-p local_contrast=0.3 --seed 2
site_variant base_site50 50 0
site_variant base_site50_s1 50 1
site_variant base_site50_s2 50 2
site_variant robust_site50_lc 50 0 --balance source --site-augment --site-augment-p local_contrast=0.3
site_variant robust_site50_lc_s1 50 1 --balance source --site-augment --site-augment-p local_contrast=0.3
site_variant robust_site50_lc_s2 50 2 --balance source --site-augment --site-augment-p local_contrast=0.3
variant lp_losoN --holdout covid-radiography/Normal --freeze-backbone --lr 1e-3
variant lpft_losoN from lp_losoN --seed 10
variant lp_losoN_s1 --holdout covid-radiography/Normal --freeze-backbone --lr 1e-3 --seed 1
variant lpft_losoN_s1 from lp_losoN_s1 --seed 11
variant lp_losoN_s2 --holdout covid-radiography/Normal --freeze-backbone --lr 1e-3 --seed 2
variant lpft_losoN_s2 from lp_losoN_s2 --seed 12
site_variant base_site200 200 0
site_variant base_site200_s1 200 1
site_variant base_site200_s2 200 2
