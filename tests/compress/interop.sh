#!/usr/bin/env bash
# Quantised models (weft/compress/save.hpp) against the PyPI safetensors
# package: weft writes, Python checks dtypes, shapes and the quantisation rule
# against the f32 weights; Python writes, weft loads and prints what Python
# expects. usage: interop.sh INTEROP_TOOL. Exit 77 if PyPI is unreachable for
# the one-time venv (tests/checkpoint/venv.sh, shared with checkpoint_interop).
set -u
tool=$1
here=$(cd "$(dirname "$0")" && pwd)
venv=$("$here/../checkpoint/venv.sh")
rc=$?
[ $rc -eq 0 ] || exit $rc
py=$venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-compress-interop.XXXXXX")
trap 'rm -rf "$work"' EXIT
set -e
"$tool" write "$work"
"$py" "$here/interop.py" check "$work"
want=$("$py" "$here/interop.py" write "$work/py.safetensors")
got=$("$tool" read "$work/py.safetensors")
if [ "$want" != "$got" ]; then
  printf 'compress interop: weft read\n%s\nPython wrote\n%s\n' "$got" "$want" >&2
  exit 1
fi
echo "compress interop: ok"
