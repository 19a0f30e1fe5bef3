#!/usr/bin/env bash
# int8 GEMM (weft: each path this CPU runs, reference, AVX2, AVX-512 VNNI)
# against OpenBLAS sgemm, one thread each, same run, at the MLP's shapes and
# 1024^3. Ends with:
#   int8_gemm_vs_sgemm_1024: R   (best int8 GOP/s / sgemm GFLOP/s at M = N = K = 1024)
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}"
[ -f "$WEFT_BUILD/build.ninja" ] || meson setup "$WEFT_BUILD" "$WEFT_ROOT"
ninja -C "$WEFT_BUILD" examples/11_compress
OPENBLAS_NUM_THREADS=1 "$WEFT_BUILD/examples/11_compress" --gemm
