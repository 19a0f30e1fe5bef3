# Shared by scripts/test.sh, scripts/demo.sh and bench/*.sh: install what is
# missing (Debian 12, as root), configure and build with Meson.
# shellcheck shell=bash

WEFT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEFT_BUILD=${WEFT_BUILD:-$WEFT_ROOT/build}

# Packages every build needs (cmake: the consumer test builds CMake consumers); callers add their own.
WEFT_BASE_PKGS=(meson ninja-build cmake g++ pkg-config doctest-dev libopenblas-dev zlib1g-dev
                libopenmpi-dev openmpi-bin python3)

weft_install() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# weft_build [meson setup options...]: configure once (reconfigure if options change), then build.
# WEFT_SKIP_BUILD=1 (benchmark scripts): use the build as it is, when the
# targets a script runs are built already and a full rebuild would be long.
weft_build() {
  if [ -n "${WEFT_SKIP_BUILD:-}" ] && [ -f "$WEFT_BUILD/build.ninja" ]; then return 0; fi
  if [ ! -f "$WEFT_BUILD/build.ninja" ]; then
    meson setup "$WEFT_BUILD" "$WEFT_ROOT" "$@"
  elif [ $# -gt 0 ]; then
    # --reconfigure, not `meson configure`: an option added since this
    # directory was set up is unknown to the latter.
    meson setup --reconfigure "$WEFT_BUILD" "$WEFT_ROOT" "$@" >/dev/null
  fi
  ninja -C "$WEFT_BUILD"
}

# The benches that compare with PyTorch eager or DDP (bench/compare_autodiff.sh,
# compare_training.sh, compare_dp.sh): what every build needs, torch, the build.
weft_build_with_torch_peer() {
  weft_install "${WEFT_BASE_PKGS[@]}" python3-torch
  weft_build
}

# Open MPI refuses to run as root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI's vader/shared-memory BTL works in containers without a network; keep it quiet.
export OMPI_MCA_btl_vader_single_copy_mechanism=none

# Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) does not recognise some virtual CPUs
# and falls back to its Prescott (SSE3) kernels: on the development machine
# sgemm ran at 20 GFLOP/s instead of 66 with the SkylakeX kernels. Pick the
# kernels from the CPU flags unless the caller chose. PyTorch from Debian uses
# the same library, so comparisons stay fair.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  if grep -qw avx512f /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
