#!/usr/bin/env bash
# Every public header compiles on its own (no missing includes), warning-free
# under -Wall -Wextra -Wpedantic -Werror, with each C++ compiler given.
#   usage: headers_alone.sh INCLUDE_DIR COMPILER...
set -u
inc=$1
shift
extra="$(pkg-config --cflags openblas 2>/dev/null) $(pkg-config --cflags ompi-cxx 2>/dev/null || pkg-config --cflags mpi 2>/dev/null)"
fail=0
check() {
  local cxx=$1 h=$2
  if ! out=$(echo "#include <$h>" | $cxx -x c++ -std=c++20 -fsyntax-only -Wall -Wextra -Wpedantic -Werror -I"$inc" $extra - 2>&1); then
    echo "FAIL ($cxx): $h"
    echo "$out" | head -20
    return 1
  fi
}
export -f check
export inc extra
for cxx in "$@"; do
  command -v "$cxx" >/dev/null || { echo "skip: $cxx not installed"; continue; }
  (cd "$inc" && find weft -name '*.hpp' | sort) | xargs -P 2 -I{} bash -c "check $cxx {}" || fail=1
  echo "$cxx: $(cd "$inc" && find weft -name '*.hpp' | wc -l) headers checked"
done
exit $fail
