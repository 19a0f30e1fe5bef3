#!/usr/bin/env bash
# Interop with the PyPI safetensors package: weft writes, Python reads and
# compares values (and weft's CRC-32s with zlib.crc32); Python writes, weft
# reads and compares. usage: interop.sh INTEROP_TOOL
# Exit 77 (skipped) only if PyPI is unreachable for the one-time install.
set -u
tool=$1
here=$(cd "$(dirname "$0")" && pwd)
venv=$("$here/venv.sh")
rc=$?
[ $rc -eq 0 ] || exit $rc
py=$venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-interop.XXXXXX")
trap 'rm -rf "$work"' EXIT
set -e
"$tool" write "$work/weft.safetensors"
"$py" "$here/interop.py" check-weft "$work/weft.safetensors"
"$tool" checkpoint "$work/ck"
"$py" "$here/interop.py" check-ckpt "$work/ck/rank-00000.safetensors"
"$py" "$here/interop.py" write "$work/py.safetensors"
"$tool" read "$work/py.safetensors"
echo "interop: ok ($("$py" -c 'import safetensors; print("safetensors", safetensors.__version__)'))"
