#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main example:
# the Fashion-MNIST trainer (MLP 784-256-256-10, Adam, 5 epochs, one core).
set -euo pipefail
source "$(dirname "$0")/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" dataset-fashion-mnist
weft_build
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
"$WEFT_BUILD/examples/02_fashion_mnist_mlp" "$@"
