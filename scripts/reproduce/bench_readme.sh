#!/usr/bin/env bash
# The README benchmark in one command: every trained backbone x {FP32, FP16, INT8} x
# {ONNX, TFLite} on its test split, 1 and 2 threads, with the reference INT8 models
# from ../shared/reference-models timed in the same run.
#
#   bash scripts/reproduce/bench_readme.sh [RUNS_DIR] [OUT_DIR]
#
# Converts each run folder's best.pt with `edgecxr convert --int8 --fp16` when its
# export folder is missing or older than the checkpoint, then runs `edgecxr bench`
# once over all export folders. Writes OUT_DIR/bench.{json,csv,md,png} and
# OUT_DIR/README_SECTION.md (the compact table to paste into the README).
# Environment: RUN_NAMES (run folders under RUNS_DIR, default: the README's three
# models), THREADS (1,2), WARMUP (10), NRUNS (100), REFERENCE_MODELS, EDGECXR,
# BENCH_ARGS (extra `edgecxr bench` flags, e.g. "--split-csv DIR/split.csv").
set -euo pipefail
RUNS=${1:-runs}
OUT=${2:-$RUNS/bench_readme}
RUN_NAMES=${RUN_NAMES:-"mobilenet_v2_qat squeezenet1_1 efficientnet_lite0"}
THREADS=${THREADS:-1,2}
WARMUP=${WARMUP:-10}
NRUNS=${NRUNS:-100}
HERE=$(cd "$(dirname "$0")" && pwd)
REFERENCE_MODELS=${REFERENCE_MODELS:-$HERE/../../../shared/reference-models}
EDGECXR=${EDGECXR:-edgecxr}
PY=${PY:-python3}
BENCH_ARGS=${BENCH_ARGS:-}
# MobileNetV2's 3-channel stem and first depthwise conv run slower in ONNX Runtime's x86
# INT8 kernels than in FP32 (scripts/dev/ort_node_profile.py); its INT8 ONNX keeps them float.
MNV2_KEEP_FLOAT=${MNV2_KEEP_FLOAT-/backbone/backbone.0/backbone.0.0/backbone.0.0.0/Conv,/backbone/backbone.0/backbone.0.1/conv/conv.0/conv.0.0/Conv}
command -v "$EDGECXR" >/dev/null || EDGECXR="$HERE/../../.venv/bin/edgecxr"
[ -x "$HERE/../../.venv/bin/python" ] && PY="$HERE/../../.venv/bin/python"

exports=()
for name in $RUN_NAMES; do
  ckpt="$RUNS/$name/best.pt"
  exp="$RUNS/$name/export"
  if [ ! -f "$ckpt" ]; then
    echo "bench_readme: $ckpt not found; train it first (make train-reference)" >&2
    exit 2
  fi
  fresh=1
  for f in onnx tflite; do
    for p in fp32 fp16 int8; do
      [ -n "$(find "$exp" -maxdepth 1 -name "*_${p}.${f}" -newer "$ckpt" 2>/dev/null)" ] || fresh=0
    done
  done
  if [ "$fresh" = 0 ]; then
    echo "bench_readme: converting $ckpt -> $exp" >&2
    extra=()
    case "$name" in mobilenet_v2*) [ -n "$MNV2_KEEP_FLOAT" ] && extra=(--keep-float "$MNV2_KEEP_FLOAT");; esac
    "$EDGECXR" convert "$ckpt" --out "$exp" --int8 --fp16 "${extra[@]}"
  fi
  exports+=("$exp")
done

refs=()
[ -d "$REFERENCE_MODELS" ] && refs+=("$REFERENCE_MODELS")

"$EDGECXR" bench "${exports[@]}" "${refs[@]}" --split test --threads "$THREADS" --warmup "$WARMUP" --runs "$NRUNS" \
  --out "$OUT" --format md $BENCH_ARGS

{
  echo "## Benchmarks"
  echo
  echo "Three backbones trained on the COVID-19 Radiography data (3 classes, \`make train-reference\`;"
  echo "MobileNetV2 is the quantization-aware fine-tuned run),"
  echo "converted with \`edgecxr convert --int8 --fp16\` (MobileNetV2's INT8 ONNX with its stem and first"
  echo "depthwise conv kept float, \`--keep-float\`), timed at batch 1 on the machine named below."
  echo "Macro-F1 is on each run's held-out test split with a 95% bootstrap CI; ΔF1 is the paired"
  echo "change against the same network's FP32 ONNX export on the same images. The two"
  echo "MobileNetV2 INT8 files from \`google-coral/test_data\` (ImageNet, 1001 classes, no contract)"
  echo "are timed in the same run as a yardstick for our INT8 conversion; their accuracy is n/a."
  echo
  echo "Reproduce: \`bash scripts/reproduce/bench_readme.sh\` (THREADS=$THREADS WARMUP=$WARMUP NRUNS=$NRUNS)."
  echo "Every row, with raw per-run times, is in \`bench.json\`; rebuild any table with"
  echo "\`python -m edgecxr.bench.tables bench.json --format md|csv|readme\`."
  echo
  "$PY" -m edgecxr.bench.tables "$OUT/bench.json" --format readme
  echo
  echo "![latency vs macro-F1](bench.png)"
} > "$OUT/README_SECTION.md"
echo "bench_readme: wrote $OUT/README_SECTION.md and $OUT/bench.png" >&2
