#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main example:
# data-parallel training of the Fashion-MNIST MLP (784-256-256-10, Adam,
# 5 epochs) on 4 ranks that are threads of one process (no launcher), with a
# per-layer choice of collective (examples/03_data_parallel/train.hpp).
#   scripts/demo.sh [ranks = 4] [epochs = 5] [seed = 1]
# The same trainer across processes: mpirun -np 4 build/examples/03_data_parallel_mpi
set -euo pipefail
source "$(dirname "$0")/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" dataset-fashion-mnist
weft_build
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
"$WEFT_BUILD/examples/03_data_parallel" "$@"
