#!/usr/bin/env bash
# Run the device runner on aarch64 (qemu-user, Cortex-A72 = Raspberry Pi 4 core) and
# check that it gives the probabilities the x86 run gives: FP32 within 1e-4, INT8
# TFLite identical (same ai-edge-litert version on both sides), INT8 ONNX within 1e-4
# (ONNX Runtime's ARM and x86 kernels requantize differently). Each model's own
# golden-vector self-test (--selftest) must pass on both sides first.
#
# usage: scripts/reproduce/aarch64_check.sh --images DIR MODEL.tflite|MODEL.onnx|MODEL.xml [MODEL ...]
#
# Both sides run a bare copy of device/ with numpy + ai-edge-litert (+ onnxruntime for
# .onnx files, openvino for OpenVINO .xml files) only (no OpenCV, no edgecxr), i.e. exactly what a minimal Pi install has. The arm64 Python comes
# from Debian bookworm arm64 packages (the same Python 3.11 as Raspberry Pi OS
# bookworm), the wheels from PyPI's manylinux aarch64 builds; both are cached in
# $EDGECXR_AARCH64_CACHE (default ~/.cache/edgecxr-aarch64), so only the first run
# downloads (about 60 MB). Emulated timings are meaningless and never printed.
#
# Exit codes: 0 match, 1 mismatch, 2 usage, 77 skipped (qemu/apt/pip unavailable).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$(dirname "$HERE")")"
PY="${PYTHON:-$REPO/.venv/bin/python}"
CACHE="${EDGECXR_AARCH64_CACHE:-$HOME/.cache/edgecxr-aarch64}"
CPU="${EDGECXR_QEMU_CPU:-cortex-a72}"

skip() { echo "SKIP: $*"; exit 77; }
die() { echo "aarch64_check: error: $*" >&2; exit 2; }

IMAGES=""
MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --images) IMAGES="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
[ -n "$IMAGES" ] && [ -d "$IMAGES" ] || die "--images DIR is required (a folder of PNG files)"
[ ${#MODELS[@]} -gt 0 ] || die "give at least one MODEL.tflite"
NEED_ORT=0
NEED_NCNN=0
NEED_OV=0
NEED_ET=0
for m in "${MODELS[@]}"; do
  case "$m" in
    *.pte) [ -f "$m" ] && [ -f "$m.json" ] || die "$m: ExecuTorch program or its contract sidecar $m.json is missing"; NEED_ET=1 ;;
    *.onnx) [ -f "$m" ] || die "$m: model not found"; NEED_ORT=1 ;;
    *.ncnn.param) [ -f "$m" ] && [ -f "${m%.param}.bin" ] && [ -f "$m.json" ] || die "$m: ncnn graph, its ${m%.param}.bin or $m.json is missing"; NEED_NCNN=1 ;;
    *.xml) [ -f "$m" ] && [ -f "${m%.xml}.bin" ] || die "$m: OpenVINO IR or its weights ${m%.xml}.bin is missing"; NEED_OV=1 ;;
    *) [ -f "$m" ] && [ -f "$m.json" ] || die "$m: model or its contract sidecar $m.json is missing" ;;
  esac
done

QEMU="$(command -v qemu-aarch64-static || true)"
[ -n "$QEMU" ] || skip "qemu-aarch64-static not installed (apt-get install qemu-user-static)"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || skip "apt-get/dpkg not available to fetch an arm64 Python"
[ -x "$PY" ] || skip "no host Python at $PY (run make first or set PYTHON)"

# Same numpy and ai-edge-litert versions as the host, so INT8 can be compared bit for bit.
read -r NUMPY_V LITERT_V ORT_V < <("$PY" -c "from importlib.metadata import version as v; print(v('numpy'), v('ai-edge-litert'), v('onnxruntime'))") \
  || skip "host Python lacks numpy, ai-edge-litert or onnxruntime"
ROOT="$CACHE/root"
SITE="$CACHE/site-numpy$NUMPY_V-litert$LITERT_V"
mkdir -p "$CACHE"
T0=$(date +%s)

# --- 1. arm64 Python 3.11 from Debian bookworm (apt under a private config) ----------
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
  echo "fetching arm64 python3.11 packages into $ROOT"
  APTDIR="$CACHE/apt"
  mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$APTDIR/debs" "$APTDIR/etc/preferences.d" "$APTDIR/etc/apt.conf.d"
  : > "$APTDIR/status"
  echo "deb [arch=arm64] http://deb.debian.org/debian bookworm main" > "$APTDIR/etc/sources.list"
  cat > "$APTDIR/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$APTDIR";
