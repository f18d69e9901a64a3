#!/usr/bin/env bash
# Install AMD Quark 0.13 (`amd-quark`) for the vaiep-* targets, next to our pinned stack.
#
# amd-quark 0.13 requires onnx>=1.21,<=1.22; our stack has onnx 1.23.2 (brevitas, qonnx, finn-plus
# and ONNX Runtime 1.32 are measured with it). The part of Quark we use (quark.onnx: ModelQuantizer
# with XINT8, its DPU refinement and simulation, on a QDQ graph) runs with onnx 1.23.2 (measured;
# tests/test_quark.py). So: amd-quark without its dependencies, then only what quark.onnx imports:
#   joblib, tqdm, psutil   quark/onnx/calibration/calibrators.py, quark/common/profiler/utils.py
#   onnxslim               the SimplifyModel preprocessing XINT8 runs (without it Quark skips it, with an error line)
#   ninja                  torch's extension builder, which compiles Quark's custom ops on first import
# Not installed (not imported by quark.onnx on our path): evaluate, plotly, sentencepiece,
# zstandard, pandas' extras (the LLM and profiling parts of Quark).
#
# Quark compiles its custom ops on first import into $TORCH_EXTENSIONS_DIR; vidconv_deploy.quark sets
# it to <venv>/torch_extensions, and this script builds them there once (~10 s), so that no test and
# no export compiles them, and ~/.cache stays clean.
#
# Usage: scripts/quark-install.sh [PYTHON]   (default: the python on PATH, i.e. the active venv)
set -euo pipefail
PY="${1:-python}"

source "$(dirname "$0")/pinned.sh"
PINNED=(torch onnx onnxruntime protobuf numpy brevitas qonnx finn-plus)
before="$(pinned "${PINNED[@]}")"
log="$(mktemp)"
if ! "$PY" -m pip install "joblib>=1.4" "tqdm>=4.66" "psutil>=5.9" "onnxslim>=0.1.84" "ninja>=1.11" 2>"$log" \
  || ! "$PY" -m pip install --no-deps "amd-quark==0.13" 2>>"$log"; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
# pip lists amd-quark's own requirements as conflicts; they are exactly what --no-deps leaves out (see above),
# and finn-plus's pins (scripts/finn-install.sh says why).
grep -v -e "^amd-quark 0.13 requires" -e "^finn-plus 1.6.1 requires" \
  -e "dependency resolver does not currently take into account" "$log" >&2 || true
rm -f "$log"
unchanged quark-install "$before" "${PINNED[@]}"
# Import through our package: it points TORCH_EXTENSIONS_DIR into the venv, and Quark compiles its ops there.
"$PY" -c "from vidconv_deploy.quark.env import import_quark; import_quark()" >/dev/null
echo "amd-quark $("$PY" -c 'from importlib import metadata; print(metadata.version("amd-quark"))') installed; pinned packages unchanged:"
pinned "${PINNED[@]}"
