#!/usr/bin/env bash
# Tensor-parallel training throughput (bench/bench_tensor_parallel.cpp), one
# thread per rank, at t = 1 and t = 2 on thread ranks and under mpirun:
#   mlp       a stack of two residual MLP blocks (TOKENS x C activations, hidden 4C)
#   block     a stack of two ParallelTransformerBlocks (TOKENS / 128 sequences of
#             128 tokens, width C, C / 64 heads, MLP 4C, causal)
#   block_sp  the same blocks sequence parallel
# t = 2 also without overlapping the input-gradient collective with the
# weight's gradient. Each configuration runs REPEATS times (interleaved) and
# reports its median tokens/s, the time inside collectives per step, the
# bytes one rank moved in a step, and the cost model's projection for t = 8
# on a link of LINK_GBPS Gbit/s. Ends with:
#   tp2_vs_tp1_throughput: R   (threads, MLP stack, t = 2 over t = 1 tokens/s)
# after block_tp2_vs_tp1_throughput and block_sp_tp2_vs_tp1_throughput (the
# transformer block stack) and the overlap ratios.
#   SECONDS_PER=3 REPEATS=3 TOKENS=512 C=512 LINK_GBPS=100 bench/compare_tensor_parallel.sh
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}"
weft_build  # WEFT_SKIP_BUILD=1: the bench targets are built already
S=${SECONDS_PER:-3}
N=${REPEATS:-3}
TOK=${TOKENS:-512}
CH=${C:-512}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 WEFT_TP_LINK_GBPS=${LINK_GBPS:-100}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B="$WEFT_BUILD/bench"

declare -A CMD=(
  [threads_t1]="$B/bench_tensor_parallel 1 $S $TOK $CH"
  [threads_t2]="$B/bench_tensor_parallel 2 $S $TOK $CH"
  [threads_t2_no_overlap]="env WEFT_TP_NO_OVERLAP=1 $B/bench_tensor_parallel 2 $S $TOK $CH"
)
ORDER=(threads_t1 threads_t2 threads_t2_no_overlap)
for m in block block_sp; do
  CMD[${m}_t1]="env WEFT_TP_MODEL=$m $B/bench_tensor_parallel 1 $S $TOK $CH"
  CMD[${m}_t2]="env WEFT_TP_MODEL=$m $B/bench_tensor_parallel 2 $S $TOK $CH"
  CMD[${m}_t2_no_overlap]="env WEFT_TP_MODEL=$m WEFT_TP_NO_OVERLAP=1 $B/bench_tensor_parallel 2 $S $TOK $CH"
  ORDER+=(${m}_t1 ${m}_t2 ${m}_t2_no_overlap)
done
if [ -x "$B/bench_tensor_parallel_mpi" ]; then
  CMD[mpi_t1]="mpirun -np 1 $B/bench_tensor_parallel_mpi $S $TOK $CH"
  CMD[mpi_t2]="mpirun -np 2 $B/bench_tensor_parallel_mpi $S $TOK $CH"
  CMD[mpi_block_t1]="mpirun -np 1 -x WEFT_TP_MODEL=block $B/bench_tensor_parallel_mpi $S $TOK $CH"
  CMD[mpi_block_t2]="mpirun -np 2 -x WEFT_TP_MODEL=block $B/bench_tensor_parallel_mpi $S $TOK $CH"
  ORDER+=(mpi_t1 mpi_t2 mpi_block_t1 mpi_block_t2)
fi

declare -A RUNS COLL BYTES
for ((i = 1; i <= N; i++)); do
  for c in "${ORDER[@]}"; do
    out=$(${CMD[$c]})
    v=$(awk '/^tokens_per_s/ {print $2}' <<<"$out")
    RUNS[$c]="${RUNS[$c]:-} $v"
    COLL[$c]="${COLL[$c]:-} $(awk '/^collective_ms/ {print $2}' <<<"$out")"
    BYTES[$c]=$(awk '/^bytes_per_step/ {print $2}' <<<"$out")
    [ "$c" = threads_t1 ] && PROJ=$(grep '^projected_t8' <<<"$out")
    [ "$c" = block_t1 ] && BPROJ=$(grep '^projected_t8' <<<"$out")
    echo "run $i  $c: $v tokens/s" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A MED
echo "== tokens $TOK x C $CH: two residual MLP blocks (hidden $((4 * CH))) and two transformer blocks ($((TOK / 128)) x 128 tokens, $((CH / 64)) heads, MLP $((4 * CH))); median over $N runs of ${S} s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-24s %12s %14s %16s\n' config tokens/s collective_ms bytes/step/rank
for c in "${ORDER[@]}"; do
  MED[$c]=$(echo "${RUNS[$c]}" | median)
  printf '%-24s %12.0f %14.3f %16s   (runs:%s)\n' "$c" "${MED[$c]}" "$(echo "${COLL[$c]}" | median)" "${BYTES[$c]}" "${RUNS[$c]}"
done
echo "cost model (comm/tuning/cost_model.hpp, ring allreduce, alpha 5 us), t = 8 from the t = 1 compute time / 8:"
echo "$PROJ" | sed 's/^/  mlp   /'
echo "$BPROJ" | sed 's/^/  block /'
ratio() { awk -v a="${MED[$2]}" -v b="${MED[$3]}" -v n="$1" 'BEGIN { printf "%s: %.2f\n", n, a / b }'; }
ratio overlap_vs_no_overlap_t2 threads_t2 threads_t2_no_overlap
ratio block_overlap_vs_no_overlap_t2 block_t2 block_t2_no_overlap
ratio block_sp_overlap_vs_no_overlap_t2 block_sp_t2 block_sp_t2_no_overlap
ratio block_sp_vs_block_t2 block_sp_t2 block_t2
if [ -n "${MED[mpi_t2]:-}" ]; then
  ratio mpi_tp2_vs_tp1_throughput mpi_t2 mpi_t1
  ratio mpi_block_tp2_vs_tp1_throughput mpi_block_t2 mpi_block_t1
fi
ratio block_tp2_vs_tp1_throughput block_t2 block_t1
ratio block_sp_tp2_vs_tp1_throughput block_sp_t2 block_sp_t1
awk -v a="${MED[threads_t2]}" -v b="${MED[threads_t1]}" 'BEGIN { printf "tp2_vs_tp1_throughput: %.2f\n", a / b }'
