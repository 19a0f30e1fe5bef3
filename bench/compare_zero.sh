#!/usr/bin/env bash
# ZeRO on thread ranks against plain data parallelism and PyTorch's FSDP, same
# model (MLP 784-256-256-10), optimizer (Adam) and global batch 128, one thread
# per rank, in the same run (bench/bench_zero.cpp, bench/fsdp_torch.py):
#   1. bytes per rank for DP and each stage at N = 2 and 4: measured (weft's
#      ledger, parallel::Zero::memory()) against the formula (f32 Adam:
#      parallel::zero_formula, derived in include/weft/parallel/zero.hpp), and
#      the peak during a step;
#      zero3 gathers every unit at once (peak gathered 4P); zero3l runs stage 3
#      layer by layer (parallel::zero_layers: about two layers gathered) and
#      zero3bf16 is zero3l with bf16 on the wire (f32 master, Adam); the
#      gathered_peak column is memory_peak().gathered;
#   2. samples/s at 2 ranks per stage relative to DP (median of REPEATS runs);
#   3. PyTorch DDP and FSDP (FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2) on
#      the CPU with gloo, from the venv ${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers
#      (created with PyPI's torch if missing; WEFT_NO_PEERS=1 skips), or why not.
# Ends with:
#   zero3_memory_vs_formula: M        (stage 3 bytes at rest / 16P/N at N = 2; target 0.95-1.05)
#   zero3_vs_dp_throughput_2ranks: R  (stage 3 samples/s / DP samples/s, each with
#                                      overlap at its faster setting, named; target >= 0.8)
#   zero3_vs_dp_throughput_2ranks_overlap_on, _overlap_off: both with overlap on (the
#     defaults), both off (2 thread ranks fill 2 cores: the progress threads compete)
#   zero3_layers_vs_dp_throughput_2ranks, zero3_bf16_vs_dp_throughput_2ranks: the same for zero3l, zero3bf16
#   SECONDS_PER=3 REPEATS=3 bench/compare_zero.sh
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
if [ ! -f "$WEFT_BUILD/build.ninja" ]; then meson setup "$WEFT_BUILD" "$WEFT_ROOT"; fi
ninja -C "$WEFT_BUILD" bench/bench_zero >&2
S=${SECONDS_PER:-3}
N=${REPEATS:-3}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
Z="$WEFT_BUILD/bench/bench_zero"
MEM_MODES=(dp zero1 zero2 zero3 zero3l zero3bf16)
# A trailing s: overlap off (DataParallelOptions::overlap, ZeroOptions::overlap).
MODES=(dp dps zero1 zero2 zero2s zero3 zero3s zero3l zero3ls zero3bf16 zero3bf16s)
field() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}'; }

echo "== bytes per rank (f32 Adam; measured by weft's ledger; uptime: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-9s %5s %14s %14s %14s %14s %14s\n' mode ranks measured_rest formula rest/formula peak gathered_peak
declare -A REST
for n in 2 4; do
  for m in "${MEM_MODES[@]}"; do
    line=$("$Z" "$m" "$n" 0.2)
    rest=$(echo "$line" | field bytes_rest); formula=$(echo "$line" | field formula); peak=$(echo "$line" | field bytes_peak)
    gathered=$(echo "$line" | field gathered_peak)
    REST[$m.$n]=$rest
    printf '%-9s %5d %14.0f %14.0f %14.3f %14.0f %14.0f\n' "$m" "$n" "$rest" "$formula" "$(awk -v a="$rest" -v b="$formula" 'BEGIN{print a/b}')" "$peak" "$gathered"
    [ "$m" = dp ] && echo "       (DataParallel's bucket buffers, not in the row: $(echo "$line" | field dp_bucket_bytes) bytes)"
  done
done

declare -A RUNS
for ((i = 1; i <= N; i++)); do
  for m in "${MODES[@]}"; do
    v=$("$Z" "$m" 2 "$S" | field samples_per_s)
    RUNS[$m]="${RUNS[$m]:-} $v"
    echo "run $i  $m: $v samples/s" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
declare -A MED
echo "== samples/s at 2 thread ranks, median of $N runs of ${S} s (uptime: $(cut -d' ' -f1-3 /proc/loadavg))"
for m in "${MODES[@]}"; do
  MED[$m]=$(echo "${RUNS[$m]}" | median)
  printf '%-9s %8.0f   vs DP %.2f   (runs:%s)\n' "$m" "${MED[$m]}" "$(awk -v a="${MED[$m]}" -v b="${MED[dp]}" 'BEGIN{print a/b}')" "${RUNS[$m]}"
done

echo "== PyTorch on the CPU with gloo, 2 processes"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/weft-peers"
if [ -n "${WEFT_NO_PEERS:-}" ]; then
  echo "skipped (WEFT_NO_PEERS)"
else
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "creating $venv with PyPI torch (once; several GB)" >&2
    python3 -m venv "$venv" && "$venv/bin/pip" install -q torch >&2 || echo "could not install torch into $venv"
  fi
  if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
    for m in ddp shard_grad_op full_shard; do
      timeout 300 "$venv/bin/python" "$WEFT_ROOT/bench/fsdp_torch.py" "$m" 2 "$S" 2>/dev/null | grep torch_ \
        || echo "torch_${m}_error: the run failed or timed out"
    done
  fi
fi

awk -v a="${REST[zero3.2]}" -v p="$("$Z" zero3 2 0.1 | field params)" 'BEGIN { printf "zero3_memory_vs_formula: %.3f\n", a / (16 * p / 2) }'
awk -v a="${MED[zero3l]}" -v b="${MED[dp]}" -v c="${MED[zero3ls]}" -v d="${MED[dps]}" \
  'BEGIN { printf "zero3_layers_vs_dp_throughput_2ranks: %.2f   (overlap off, both: %.2f)\n", a / b, c / d }'
awk -v a="${MED[zero3bf16]}" -v b="${MED[dp]}" -v c="${MED[zero3bf16s]}" -v d="${MED[dps]}" \
  'BEGIN { printf "zero3_bf16_vs_dp_throughput_2ranks: %.2f   (overlap off, both: %.2f)\n", a / b, c / d }'
awk -v a="${MED[zero3]}" -v b="${MED[dp]}" 'BEGIN { printf "zero3_vs_dp_throughput_2ranks_overlap_on: %.2f\n", a / b }'
awk -v a="${MED[zero3s]}" -v b="${MED[dps]}" 'BEGIN { printf "zero3_vs_dp_throughput_2ranks_overlap_off: %.2f\n", a / b }'
# Each in its faster setting on this machine (overlap on or off), said which.
awk -v z="${MED[zero3]}" -v zs="${MED[zero3s]}" -v d="${MED[dp]}" -v ds="${MED[dps]}" 'BEGIN {
  zb = z > zs ? z : zs; db = d > ds ? d : ds
  printf "zero3_vs_dp_throughput_2ranks: %.2f   (ZeRO-3 overlap %s, DP overlap %s: each at its faster setting)\n",
         zb / db, (z > zs ? "on" : "off"), (d > ds ? "on" : "off") }'
