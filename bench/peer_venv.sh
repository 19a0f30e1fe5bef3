#!/usr/bin/env bash
# Creates (once) and prints the path of the Python virtual environment the
# transformer and attention benches run their peers in, outside the
# repository: PyTorch 2 (the CPU build from PyTorch's wheel index, else
# PyPI's default build, which runs on the CPU too) and JAX (PyPI, CPU).
# Exit status: 0 ready; 77 a package index is unreachable (said on stderr).
set -u
venv=${WEFT_PEER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers}
py=$venv/bin/python
if [ -x "$py" ] && "$py" -c "import torch, jax, numpy" 2>/dev/null; then
  echo "$venv"; exit 0
fi
if [ ! -x "$py" ]; then
  python3 -m venv "$venv" >&2 || { echo "peer_venv.sh: python3 -m venv $venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
pip=("$py" -m pip install -q --disable-pip-version-check)
if ! "$py" -c "import torch" 2>/dev/null; then
  "${pip[@]}" --retries 0 --timeout 15 torch --index-url https://download.pytorch.org/whl/cpu >&2 2>/dev/null || "${pip[@]}" torch >&2 ||
    { echo "peer_venv.sh: pip install torch failed (is PyPI reachable?)" >&2; exit 77; }
fi
if ! "$py" -c "import jax" 2>/dev/null; then
  "${pip[@]}" "jax[cpu]" numpy >&2 || { echo "peer_venv.sh: pip install jax failed (is PyPI reachable?)" >&2; exit 77; }
fi
"$py" -c "import torch, jax, numpy" >&2 || exit 1
echo "$venv"
