#!/usr/bin/env bash
# Compile-fail test: the file must NOT compile, and the compiler's message must
# contain the sentence given on the file's "// expect:" line.
#   usage: compile_fail.sh FILE INCLUDE_DIR COMPILER [ARGS...]
set -u
file=$1 inc=$2
shift 2
expect=$(sed -n 's|^// expect: ||p' "$file")
[ -n "$expect" ] || { echo "$file has no '// expect:' line"; exit 1; }
extra=$(pkg-config --cflags openblas 2>/dev/null || true)
out=$("$@" -std=c++20 -fsyntax-only -I"$inc" $extra "$file" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
  echo "FAIL: $file compiled, but must not"
  exit 1
fi
if ! grep -qF -- "$expect" <<<"$out"; then
  echo "FAIL: $file failed to compile without the expected message: $expect"
  echo "$out" | head -40
  exit 1
fi
echo "ok: $file is rejected with: $expect"
