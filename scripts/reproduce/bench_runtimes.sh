#!/usr/bin/env bash
# Every runtime side by side: the README's QAT MobileNetV2 and EfficientNet-Lite0 in every
# format x precision x runtime, one bench run, batch 1, 1 and 2 threads.
#
#   bash scripts/reproduce/bench_runtimes.sh [RUNS_DIR] [OUT_DIR]
#
# 1. Converts each model's best.pt with `edgecxr convert --int8 --fp16 --formats <every
#    format in the table>` into RUNS_DIR/all_formats/<model>/. A format whose package is
#    not installed is reported skipped by convert (with its pip command) and the others
#    are still written; degraded INT8 files are kept (--keep-degraded) so the table shows
#    their loss, and bench's "Ship:" line never recommends them.
# 2. Runs ONE `edgecxr bench` over all export folders with --runtimes all: every file on
#    every runtime that opens it, each (file, runtime, threads) in its own process.
#    Writes OUT_DIR/bench.{json,csv,md,png}.
# 3. Rebuilds the tables from OUT_DIR/bench.json alone: OUT_DIR/README_SECTION.md (the
#    README table, `python -m edgecxr.bench.tables --format readme`) and
#    OUT_DIR/fastest.md (the fastest file within MAX_DROP points per model and thread
#    count, and its latency against the best ONNX Runtime / TFLite row of the same run).
#
# Environment: MODELS ("name=checkpoint ..." pairs; default the two README models),
# FORMATS (comma-separated; default every format the table knows), THREADS (1,2),
# RUNTIMES (all), WARMUP (10), NRUNS (100), MAX_DROP (0.5), SKIP_CONVERT=1 (bench the
# folders as they are), KEEP_DEGRADED (1), EDGECXR, BENCH_ARGS, CONVERT_ARGS.
set -euo pipefail
RUNS=${1:-runs}
OUT=${2:-$RUNS/bench_runtimes}
MODELS=${MODELS:-"mobilenet_v2_qat_u8=$RUNS/mobilenet_v2_qat_u8/best.pt efficientnet_lite0=$RUNS/efficientnet_lite0/best.pt"}
THREADS=${THREADS:-1,2}
RUNTIMES=${RUNTIMES:-all}
WARMUP=${WARMUP:-10}
NRUNS=${NRUNS:-100}
MAX_DROP=${MAX_DROP:-0.5}
SKIP_CONVERT=${SKIP_CONVERT:-0}
KEEP_DEGRADED=${KEEP_DEGRADED:-1}
BENCH_ARGS=${BENCH_ARGS:-}
CONVERT_ARGS=${CONVERT_ARGS:-}
HERE=$(cd "$(dirname "$0")" && pwd)
EDGECXR=${EDGECXR:-edgecxr}
PY=${PY:-python3}
command -v "$EDGECXR" >/dev/null || EDGECXR="$HERE/../../.venv/bin/edgecxr"
[ -x "$HERE/../../.venv/bin/python" ] && PY="$HERE/../../.venv/bin/python"
# the same two float nodes as the README's MobileNetV2 INT8 ONNX (see scripts/reproduce/bench_readme.sh)
MNV2_KEEP_FLOAT=${MNV2_KEEP_FLOAT-/backbone/backbone.0/backbone.0.0/backbone.0.0.0/Conv,/backbone/backbone.0/backbone.0.1/conv/conv.0/conv.0.0/Conv}
FORMATS=${FORMATS:-$("$PY" -c 'from edgecxr.convert.formats import format_names; print(",".join(format_names()))')}

exports=()
for pair in $MODELS; do
  name=${pair%%=*}
  ckpt=${pair#*=}
  exp="$RUNS/all_formats/$name"
  if [ "$SKIP_CONVERT" != 1 ]; then
    if [ ! -f "$ckpt" ]; then
      echo "bench_runtimes: $ckpt not found; train it first (make train-reference)" >&2
      exit 2
    fi
    extra=()
    case "$name" in mobilenet_v2*) [ -n "$MNV2_KEEP_FLOAT" ] && extra+=(--keep-float "$MNV2_KEEP_FLOAT");; esac
    [ "$KEEP_DEGRADED" = 1 ] && extra+=(--keep-degraded)
    echo "bench_runtimes: converting $ckpt -> $exp (formats $FORMATS)" >&2
    # shellcheck disable=SC2086  # CONVERT_ARGS is a list of flags
    "$EDGECXR" convert "$ckpt" --out "$exp" --formats "$FORMATS" --int8 --fp16 "${extra[@]}" $CONVERT_ARGS
  fi
  [ -d "$exp" ] || { echo "bench_runtimes: $exp missing; run without SKIP_CONVERT=1" >&2; exit 2; }
  exports+=("$exp")
done

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
"$EDGECXR" bench "${exports[@]}" --split test --threads "$THREADS" --runtimes "$RUNTIMES" --warmup "$WARMUP" --runs "$NRUNS" \
  --out "$OUT" $BENCH_ARGS

{
  echo "### Runtimes side by side (\`bash scripts/reproduce/bench_runtimes.sh\`)"
  echo
  echo "Every format x precision x runtime of the README's QAT MobileNetV2 and EfficientNet-Lite0"
  echo "(\`edgecxr convert --formats $FORMATS --int8 --fp16\`), timed at batch 1 in one"
  echo "\`edgecxr bench --runtimes $RUNTIMES --threads $THREADS\` run (WARMUP=$WARMUP NRUNS=$NRUNS) on the machine named below."
  echo "Macro-F1 is on each run's held-out test split with a 95% bootstrap CI; ΔF1 is the paired change"
  echo "against the same network's FP32 ONNX on ONNX Runtime, on the same images."
  echo "Rebuild any table from \`bench.json\` with \`python -m edgecxr.bench.tables bench.json --format text|md|csv|readme [--columns all]\`."
  echo
  "$PY" -m edgecxr.bench.tables "$OUT/bench.json" --format readme
  echo
  echo "Fastest within $MAX_DROP macro-F1 points (\`python scripts/reproduce/fastest_within.py bench.json --max-drop $MAX_DROP\`):"
  echo
  "$PY" "$HERE/fastest_within.py" "$OUT/bench.json" --max-drop "$MAX_DROP"
} > "$OUT/README_SECTION.md"
"$PY" "$HERE/fastest_within.py" "$OUT/bench.json" --max-drop "$MAX_DROP" > "$OUT/fastest.md"
echo "bench_runtimes: wrote $OUT/README_SECTION.md, $OUT/fastest.md and $OUT/bench.{json,csv,md,png}" >&2
