#!/usr/bin/env bash
# f32 sum allreduce at 2 ranks, 8 B .. 256 MiB, in one run: weft on the thread
# and MPI transports (every policy, and Auto with the constants and the
# measured decision table calibrated at the start of this run),
# MPI_Allreduce, Gloo (ring, halving-doubling over TCP loopback) and
# torch.distributed (gloo backend), plus memcpy bandwidth. Prints the busbw
# table with ratios, the Auto-vs-best tables, a scaling projection, writes
# CSV/JSON/PNG under $OUT, and ends with:
#   thread_busbw_vs_memcpy_64MiB: R1
#   mpi_transport_vs_mpi_native_min_1MiB_64MiB: R2
#   weft_vs_gloo_min_1MiB_64MiB: R3
#   weft_vs_torch_gloo_min_1MiB_64MiB: R4
#   thread_latency_8B_us: L
# Knobs (environment): MAXBYTES (256M), ITERS (20), WARMUP (3), BUDGET (bytes
# per measurement, 1G), OUT (build-bench/collectives), NP (2).
set -euo pipefail
WEFT_BUILD=${WEFT_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build-bench}
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" python3-torch libgloo-dev python3-matplotlib
weft_build -Dtests=false -Dexamples=false >/dev/null

MAXBYTES=${MAXBYTES:-256M}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-3}
BUDGET=${BUDGET:-1G}
NP=${NP:-2}
OUT=${OUT:-$WEFT_BUILD/collectives}
mkdir -p "$OUT"
BENCH=$WEFT_BUILD/bench/weft-bench
# Calibrate into a fresh file, so no table from an earlier run (or another
# machine) decides; it is kept as $OUT/cost-model.txt afterwards.
MODEL=$(mktemp "${TMPDIR:-/tmp}/weft-cost-model.XXXXXX")
trap 'rm -f "$MODEL"' EXIT
COMMON=(-b 8 -e "$MAXBYTES" -f 2 -n "$ITERS" -w "$WARMUP" --bytes-budget "$BUDGET" -c 1)
MPIRUN=(mpirun -np "$NP")
[ "$NP" -gt "$(nproc)" ] && MPIRUN+=(--oversubscribe)

echo "== memcpy"
memcpy=$("$BENCH" memcpy -e 64M | tee -a /dev/stderr | awk '/^memcpy_GBps:/ {print $2}')

echo "== calibrate (threads, then MPI): constants, and Auto's table over the sizes run below"
rm -f "$MODEL"
CAL=(-b 8 -e "$MAXBYTES" -f 2 --op allreduce --model "$MODEL")
"$BENCH" calibrate --np "$NP" "${CAL[@]}"
"${MPIRUN[@]}" "$BENCH" calibrate --transport mpi "${CAL[@]}"
cp "$MODEL" "$OUT/cost-model.txt"
cat "$MODEL"

echo "== weft, thread transport"
"$BENCH" --np "$NP" "${COMMON[@]}" --model "$MODEL" \
  --algo ring,tree,recursive_doubling,halving_doubling,native,auto \
  --csv "$OUT/weft_threads.csv" --json "$OUT/weft_threads.json" | tee "$OUT/weft_threads.txt"

echo "== weft, MPI transport (and MPI_Allreduce as --algo mpi)"
"${MPIRUN[@]}" "$BENCH" --transport mpi "${COMMON[@]}" --model "$MODEL" \
  --algo ring,tree,recursive_doubling,halving_doubling,native,mpi,auto \
  --csv "$OUT/weft_mpi.csv" --json "$OUT/weft_mpi.json" | tee "$OUT/weft_mpi.txt"

echo "== gloo (TCP loopback)"
"$WEFT_BUILD/bench/gloo_bench" --np "$NP" -b 8 -e "$MAXBYTES" -f 2 -n "$ITERS" -w "$WARMUP" \
  --bytes-budget "$BUDGET" --csv "$OUT/gloo.csv"

echo "== torch.distributed (gloo backend)"
OMP_NUM_THREADS=1 /usr/bin/python3 "$WEFT_ROOT/bench/torch_allreduce.py" --np "$NP" -b 8 -e "$MAXBYTES" -f 2 \
  -n "$ITERS" -w "$WARMUP" --bytes-budget "$BUDGET" --csv "$OUT/torch.csv"

CSVS=("$OUT/weft_threads.csv" "$OUT/weft_mpi.csv" "$OUT/gloo.csv" "$OUT/torch.csv")
/usr/bin/python3 "$WEFT_ROOT/bench/plot_collectives.py" "${CSVS[@]}" -o "$OUT/allreduce_busbw.png"

echo "== scaling projection from the calibrated constants"
"$BENCH" project --model "$MODEL" --transport thread
"$BENCH" project --model "$MODEL" --transport mpi

echo "== Auto vs the best measured algorithm"
for t in threads mpi; do
  echo "-- $t"
  sed -n '/^# Auto vs the best/,$p' "$OUT/weft_$t.txt"
done

echo "== summary"
/usr/bin/python3 "$WEFT_ROOT/bench/plot_collectives.py" --summary --memcpy "$memcpy" "${CSVS[@]}"
