#!/usr/bin/env bash
# The GPU suite in one command, for a machine with an NVIDIA GPU: builds every
# CUDA translation unit (tests/cuda/*.cu, bench/gpu_*.cu) with nvcc for the
# GPU it finds, runs the CUDA tests (each compares its kernels with weft's CPU
# evaluation of the same expressions), then the GPU benchmarks and, where
# python3 has a CUDA PyTorch, the PyTorch peers (bench/gpu_*_torch.py, given
# the build directory); everything it prints is also
# saved in $WEFT_GPU_OUT/test-gpu.log (default build-gpu/). Ends with
# "N passed, N failed, N skipped" and exits non-zero on a failure.
#
# It needs nvcc, cuBLAS/cuBLASLt and, for the NCCL test and bench, NCCL (found
# in the CUDA toolkit, the system, or the nvidia-nccl Python wheel). Meson and
# doctest are not needed (the CUDA tests are plain programs), so it also runs
# on a bare image. The CPU oracle of the matmul tests needs a CBLAS: the
# system's, or one bundled beforehand on a Debian machine with
#   scripts/test-gpu.sh --bundle DIR      (copies cblas.h and OpenBLAS into DIR)
# and passed as WEFT_CBLAS_DIR=DIR. Without a GPU it builds everything and
# reports the tests as skipped (exit 77 from each).
#
#   WEFT_GPU_OUT=dir  WEFT_GPU_ARCH=sm_90 (default: native, else sm_90)
#   WEFT_GPU_BENCH=0  skip the benchmarks    WEFT_GPU_JOBS=N  parallel builds
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ "${1:-}" = --bundle ]; then
  dir=${2:?usage: test-gpu.sh --bundle DIR}
  mkdir -p "$dir/include" "$dir/lib"
  hdr=$(readlink -f /usr/include/x86_64-linux-gnu/cblas.h 2>/dev/null || readlink -f /usr/include/cblas.h)
  [ -f "$hdr" ] || { echo "test-gpu.sh --bundle: no cblas.h here (apt-get install libopenblas-dev)"; exit 1; }
  cp "$hdr" "$(dirname "$hdr")/openblas_config.h" "$dir/include/"
  lib=$(readlink -f /usr/lib/x86_64-linux-gnu/libopenblas.so.0)
  cp "$lib" "$dir/lib/libopenblas.so.0"
  ln -sf libopenblas.so.0 "$dir/lib/libopenblas.so"
  for dep in libgfortran.so.5 libquadmath.so.0; do cp -L "/lib/x86_64-linux-gnu/$dep" "$dir/lib/"; done
  echo "bundled CBLAS in $dir ($(du -sh "$dir" | cut -f1)); on the GPU machine: WEFT_CBLAS_DIR=$dir scripts/test-gpu.sh"
  exit 0
fi

out=${WEFT_GPU_OUT:-$root/build-gpu}
mkdir -p "$out"
log=$out/test-gpu.log
: >"$log"
say() { echo "$@" | tee -a "$log"; }

nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] || { say "test-gpu.sh: nvcc not found (PATH or /usr/local/cuda/bin)"; exit 1; }
cuda_home=$(cd "$(dirname "$nvcc")/.." && pwd)
have_gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
arch=${WEFT_GPU_ARCH:-$([ $have_gpu = 1 ] && echo native || echo sm_90)}
say "== nvcc: $("$nvcc" --version | tail -1); arch: $arch; GPU: $([ $have_gpu = 1 ] && nvidia-smi -L | head -1 || echo none)"

flags=(-O2 -std=c++20 --expt-relaxed-constexpr -arch="$arch" -Xcompiler=-Wall,-Wextra -I"$root/include" -lineinfo)
libs=(-lcublasLt -lcublas -lpthread)
rpath=()

# NCCL: the toolkit's, the system's, or the Python wheel's (nvidia/nccl).
nccl_inc="" nccl_lib=""
for d in "$cuda_home" /usr; do
  if [ -f "$d/include/nccl.h" ]; then
    nccl_inc=$d/include
    for l in "$d/lib64" "$d/lib" /usr/lib/x86_64-linux-gnu; do [ -e "$l/libnccl.so" ] || [ -e "$l/libnccl.so.2" ] && { nccl_lib=$l; break; }; done
    [ -n "$nccl_lib" ] && break
  fi
done
if [ -z "$nccl_lib" ] && command -v python3 >/dev/null; then
  wheel=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
  [ -n "$wheel" ] && [ -f "$wheel/include/nccl.h" ] && { nccl_inc=$wheel/include; nccl_lib=$wheel/lib; }
fi
nccl_libs=()
if [ -n "$nccl_lib" ]; then
  if [ -e "$nccl_lib/libnccl.so" ]; then nccl_libs=(-L"$nccl_lib" -lnccl); else nccl_libs=(-L"$nccl_lib" -l:libnccl.so.2); fi
  rpath+=(-Xlinker -rpath -Xlinker "$nccl_lib")
  flags+=(-isystem "$nccl_inc")
  say "== NCCL: $nccl_inc"
