#!/usr/bin/env bash
# Creates (once) and prints the path of the Python virtual environment the
# checkpoint interop test uses, outside the repository, with the PyPI
# packages safetensors and numpy. Exit status: 0 ready; 77 PyPI unreachable
# (said on stderr); 1 any other failure.
set -u
venv=${WEFT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-venv}
py=$venv/bin/python
if [ -x "$py" ] && "$py" -c "import safetensors.numpy, numpy" 2>/dev/null; then
  echo "$venv"; exit 0
fi
if [ ! -x "$py" ]; then
  python3 -m venv "$venv" >&2 || { echo "venv.sh: python3 -m venv $venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
if "$py" -m pip install -q --disable-pip-version-check safetensors numpy >&2; then
  echo "$venv"; exit 0
fi
# Failed: was it the network?
if ! "$py" -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/safetensors/', timeout=15)" 2>/dev/null; then
  echo "venv.sh: PyPI is unreachable from this machine: cannot install safetensors (skipped)" >&2
  exit 77
fi
echo "venv.sh: pip install safetensors numpy into $venv failed with PyPI reachable" >&2
exit 1
