#!/usr/bin/env bash
# Data-parallel training, weft vs PyTorch DDP (gloo), same model, optimizer and
# global batch 128, one thread per rank, in the same run. Ends with:
#   dp_scaling_efficiency_2ranks: E   (weft 2-rank / (2 x weft 1-rank) samples/s, threads)
#   dp_vs_torch_ddp: R                (weft 2-rank threads / torch DDP 2 processes)
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" python3-torch
weft_build
S=${SECONDS_PER:-3}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
one=$("$WEFT_BUILD/bench/bench_dp" 1 "$S" | tee /dev/stderr | awk '/samples_per_s/ {print $2}')
two=$("$WEFT_BUILD/bench/bench_dp" 2 "$S" | tee /dev/stderr | awk '/samples_per_s/ {print $2}')
# Without overlap: blocking reductions after backward, no progress threads
# competing with the ranks for this machine's cores.
two_blocking=$(WEFT_DP_NO_OVERLAP=1 "$WEFT_BUILD/bench/bench_dp" 2 "$S" | awk '/samples_per_s/ {print $2}')
echo "weft_dp_threads_2_no_overlap_samples_per_s: $two_blocking"
if [ -x "$WEFT_BUILD/bench/bench_dp_mpi" ]; then
  mpirun -np 2 "$WEFT_BUILD/bench/bench_dp_mpi" "$S" | tee /dev/stderr
fi
torch2=$(/usr/bin/python3 "$WEFT_ROOT/bench/ddp_torch.py" 2 "$S" | tee /dev/stderr | awk '/_samples_per_s/ {print $2}')
awk -v a="$two_blocking" -v b="$one" 'BEGIN { printf "dp_scaling_efficiency_2ranks_no_overlap: %.2f\n", a / (2 * b) }'
awk -v a="$two_blocking" -v b="$torch2" 'BEGIN { printf "dp_vs_torch_ddp_no_overlap: %.2f\n", a / b }'
awk -v a="$two" -v b="$one" 'BEGIN { printf "dp_scaling_efficiency_2ranks: %.2f\n", a / (2 * b) }'
awk -v a="$two" -v b="$torch2" 'BEGIN { printf "dp_vs_torch_ddp: %.2f\n", a / b }'