else
  say "== NCCL: not found (the NCCL test and bench are not built)"
fi

# CBLAS for the CPU oracle of matmul tests.
cblas=0
if [ -n "${WEFT_CBLAS_DIR:-}" ]; then
  flags+=(-isystem "$WEFT_CBLAS_DIR/include")
  libs+=(-L"$WEFT_CBLAS_DIR/lib" -lopenblas)
  rpath+=(-Xlinker -rpath -Xlinker "$(cd "$WEFT_CBLAS_DIR/lib" && pwd)")
  cblas=1
elif echo '#include <cblas.h>' | g++ -x c++ -fsyntax-only - 2>/dev/null || [ -f /usr/include/x86_64-linux-gnu/cblas.h ]; then
  libs+=(-lopenblas)
  [ -f /usr/include/x86_64-linux-gnu/cblas.h ] && flags+=(-isystem /usr/include/x86_64-linux-gnu)
  cblas=1
fi
say "== CBLAS: $([ $cblas = 1 ] && echo yes || echo "none (tests that need it are not built)")"

# Which sources need what: from their includes.
needs() { grep -qE "$2" "$1"; }
build_one() {  # build_one SRC: prints "built NAME" or "not built NAME (why)"
  local src=$1 name extra=()
  name=$(basename "$src" .cu)
  if needs "$src" 'nccl\.h|transport/nccl'; then
    [ -n "$nccl_lib" ] || { echo "not built $name (no NCCL)"; return; }
    extra+=("${nccl_libs[@]}")
  fi
  if needs "$src" 'cblas|expr/matmul|expr/affine|expr/attention|nn/linear|nn/transformer|weft/nn\.hpp|nn/nn\.hpp'; then
    [ $cblas = 1 ] || { echo "not built $name (no CBLAS)"; return; }
  fi
  if "$nvcc" "${flags[@]}" -o "$out/$name" "$src" "${libs[@]}" "${extra[@]}" "${rpath[@]}" >"$out/$name.build.log" 2>&1; then
    if grep -qi "warning" "$out/$name.build.log"; then echo "built-with-warnings $name"; else echo "built $name"; fi
  else
    echo "FAILED-BUILD $name"
  fi
}
export -f build_one needs
export nvcc out nccl_lib cblas
srcs=("$root"/tests/cuda/*.cu)
[ "${WEFT_GPU_BENCH:-1}" = 0 ] || srcs+=("$root"/bench/gpu_*.cu)
say "== building ${#srcs[@]} CUDA programs"
results=$(for s in "${srcs[@]}"; do echo "$s"; done |
  xargs -P "${WEFT_GPU_JOBS:-$(nproc)}" -I{} bash -c "$(declare -p flags libs nccl_libs rpath); build_one {}")
echo "$results" | sort | tee -a "$log"
for f in $(echo "$results" | awk '/FAILED-BUILD|built-with-warnings/ {print $2}'); do
  say "--- $f build log:"; tail -40 "$out/$f.build.log" | tee -a "$log"
done

passed=0 failed=0 skipped=0
failed_names=()
failed=$(echo "$results" | grep -c "FAILED-BUILD\|built-with-warnings")
[ "$failed" -gt 0 ] && failed_names+=($(echo "$results" | awk '/FAILED-BUILD|built-with-warnings/ {print $2}'))

say "== CUDA tests"
for s in "$root"/tests/cuda/*.cu; do
  name=$(basename "$s" .cu)
  [ -x "$out/$name" ] || continue
  start=$(date +%s.%N)
  timeout 300 "$out/$name" >"$out/$name.log" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
  case $rc in
    0) passed=$((passed + 1)); say "ok      $name (${secs}s)" ;;
    77) skipped=$((skipped + 1)); say "skipped $name: $(tail -1 "$out/$name.log")" ;;
    *) failed=$((failed + 1)); failed_names+=("$name"); say "FAILED  $name (exit $rc):"; tail -30 "$out/$name.log" | tee -a "$log" ;;
  esac
done

if [ "${WEFT_GPU_BENCH:-1}" != 0 ] && [ $have_gpu = 1 ]; then
  say "== GPU benchmarks"
  for s in "$root"/bench/gpu_*.cu; do
    name=$(basename "$s" .cu)
    [ -x "$out/$name" ] || continue
    say "--- $name"
    timeout 300 "$out/$name" 2>&1 | tee -a "$log"
  done
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    for p in "$root"/bench/gpu_*_torch.py; do
      [ -f "$p" ] || continue
      say "--- $(basename "$p") (PyTorch $(python3 -c 'import torch; print(torch.__version__)'))"
      timeout 900 python3 "$p" "$out" 2>&1 | tee -a "$log"
    done
  else
    say "(no CUDA PyTorch in python3: the PyTorch peers are not run)"
  fi
fi

say "$passed passed, $failed failed, $skipped skipped${failed_names[*]:+ (failed: ${failed_names[*]})}"
[ "$failed" -eq 0 ]
