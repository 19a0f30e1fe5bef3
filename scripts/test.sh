#!/usr/bin/env bash
# README command 2: install what is missing, build, run every test.
# Ends with "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
# The tests check results, not speed: they build in their own directory at
# -O0, which compiles about 1.65x faster than -O1 and 2.6x faster than the
# -O3 build/ that demo.sh and the benchmarks use (measured per file); the
# tests run a little slower (comm threads 56 -> 75 s, autodiff 7 -> 20 s),
# far less than the build saves: on a clean clone with 2 cores the whole
# script took 22m51s at -O0, against about 29 minutes at -O1.
# Warnings that only GCC's optimiser finds (-Warray-bounds, -Wmaybe-
# uninitialized) show in build/ at -O3, not here.
# WEFT_BUILD=... and WEFT_TEST_OPT=1|2|3 choose otherwise.
export WEFT_BUILD=${WEFT_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build-test}
source "$(dirname "$0")/common.sh"

weft_install "${WEFT_BASE_PKGS[@]}" clang dataset-fashion-mnist python3-venv iproute2
# The checkpoint interop test's PyPI safetensors, once, in a venv outside the
# repository (tests/checkpoint/venv.sh; the test itself skips if PyPI is unreachable).
"$WEFT_ROOT/tests/checkpoint/venv.sh" >/dev/null || echo "== no safetensors venv: the checkpoint_interop test will say why"
weft_build -Doptimization="${WEFT_TEST_OPT:-0}" -Dcompile_only_optimization=0

set +e
meson test -C "$WEFT_BUILD" --num-processes 2 --print-errorlogs "$@" 2>&1 | tee "$WEFT_BUILD/test-output.txt"
rc=${PIPESTATUS[0]}
set -e

# Meson's summary lines look like "Expected Fail:      0": take the number after the colon.
count() { grep -E "^$1:" "$WEFT_BUILD/test-output.txt" | tail -1 | sed -E 's/^[^:]*:[[:space:]]*([0-9]+).*/\1/'; }
ok=$(count Ok); xfail=$(count "Expected Fail"); fail=$(count Fail); xpass=$(count "Unexpected Pass")
skip=$(count Skipped); tout=$(count Timeout)
passed=$(( ${ok:-0} + ${xfail:-0} ))
failed=$(( ${fail:-0} + ${xpass:-0} + ${tout:-0} ))
[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1   # meson itself failed
echo "skipped: ${skip:-0} (no GPU / no MPI: exit code 77)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
