#!/usr/bin/env bash
# f32 sum allreduce at 2 ranks, 8 B .. 256 MiB, in one run: weft on the thread
# and MPI transports (every policy, and Auto choosing in the run, IN_RUN calls
# per candidate over the wide candidate set, from the constants and the
# measured decision table calibrated at the start of this run as its guess),
# MPI_Allreduce, Gloo (ring, halving-doubling over TCP loopback) and
# torch.distributed (gloo backend), plus memcpy bandwidth. Prints the busbw
# table with ratios, the Auto-vs-best tables, a scaling projection, writes
# CSV/JSON/PNG under $OUT, and ends with:
#   thread_busbw_vs_memcpy_64MiB: R1
#   mpi_transport_vs_mpi_native_min_1MiB_64MiB: R2
#   weft_vs_gloo_min_1MiB_64MiB: R3
#   weft_vs_torch_gloo_min_1MiB_64MiB: R4
#   thread_latency_8B_us: L
#   auto_worst_ratio_to_best_threads: A1   (Auto's own p50 / the best other
#   auto_worst_ratio_to_best_mpi: A2        policy's, every size and placement,
#                                           median of REPEATS runs)
#   mpi_transport_vs_mpi_native_min_1MiB_64MiB_median_of_runs: R2m
# Knobs (environment): MAXBYTES (256M), ITERS (20), SMALL_ITERS (1000, at 8 B-8 KiB), AUTO_WARMUP (40: in-run
# Auto's warmup, 7 candidates x IN_RUN calls, so its trials end before the
# timed calls; weft-bench caps every other policy's at ITERS/2, and Gloo and
# torch get ITERS/2 too), IN_RUN (5), REPEATS (3: weft's runs per transport),
# BUDGET (bytes per measurement, 1G), OUT (build-bench/collectives), NP (2).
set -euo pipefail
WEFT_BUILD=${WEFT_BUILD:-$(cd "$(dirname "$0")/.." && pwd)/build-bench}
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" python3-torch libgloo-dev python3-matplotlib
weft_build -Dtests=false -Dexamples=false >/dev/null

MAXBYTES=${MAXBYTES:-256M}
ITERS=${ITERS:-20}
SMALL_ITERS=${SMALL_ITERS:-1000}  # timed calls at 8 B .. 8 KiB (weft-bench --small-iters)
WARMUP=$((ITERS / 2 > 0 ? ITERS / 2 : 1))
BUDGET=${BUDGET:-1G}
NP=${NP:-2}
IN_RUN=${IN_RUN:-5}
AUTO_WARMUP=${AUTO_WARMUP:-40}
REPEATS=${REPEATS:-3}
OUT=${OUT:-$WEFT_BUILD/collectives}
mkdir -p "$OUT"
BENCH=$WEFT_BUILD/bench/weft-bench
# Calibrate into a fresh file, so no table from an earlier run (or another
# machine) decides; it is kept as $OUT/cost-model.txt afterwards.
MODEL=$(mktemp "${TMPDIR:-/tmp}/weft-cost-model.XXXXXX")
trap 'rm -f "$MODEL"' EXIT
# weft-bench caps every policy's warmup at half its iterations, except in-run
# Auto's: -w is Auto's warmup (its 7 candidates x IN_RUN trial calls).
COMMON=(-b 8 -e "$MAXBYTES" -f 2 -n "$ITERS" --small-iters "$SMALL_ITERS" -w "$AUTO_WARMUP" --bytes-budget "$BUDGET" -c 1
  --in-run "$IN_RUN" --auto-candidates wide)
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

