#!/usr/bin/env bash
# Create or refresh .venv/ at the repo root. torch==2.13.0 (CPU) goes in first so that no later
# requirement can pull a multi-GB CUDA build; the script fails if anything replaced it. finn-plus
# (the finn-* targets) and amd-quark (the vaiep-* targets) go in last, without their pins
# (scripts/finn-install.sh and scripts/quark-install.sh say why).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
want=$(cat pyproject.toml scripts/venv.sh scripts/finn-install.sh scripts/quark-install.sh scripts/pinned.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x .venv/bin/python ] || python3.11 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --disable-pip-version-check --upgrade pip
$py -m pip install -q --disable-pip-version-check torch==2.13.0
$py -m pip install -q --disable-pip-version-check -e '.[test]'
PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1 bash scripts/finn-install.sh "$py" >/dev/null
PIP_QUIET=1 PIP_DISABLE_PIP_VERSION_CHECK=1 bash scripts/quark-install.sh "$py" >/dev/null
torch_version=$($py -c 'import torch; print(torch.__version__)')
case "$torch_version" in
  2.13.0+cpu|2.13.0) ;;
  *) echo "venv.sh: torch $torch_version was installed instead of 2.13.0 (CPU); remove .venv and check the pins" >&2; exit 1 ;;
esac
echo "$want" > "$stamp"
