#!/usr/bin/env bash
# Training-step throughput, weft vs PyTorch eager, one thread each, same model,
# optimizer and batch, in the same run. Ends with:
#   training_vs_torch: R   (weft samples/s / torch samples/s at batch 128)
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_build_with_torch_peer
SECONDS_PER=${SECONDS_PER:-3}
echo "== weft"
w=$(OPENBLAS_NUM_THREADS=1 "$WEFT_BUILD/bench/bench_training" "$SECONDS_PER" | tee -a /dev/stderr)
echo "== torch"
t=$(OMP_NUM_THREADS=1 /usr/bin/python3 "$WEFT_ROOT/bench/training_torch.py" "$SECONDS_PER" | tee -a /dev/stderr)
w128=$(echo "$w" | awk '/^weft_samples_per_s_batch128:/ {print $2}')
t128=$(echo "$t" | awk '/^torch_samples_per_s_batch128:/ {print $2}')
w512=$(echo "$w" | awk '/^weft_samples_per_s_batch512:/ {print $2}')
t512=$(echo "$t" | awk '/^torch_samples_per_s_batch512:/ {print $2}')
awk -v a="$w512" -v b="$t512" 'BEGIN { printf "training_vs_torch_batch512: %.2f\n", a / b }'
awk -v a="$w128" -v b="$t128" 'BEGIN { printf "training_vs_torch: %.2f\n", a / b }'
