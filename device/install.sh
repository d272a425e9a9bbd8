#!/usr/bin/env bash
# Set up the edgecxr device runner on a Raspberry Pi (64-bit Raspberry Pi OS bookworm).
#
#   bash install.sh [--venv DIR] [--opencv] [--onnx] [--openvino] [--ncnn] [--dicom] [--legacy-tflite]
#
# Creates a virtual environment (default: ./venv next to this script) with numpy and
# ai-edge-litert from requirements.txt, adds the optional packages asked for, and
# checks that the runner starts. Run it from the copied device/ folder; no root needed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/venv"
EXTRAS=()
LEGACY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --opencv) EXTRAS+=("opencv-python-headless"); shift ;;
    --onnx) EXTRAS+=("onnxruntime"); shift ;;
    --openvino) EXTRAS+=("openvino"); shift ;;
    --ncnn) EXTRAS+=("ncnn"); shift ;;
    --dicom) EXTRAS+=("pydicom"); shift ;;
    --legacy-tflite) LEGACY=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

ARCH="$(uname -m)"
if [ "$ARCH" = "armv7l" ] || [ "$ARCH" = "armv6l" ]; then
  echo "install.sh: this is a 32-bit OS ($ARCH); ai-edge-litert has no 32-bit ARM wheel. Install 64-bit Raspberry Pi OS." >&2
  exit 2
fi
[ "$ARCH" = "aarch64" ] || echo "install.sh: note: $ARCH is not a Pi (aarch64); installing anyway"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || { echo "install.sh: need Python >= 3.9 ($PY is $("$PY" -V 2>&1))" >&2; exit 2; }
"$PY" -c 'import venv, ensurepip' 2>/dev/null || { echo "install.sh: python3-venv is missing: sudo apt install python3-venv" >&2; exit 2; }

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ "$LEGACY" = 1 ]; then
  "$VENV/bin/python" -m pip install -q "numpy<2" "tflite-runtime==2.14.0"
else
  "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt"
fi
if [ ${#EXTRAS[@]} -gt 0 ]; then
  "$VENV/bin/python" -m pip install -q "${EXTRAS[@]}"
fi

"$VENV/bin/python" "$HERE/edgecxr_runner.py" --help >/dev/null
RUNTIME="$(cd "$HERE" && "$VENV/bin/python" -c 'from backends import import_interpreter; print(import_interpreter()[1])')"
echo "installed: $VENV ($RUNTIME)"
echo "try:  $VENV/bin/python $HERE/edgecxr_runner.py --model MODEL.tflite --image XRAY.png"
