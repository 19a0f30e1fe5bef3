#!/usr/bin/env bash
# Every header compiles on its own (no missing includes), each in its own
# translation unit. Headers are found by globbing INCLUDE_DIR, so a new file or
# folder is covered without editing this script or meson.build:
#   *.hpp, *.h   with the first C++ compiler given, warning-free under
#                -Wall -Wextra -Wpedantic -Werror; each further compiler
#                compiles all of those headers together in one translation
#                unit with the same flags (a warning in a header shows in any
#                unit that includes it, and self-containment is the first
#                compiler's check: one unit takes 8 s where 137 took 115);
#   *.cuh        with nvcc where it is installed (CUDA headers are CUDA code).
# A header that needs an optional dependency which is not installed here (its
# #include <mpi.h>, <nccl.h>, <cuda_runtime.h>, <cblas.h>, <zlib.h>, ... is not
# found) is reported as skipped; a missing header of any other name is a
# failure. Any other kind of file under INCLUDE_DIR fails the test, since it
# would go unchecked.
#   usage: headers_alone.sh INCLUDE_DIR COMPILER...
set -u
inc=$1
shift
nvcc=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)
extra="$(pkg-config --cflags openblas 2>/dev/null) $(pkg-config --cflags ompi-cxx 2>/dev/null || pkg-config --cflags mpi 2>/dev/null)"
# CUDA's and NCCL's headers, for host-side headers that include them (as system headers: their warnings are not ours).
[ -n "$nvcc" ] && [ -f "$(dirname "$nvcc")/../include/cuda_runtime.h" ] && extra+=" -isystem $(dirname "$nvcc")/../include"
optional='mpi.h|nccl.h|cuda_runtime.h|cuda.h|cuda_fp16.h|cuda_bf16.h|cublas_v2.h|cublasLt.h|cblas.h|zlib.h'

check() {  # check COMPILER HEADER: prints "ok", "skip" or "FAIL" lines
  local cxx=$1 h=$2 out missing
  if [ "$cxx" = nvcc ]; then
    local tu
    tu=$(mktemp --suffix=.cu)
    echo "#include <$h>" >"$tu"
    out=$("$nvcc" -std=c++20 --expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra -I"$inc" -c "$tu" -o /dev/null 2>&1)
    local rc=$?
    rm -f "$tu"
    [ $rc -eq 0 ] && { echo "ok ($cxx): $h"; return 0; }
  else
    out=$(echo "#include <$h>" | $cxx -x c++ -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I"$inc" $extra - 2>&1) &&
      { echo "ok ($cxx): $h"; return 0; }
  fi
  missing=$(grep -oE "fatal error: '?[A-Za-z0-9_./]+'?(: No such file| file not found)" <<<"$out" | head -1 |
            sed -E "s/fatal error: '?([A-Za-z0-9_./]+).*/\1/")
  if [ -n "$missing" ] && grep -qxE "$optional" <<<"$missing"; then
    echo "skip ($cxx): $h needs <$missing>, not installed"
    return 0
  fi
  echo "FAIL ($cxx): $h"
  echo "$out" | head -20
  return 1
}
export -f check
export inc extra nvcc optional

fail=0
others=$(cd "$inc" && find . -type f ! -name '*.hpp' ! -name '*.h' ! -name '*.cuh' | sort)
if [ -n "$others" ]; then
  echo "FAIL: files under $inc that are no header this test knows (.hpp, .h, .cuh), so unchecked:"
  echo "$others"
  fail=1
fi
run() {  # run COMPILER FIND-ARGS...: check every header matched, two at a time
  local cxx=$1 log
  shift
  log=$(mktemp)
  (cd "$inc" && find weft -type f "$@" | sort) | xargs -P 2 -I{} bash -c "check $cxx {}" >"$log" || fail=1
  grep -v '^ok' "$log"
  echo "$cxx: $(grep -c '^ok' "$log") headers compile alone, $(grep -c '^skip' "$log") skipped, $(grep -c '^FAIL' "$log") failed"
  compiled_alone=$(sed -n 's/^ok ([^)]*): //p' "$log")
  rm -f "$log"
}
together() {  # together COMPILER: every header the first compiler compiled, in one unit
  local cxx=$1 n out
  n=$(wc -w <<<"$compiled_alone")
  if out=$(for h in $compiled_alone; do echo "#include <$h>"; done |
           $cxx -x c++ -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I"$inc" $extra - 2>&1); then
    echo "$cxx: the $n headers compile together in one unit, warning-free"
  else
    echo "FAIL ($cxx): the $n headers together in one unit:"
    echo "$out" | head -40
    fail=1
  fi
}
compiled_alone=
first=1
for cxx in "$@"; do
  command -v "$cxx" >/dev/null || { echo "skip: $cxx not installed"; continue; }
  if [ $first = 1 ]; then
    run "$cxx" \( -name '*.hpp' -o -name '*.h' \)
    first=0
  else
    together "$cxx"
  fi
done
if [ -n "$nvcc" ]; then
  run nvcc -name '*.cuh'
else
  echo "skip: nvcc not installed, $(cd "$inc" && find weft -name '*.cuh' | wc -l) CUDA headers not checked"
fi
exit $fail