Dir::State::Lists "$APTDIR/lists";
Dir::State::status "$APTDIR/status";
Dir::Cache "$APTDIR";
Dir::Cache::archives "$APTDIR/archives";
Dir::Etc::SourceList "$APTDIR/etc/sources.list";
Dir::Etc::SourceParts "$APTDIR/etc/sources.list.d";
Dir::Etc::Preferences "$APTDIR/etc/preferences";
Dir::Etc::PreferencesParts "$APTDIR/etc/preferences.d";
Dir::Etc::Parts "$APTDIR/etc/apt.conf.d";
Acquire::Languages "none";
EOF
  mkdir -p "$APTDIR/etc/sources.list.d"
  export APT_CONFIG="$APTDIR/apt.conf"
  apt-get update -qq -o APT::Sandbox::User=root >/dev/null 2>&1 || skip "apt-get update for arm64 failed (no network to deb.debian.org?)"
  PKGS="libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libcrypt1 libuuid1
        libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3 libdb5.3 media-types
        python3.11-minimal libpython3.11-minimal libpython3.11-stdlib"
  (cd "$APTDIR/debs" && apt-get download -qq -o APT::Sandbox::User=root $PKGS >/dev/null 2>&1) || skip "apt-get download of arm64 packages failed"
  unset APT_CONFIG
  rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
  for deb in "$APTDIR"/debs/*.deb; do dpkg -x "$deb" "$ROOT.tmp"; done
  ln -sf python3.11 "$ROOT.tmp/usr/bin/python3"
  # onnxruntime (and a truthful device string) need an ARM /proc/cpuinfo; qemu -L serves this one
  mkdir -p "$ROOT.tmp/proc"
  { for i in 0 1 2 3; do printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"; done
    printf 'Hardware\t: Cortex-A72 emulated by qemu-user (edgecxr aarch64_check)\n'; } > "$ROOT.tmp/proc/cpuinfo"
  rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
fi

# fetch_wheels DIR MAX_GLIBC WHAT POST PKG...: PyPI's aarch64 cp311 wheels of PKG... into DIR, once (DIR/.complete
# marks a finished fetch; a broken one is redone). MAX_GLIBC: newest manylinux_2_N tag to accept; WHAT: named in the
# skip line; POST: a function run on the fetched folder before it counts as complete, or "-". NO_DEPS=1: --no-deps.
fetch_wheels() {
  local dir="$1" max_glibc="$2" what="$3" post="$4" plats="" n
  shift 4
  [ -f "$dir/.complete" ] && return 0
  echo "installing aarch64 wheels $* into $dir"
  rm -rf "$dir.tmp"
  for n in 17 24 26 27 28 $(seq 29 "$max_glibc"); do plats="$plats --platform manylinux_2_${n}_aarch64"; done
  "$PY" -m pip install -q --disable-pip-version-check --target "$dir.tmp" --only-binary=:all: ${NO_DEPS:+--no-deps} \
      --python-version 3.11 --implementation cp --abi cp311 $plats --platform manylinux2014_aarch64 \
      "$@" >/dev/null 2>&1 || skip "pip could not fetch the aarch64 $what wheels"
  if [ "$post" != - ]; then "$post" "$dir.tmp"; fi
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# --- 2. aarch64 wheels: numpy + ai-edge-litert (no OpenCV: the minimal Pi install) ---
fetch_wheels "$SITE" 28 "numpy/ai-edge-litert" - "numpy==$NUMPY_V" "ai-edge-litert==$LITERT_V"
T1=$(date +%s)
ARM_PATH="$SITE"

# --- 2b. onnxruntime for .onnx models (its own folder: a TFLite-only Pi never needs it) ---
if [ "$NEED_ORT" = 1 ]; then
  ORT_SITE="$CACHE/site-onnxruntime$ORT_V"
  NO_DEPS=1 fetch_wheels "$ORT_SITE" 28 onnxruntime - "onnxruntime==$ORT_V"
  ARM_PATH="$ARM_PATH:$ORT_SITE"
fi

# --- 2c. ncnn for .ncnn.param models: the host's version (manylinux_2_28 aarch64 wheel; the bindings need only numpy) ---
if [ "$NEED_NCNN" = 1 ]; then
  NCNN_V="$("$PY" -c "from importlib.metadata import version as v; print(v('ncnn'))" 2>/dev/null)" || skip "host Python lacks ncnn"
  NCNN_SITE="$CACHE/site-ncnn$NCNN_V"
  NO_DEPS=1 fetch_wheels "$NCNN_SITE" 28 ncnn - "ncnn==$NCNN_V"
  ARM_PATH="$ARM_PATH:$NCNN_SITE"
fi

# --- 2d. openvino for .xml models: the host's version; its aarch64 wheel is manylinux_2_35 (bookworm: glibc 2.36) ---
if [ "$NEED_OV" = 1 ]; then
  OV_V="$("$PY" -c "from importlib.metadata import version as v; print(v('openvino'))" 2>/dev/null)" || skip "host Python lacks openvino"
  OV_SITE="$CACHE/site-openvino$OV_V"
  NO_DEPS=1 fetch_wheels "$OV_SITE" 36 openvino - "openvino==$OV_V" openvino-telemetry packaging
  ARM_PATH="$ARM_PATH:$OV_SITE"
fi

# --- 2e. executorch + torch for .pte models: the host's versions. PyPI's aarch64 torch is a CUDA build whose
# nvidia-* dependencies have no aarch64 wheel here; the libraries it links get stubs (scripts/dev/aarch64_cuda_stubs.py,
# never called on the CPU path; a Pi uses PyTorch's CPU wheel instead). About 1.1 GB, cached. ---
cuda_stubs() {
  "$PY" "$REPO/scripts/dev/aarch64_cuda_stubs.py" "$1" "$ROOT" || skip "building the CUDA stubs for the aarch64 torch failed"
}
if [ "$NEED_ET" = 1 ]; then
  read -r ET_V TORCH_V < <("$PY" -c "from importlib.metadata import version as v; print(v('executorch'), v('torch'))" 2>/dev/null) \
    || skip "host Python lacks executorch or torch"
  ET_SITE="$CACHE/site-executorch$ET_V-torch$TORCH_V"
  if [ ! -f "$ET_SITE/.complete" ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null || apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1 \
      || skip "aarch64-linux-gnu-gcc (Debian gcc-aarch64-linux-gnu) is needed to build the CUDA stubs for PyPI's aarch64 torch"
  fi
  NO_DEPS=1 fetch_wheels "$ET_SITE" 28 executorch/torch cuda_stubs "executorch==$ET_V" "torch==$TORCH_V" typing-extensions \
    sympy mpmath filelock networkx jinja2 markupsafe fsspec
  ARM_PATH="$ARM_PATH:$ET_SITE"
fi

# --- 3. a bare copy of device/, run on both architectures -----------------------------
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/no_cv2"
cp -r "$REPO/device" "$WORK/device"
rm -rf "$WORK/device/__pycache__"
echo "raise ImportError('OpenCV left out: the minimal Pi install has none')" > "$WORK/no_cv2/cv2.py"
HOST_SITE="$("$PY" -c 'import site; print(site.getsitepackages()[0])')"

"$QEMU" -L "$ROOT" -cpu "$CPU" "$ROOT/usr/bin/python3.11" -S -c "import sys, platform; print('arm64 Python', platform.python_version(), platform.machine())" \
  || { echo "aarch64_check: the arm64 Python does not start under qemu" >&2; exit 1; }

STATUS=0
for m in "${MODELS[@]}"; do
  name="$(basename "$m")"
  # the file's own golden vectors first, on both sides: exit 3 from the runner is a failed self-test
  for side in x86 arm; do
    if [ $side = x86 ]; then
      out=$(env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$WORK/no_cv2:$HOST_SITE" "$PY" -S "$WORK/device/edgecxr_runner.py" --model "$m" --selftest 2>&1) && rc=0 || rc=$?
    else
      out=$(env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$ARM_PATH" EDGECXR_EMULATED=1 "$QEMU" -L "$ROOT" -cpu "$CPU" \
            "$ROOT/usr/bin/python3.11" -S "$WORK/device/edgecxr_runner.py" --model "$m" --selftest 2>&1) && rc=0 || rc=$?
    fi
    line=$(echo "$out" | grep -E "self-test|error" | tail -1)
    echo "SELFTEST $side $name: ${line:-exit $rc}"
    [ $rc = 0 ] || STATUS=1
  done
  env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$WORK/no_cv2:$HOST_SITE" \
    "$PY" -S "$WORK/device/edgecxr_runner.py" --model "$m" --dir "$IMAGES" --json --csv "$WORK/x86_$name.csv" \
    > "$WORK/x86_$name.jsonl" 2> "$WORK/x86_$name.err" || { cat "$WORK/x86_$name.err" >&2; exit 1; }
  env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$ARM_PATH" EDGECXR_EMULATED=1 \
    "$QEMU" -L "$ROOT" -cpu "$CPU" "$ROOT/usr/bin/python3.11" -S "$WORK/device/edgecxr_runner.py" \
    --model "$m" --dir "$IMAGES" --json --csv "$WORK/arm_$name.csv" \
    > "$WORK/arm_$name.jsonl" 2> "$WORK/arm_$name.err" || { cat "$WORK/arm_$name.err" >&2; exit 1; }
  "$PY" "$HERE/aarch64_compare.py" "$m" "$WORK/x86_$name.jsonl" "$WORK/x86_$name.err" "$WORK/arm_$name.jsonl" "$WORK/arm_$name.err" \
    || STATUS=1
done
T2=$(date +%s)
echo "aarch64 check (qemu -cpu $CPU): setup $((T1 - T0)) s, runs $((T2 - T1)) s; $([ $STATUS = 0 ] && echo PASS || echo FAIL)"
exit $STATUS
