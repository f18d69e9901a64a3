#!/usr/bin/env bash
# Install finn-plus 1.6.1 for vidconv-export --target finn-<board>, next to our pinned stack.
#
# finn-plus 1.6.1 pins onnx==1.21.0, onnxruntime==1.25.1, protobuf==5.29.6 and brevitas==0.13.0
# (brevitas 0.13.0 needs setuptools<70, torch 2.13 needs setuptools>=77, so a plain install replaces
# the CPU torch with a CUDA one). The parts of finn-plus we use (QONNX -> FINN, streamlining, HW
# layers, SpecializeLayers, folding, estimates, Python execution) run with our onnx 1.23.2,
# onnxruntime 1.32.0, protobuf 7.x, numpy 2.4.6 and brevitas 0.13.4 (measured; tests/test_finn_*.py).
# So: finn-plus without its dependencies, then only what those parts import:
#   pydantic          finn/util/settings.py (imported by finn/util/basic.py)
#   scipy             finn/transformation/fpgadataflow/specialize_layers.py, set_folding.py (via hwsoftmax)
#   onnxoptimizer     brevitas.export.export_qonnx (QONNX export refuses to run without it)
#   mashumaro, mip    finn/builder/build_dataflow_config.py (the `finn build` configs; tests check ours)
# Not installed (not on our path): scikit-learn (empirical QoR), psutil (rtlsim builds), pandas,
# onnx-passes, cmake, pybind11 (finn_xsi, needs Vivado anyway).
#
# Usage: scripts/finn-install.sh [PYTHON]   (default: the python on PATH, i.e. the active venv)
set -euo pipefail
PY="${1:-python}"

source "$(dirname "$0")/pinned.sh"
PINNED=(torch onnx onnxruntime protobuf numpy brevitas qonnx)
before="$(pinned "${PINNED[@]}")"
"$PY" -m pip install --no-deps "finn-plus==1.6.1"
log="$(mktemp)"
if ! "$PY" -m pip install "pydantic>2.0" "scipy>=1.17,<1.18" "onnxoptimizer>=0.4.2,<0.5.0" \
  "mashumaro[yaml]>=3.15,<4.0" "mip==1.17.0" 2>"$log"; then
  cat "$log" >&2; rm -f "$log"; exit 1
fi
# pip lists finn-plus's own pins as conflicts; they are exactly what --no-deps leaves out (see above).
grep -v -e "^finn-plus 1.6.1 requires" -e "dependency resolver does not currently take into account" "$log" >&2 || true
rm -f "$log"
unchanged finn-install "$before" "${PINNED[@]}"
"$PY" -c "import finn.transformation.fpgadataflow.specialize_layers, finn.builder.build_dataflow_config, onnxoptimizer"
echo "finn-plus $("$PY" -c 'from importlib import metadata; print(metadata.version("finn-plus"))') installed; pinned packages unchanged:"
pinned "${PINNED[@]}"
