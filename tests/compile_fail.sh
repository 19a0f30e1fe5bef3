#!/usr/bin/env bash
# Compile-fail test with its twin (fmt's habit). FILE states one rule the type
# system enforces; its offending line sits under `#ifdef WEFT_COMPILE_FAIL`,
# with the line that keeps the rule under `#else`. Two compilations:
#   -DWEFT_COMPILE_FAIL  must NOT compile, and the compiler's message must
#                        contain the sentence on the file's "// expect:" line;
#   without the macro    (the twin) must compile, so the failure above comes
#                        from the offending line, not from a missing include or
#                        a broken snippet.
#   usage: compile_fail.sh FILE INCLUDE_DIR COMPILER [ARGS...]
set -u
file=$1 inc=$2
shift 2
expect=$(sed -n 's|^// expect: ||p' "$file")
[ -n "$expect" ] || { echo "FAIL: $file has no '// expect:' line"; exit 1; }
grep -q '^#ifdef WEFT_COMPILE_FAIL' "$file" ||
  { echo "FAIL: $file has no '#ifdef WEFT_COMPILE_FAIL' around its offending line (no twin)"; exit 1; }
extra=$(pkg-config --cflags openblas 2>/dev/null || true)
compile() { "$@" -std=c++20 -fsyntax-only -I"$inc" $extra "$file" 2>&1; }

if ! twin=$(compile "$@"); then
  echo "FAIL: $file's twin (without WEFT_COMPILE_FAIL) does not compile, so the rule's failure proves nothing:"
  echo "$twin" | head -40
  exit 1
fi
out=$(compile "$@" -DWEFT_COMPILE_FAIL)
rc=$?
if [ $rc -eq 0 ]; then
  echo "FAIL: $file compiled with WEFT_COMPILE_FAIL, but must not"
  exit 1
fi
if ! grep -qF -- "$expect" <<<"$out"; then
  echo "FAIL: $file failed to compile without the expected message: $expect"
  echo "$out" | head -40
  exit 1
fi
echo "ok: $file is rejected with: $expect"
echo "ok: its twin (without WEFT_COMPILE_FAIL) compiles"