# REPEATS runs of each transport, alternating; run 1 is the one compared with
# the peers (busbw tables, plot) and the others only feed the medians over
# runs of the weft-vs-weft ratios below (Auto / best policy, weft over MPI /
# MPI_Allreduce): per-communicator effects that last a whole run (which
# vCPU, cache placement) move a 1-2 us call by 10% between runs.
for k in $(seq 1 "$REPEATS"); do
  sfx=$([ "$k" = 1 ] && echo "" || echo "_r$k")
  echo "== weft, thread transport (run $k of $REPEATS)"
  "$BENCH" --np "$NP" "${COMMON[@]}" --model "$MODEL" \
    --algo ring,tree,recursive_doubling,halving_doubling,native,auto \
    --csv "$OUT/weft_threads$sfx.csv" --json "$OUT/weft_threads$sfx.json" >"$OUT/weft_threads$sfx.txt"
  [ "$k" = 1 ] && cat "$OUT/weft_threads.txt"

  echo "== weft, MPI transport (and MPI_Allreduce as --algo mpi) (run $k of $REPEATS)"
  "${MPIRUN[@]}" "$BENCH" --transport mpi "${COMMON[@]}" --model "$MODEL" \
    --algo ring,tree,recursive_doubling,halving_doubling,native,mpi,auto \
    --csv "$OUT/weft_mpi$sfx.csv" --json "$OUT/weft_mpi$sfx.json" >"$OUT/weft_mpi$sfx.txt"
  [ "$k" = 1 ] && cat "$OUT/weft_mpi.txt"
done

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
OUT="$OUT" REPEATS="$REPEATS" /usr/bin/python3 - <<'EOF'
# Per (size, placement): each run's Auto p50 / the best other policy's p50 in
# that run, then the median over runs; the worst of those medians is the
# figure (each run's own worst is printed beside it). Likewise weft's best
# own policy over MPI / MPI_Allreduce (in place, busbw), 1..64 MiB.
import csv, os, statistics
out, reps = os.environ["OUT"], int(os.environ["REPEATS"])
MiB = 1 << 20
def runs(t):
    return [f"{out}/weft_{t}{'' if k == 1 else f'_r{k}'}.csv" for k in range(1, reps + 1)]
def load(path):
    t = {}
    for r in csv.DictReader(open(path)):
        t[(r["algo"], int(r["size"]), r["placement"])] = (float(r["p50_us"]), float(r["busbw_GBps"]))
    return t
for tr in ("threads", "mpi"):
    tables = [load(p) for p in runs(tr) if os.path.exists(p)]
    per = {}
    for t in tables:
        for (a, s, pl), (p50, _) in t.items():
            if a != "auto": continue
            others = [v[0] for (b, s2, pl2), v in t.items() if b != "auto" and s2 == s and pl2 == pl]
            if others: per.setdefault((s, pl), []).append(p50 / min(others))
    if not per: continue
    med = {k: statistics.median(v) for k, v in per.items()}
    (ws, wpl), w = max(med.items(), key=lambda kv: kv[1])
    each = [max(v[i] for v in per.values() if len(v) > i) for i in range(len(tables))]
    print(f"auto_worst_ratio_to_best_{tr}: {w:.2f}   (median of {len(tables)} runs per size; at {ws} B "
          f"{'in place' if wpl == 'ip' else 'out of place'}; each run's worst: {', '.join('%.2f' % x for x in each)})")
    if tr == "mpi":
        r = {}
        for t in tables:
            for (a, s, pl), (_, bw) in t.items():
                if a != "mpi" or pl != "ip" or not (MiB <= s <= 64 * MiB) or bw <= 0: continue
                own = [v[1] for (b, s2, pl2), v in t.items() if s2 == s and pl2 == "ip" and b not in ("mpi", "native", "auto")]
                r.setdefault(s, []).append(max(own) / bw)
        if r:
            m = {s: statistics.median(v) for s, v in r.items()}
            s0 = min(m, key=m.get)
            print(f"mpi_transport_vs_mpi_native_min_1MiB_64MiB_median_of_runs: {m[s0]:.2f}   (at {s0 // MiB} MiB; "
                  + ", ".join(f"{s // MiB} MiB {m[s]:.2f}" for s in sorted(m)) + ")")
EOF
/usr/bin/python3 "$WEFT_ROOT/bench/plot_collectives.py" --summary --memcpy "$memcpy" "${CSVS[@]}"
