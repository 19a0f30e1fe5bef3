#!/usr/bin/env bash
# Pipeline bubbles: for p = 2 and 4 stages on thread ranks and m = 4, 8, 16
# micro-batches, each schedule's measured bubble (idle share of the ranks'
# time in a traced step) next to the formula ((p-1)/(m+p-1); interleaved over v = 2
# chunks the bubble time is divided by v: (p-1)/(v m + p - 1)) and next to the bubble simulate() gives from the measured
# per-stage F, B and W times (one core per rank: p = 4 oversubscribes a
# 2-core machine, so its measured bubble mostly counts waiting for a core),
# peak activation memory and samples/s. Ranks are pinned one per core where
# p <= cores (bench_pipeline; WEFT_PIPE_BIND=0 unpins). Ends with:
#   zero_bubble_vs_1f1b_bubble: R        (ZB-H1's measured bubble / 1F1B's, p = 2, m = 8; target <= 0.5)
#   pipeline_bubble_vs_formula_1f1b: R2  (1F1B's measured bubble / (p-1)/(m+p-1), p = 2, m = 8; target 0.9-1.2)
#   STEPS=30 REPEATS=5 bench/compare_pipeline.sh  (each configuration REPEATS times, interleaved;
#   every row and both ratios read the median run: one step is ~20 ms on 2 shared cores, and
#   single runs of the same pair printed ratios from 0.57 to 1.10)
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}"
if [ ! -f "$WEFT_BUILD/build.ninja" ]; then meson setup "$WEFT_BUILD" "$WEFT_ROOT"; fi
ninja -C "$WEFT_BUILD" bench/bench_pipeline
STEPS=${STEPS:-30}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
B="$WEFT_BUILD/bench/bench_pipeline"
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

R=${REPEATS:-5}
echo "== pipeline bubbles, $STEPS traced steps each; each row the median (by measured bubble) of $R runs, interleaved"
echo "   (load: $(cut -d' ' -f1-3 /proc/loadavg))"
declare -A RUNS LINE BUBBLE
for ((round = 1; round <= R; round++)); do
  for p in 2 4; do
    for m in 4 8 16; do
      for s in gpipe 1f1b interleaved zb; do
        line=$("$B" "$p" "$m" "$s" "$STEPS")
        LINE[$s,$p,$m,$round]=$line
        RUNS[$s,$p,$m]="${RUNS[$s,$p,$m]:-} $(echo "$line" | field bubble):$round"
      done
    done
  done
done
printf '%-18s %2s %3s %9s %9s %9s %7s %9s %10s %8s %8s %8s\n' schedule p m measured simulated formula stashes peak_MiB samples/s F_us B_us W_us
for p in 2 4; do
  for m in 4 8 16; do
    for s in gpipe 1f1b interleaved zb; do
      # the run with the median bubble (lower middle for an even count)
      pick=$(echo "${RUNS[$s,$p,$m]}" | tr ' ' '\n' | grep -v '^$' | sort -t: -k1,1g |
             awk -F: '{r[NR] = $2} END {print r[int((NR + 1) / 2)]}')
      line=${LINE[$s,$p,$m,$pick]}
      BUBBLE[$s,$p,$m]=$(echo "$line" | field bubble)
      printf '%-18s %2s %3s %9.4f %9.4f %9.4f %7s %9.3f %10.0f %8.1f %8.1f %8.1f\n' \
        "$(echo "$line" | field schedule)" "$p" "$m" "${BUBBLE[$s,$p,$m]}" "$(echo "$line" | field sim_bubble)" \
        "$(echo "$line" | field formula)" "$(echo "$line" | field peak_stashes)" "$(echo "$line" | field peak_act_mib)" \
        "$(echo "$line" | field samples_per_s)" "$(echo "$line" | field f_us)" "$(echo "$line" | field b_us)" \
        "$(echo "$line" | field w_us)"
    done
  done
done
echo "measured bubbles of the $R runs, p = 2, m = 8: 1F1B$(echo "${RUNS[1f1b,2,8]}" | sed 's/:[0-9]*//g');" \
     "ZB-H1$(echo "${RUNS[zb,2,8]}" | sed 's/:[0-9]*//g')"
echo "== one traced 1F1B step and one ZB-H1 step, p = 2, m = 8 (F, B, W; '.' idle; micro-batch below)"
WEFT_PIPE_TIMELINE=1 "$B" 2 8 1f1b 5 | tail -n 4
WEFT_PIPE_TIMELINE=1 "$B" 2 8 zb 5 | tail -n 4
awk -v z="${BUBBLE[zb,2,8]}" -v o="${BUBBLE[1f1b,2,8]}" 'BEGIN { printf "zero_bubble_vs_1f1b_bubble: %.2f\n", z / o }'
awk -v o="${BUBBLE[1f1b,2,8]}" 'BEGIN { printf "pipeline_bubble_vs_formula_1f1b: %.2f\n", o / (1 / 9) }'
