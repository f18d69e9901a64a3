#!/usr/bin/env bash
# Source the mounted Xilinx tools, then run the command (e.g. a bundle's finn_build/build.sh).
# XILINX_ROOT (e.g. /tools/Xilinx) and XILINX_VERSION (e.g. 2024.2) come from `docker run -e`.
set -euo pipefail
: "${XILINX_ROOT:?mount your Xilinx install and set XILINX_ROOT (see docker/finn/README.md)}"
: "${XILINX_VERSION:?set XILINX_VERSION to the installed tool version, e.g. 2024.2}"
source "$XILINX_ROOT/Vivado/$XILINX_VERSION/settings64.sh"
# Vitis HLS lives in Vitis/<version> from 2024.2 on, in Vitis_HLS/<version> before.
for hls in "$XILINX_ROOT/Vitis/$XILINX_VERSION" "$XILINX_ROOT/Vitis_HLS/$XILINX_VERSION"; do
  if [[ -f "$hls/settings64.sh" ]]; then source "$hls/settings64.sh"; break; fi
done
exec "$@"
