#!/usr/bin/env bash
# Parameter servers against DataParallel on the Fashion-MNIST MLP
# (examples/09_parameter_server): BSP, SSP s = 1 and 4, ASP and DataParallel,
# thread ranks and mpirun, 1-2 servers and 3-4 workers, in two straggler
# settings: transient (each step one random worker takes 3x as long) and
# persistent (the last worker is always 2x slower). For each: time to reach
# TARGET% on 2,000 test images (evaluation time excluded) and the final
# accuracy on the whole test set. Then push/pull throughput (bench_ps). Ends with
#   ssp_vs_bsp_time_to_accuracy_straggler: R     (transient; BSP time / best SSP time, threads, 1 server x 3 workers)
#   asp_vs_bsp_time_to_accuracy_slow_worker: R2  (persistent; BSP time / ASP time, same layout)
#   ssp_vs_bsp_throughput_straggler: R3         (transient; BSP training time / SSP s=4 training time, same runs)
#   EPOCHS=2 TARGET=85 BATCH=128 OPTIMIZER=adam MPI=1 REPEATS=1 bench/compare_ps.sh  (REPEATS=5: medians of 5 interleaved runs)
# BATCH is per worker. At 32 the servers' work per step (an Adam pass over the
# 269,322 weights per push and 1 MiB each way per worker) is about ten times a
# worker's compute on 2 cores shared by 4 ranks, so a straggler's sleep is ~15%
# of a step and no consistency model can gain more than that; 128 makes the
# step compute-bound, as parameter servers are meant to be used.
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}"
weft_build
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
E=${EPOCHS:-2}
T=${TARGET:-85}
B=${BATCH:-128}
OPT=${OPTIMIZER:-adam}  # the servers' (and DataParallel's) optimizer: adam or sgd (momentum 0.9)
EX="$WEFT_BUILD/examples/09_parameter_server"
EXM="$WEFT_BUILD/examples/09_parameter_server_mpi"

declare -A TTT ACC RUNS TRAIN
# REPEATS=R runs every configuration R times, interleaved (each round runs all
# of them once); a configuration's time is the median of its runs (-1, not
# reached, counts as the slowest). One run reaches 85% in a few seconds, so
# one scheduling hiccup moves a single run's ratio by tenths.
R=${REPEATS:-1}
median() { tr ' ' '\n' | grep -v '^$' | awk '{ v = ($1 < 0) ? 1e9 : $1; print v }' | sort -g |
           awk '{a[NR] = $1} END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print (m >= 1e8) ? -1 : m }'; }
run() {  # run KEY COMMAND...
  local key=$1
  shift
  local line t
  line=$("$@" 2>/dev/null | grep '^result ' | tail -1) || true
  t=$(echo "$line" | sed -n 's/.*time_to_target_s=\([-0-9.]*\).*/\1/p')
  RUNS[$key]="${RUNS[$key]:-} ${t:--1}"
  TTT[$key]=$(echo "${RUNS[$key]}" | median)
  local tr st
  tr=$(echo "$line" | sed -n 's/.*train_s=\([0-9.]*\).*/\1/p')
  st=$(echo "$line" | sed -n 's/.*steps_to_target=\([-0-9]*\).*/\1/p')
  TRAIN[$key]="${TRAIN[$key]:-} ${tr:--1}"
  local cpu used
  cpu=$(echo "$line" | sed -n 's/.*cpu_s=\([0-9.]*\).*/\1/p')
  # cores busy on average: every rank's CPU on thread ranks (under mpirun cpu_s is worker 0's process only: not shown)
  case $key in mpi_*) cpu= ;; esac
  used=$(awk -v c="${cpu:-0}" -v t="${tr:-0}" 'BEGIN { if (t > 0 && c > 0) printf "%.2f", c / t; else print "-" }')
  ACC[$key]=$(echo "$line" | sed -n 's/.*final_accuracy=\([0-9.]*\).*/\1/p')
  printf '%-44s time_to_%s%%: %8s s (step %4s)   final accuracy: %6s%%   training: %7s s   cores busy: %s\n' "$key" "$T" \
    "${t:-fail}" "${st:--}" "${ACC[$key]:-fail}" "${tr:-fail}" "$used"
}

echo "== time to ${T}% test accuracy (worker 0's weights every 5 steps, evaluated on 2,000 test images after the run;"
echo "   -1: not reached in $E epochs), batch $B per worker, optimizer $OPT"
echo "   and final accuracy (10,000 test images); uptime: $(cut -d' ' -f1-3 /proc/loadavg)"
# LAYOUTS="1 3" (servers workers, comma-separated): fewer runs; the two ratios below read the 1 x 3 runs.
IFS=, read -ra LAYOUT_LIST <<<"${LAYOUTS:-1 3,2 4}"
for ((round = 1; round <= R; round++)); do
[ "$R" -gt 1 ] && echo "-- round $round of $R"
for straggler in transient persistent; do
  for layout in "${LAYOUT_LIST[@]}"; do
    set -- $layout
    S=$1 W=$2
    for c in bsp ssp1 ssp4 asp dp; do
      run "threads_${S}x${W}_${straggler}_${c}" "$EX" --consistency $c --servers $S --workers $W --epochs "$E" \
        --batch "$B" --straggler $straggler --target "$T" --optimizer "$OPT"
    done
  done
  if [ "${MPI:-1}" = 1 ] && [ -x "$EXM" ]; then
    for layout in "${LAYOUT_LIST[@]}"; do
      set -- $layout
      S=$1 W=$2
      for c in bsp ssp1 ssp4 asp; do
        run "mpi_${S}x${W}_${straggler}_${c}" mpirun --oversubscribe -np $((S + W)) "$EXM" --consistency $c --servers $S \
          --epochs "$E" --batch "$B" --straggler $straggler --target "$T" --optimizer "$OPT"
      done
      run "mpi_${S}x${W}_${straggler}_dp" mpirun --oversubscribe -np $W "$EXM" --consistency dp --epochs "$E" \
        --batch "$B" --straggler $straggler --target "$T" --optimizer "$OPT"
    done
  fi
done

done
if [ "$R" -gt 1 ]; then
  echo "== medians of $R runs (seconds to ${T}%; -1: not reached)"
  for key in $(printf '%s\n' "${!RUNS[@]}" | sort); do
    printf '%-44s %8s s   (runs:%s)   training s median %s\n' "$key" "${TTT[$key]}" "${RUNS[$key]}" \
      "$(echo "${TRAIN[$key]}" | median)"
  done
fi

echo "== push/pull throughput (thread ranks, 1 server, 1 worker)"
"$WEFT_BUILD/bench/bench_ps" "${SECONDS_PER:-1}"

ratio() {  # ratio NUM DEN: NUM / DEN when both reached the target, else n/a
  awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'
}
k=threads_1x3_transient
best_ssp=$(awk -v a="${TTT[${k}_ssp1]:--1}" -v b="${TTT[${k}_ssp4]:--1}" \
  'BEGIN { if (a > 0 && (b <= 0 || a < b)) print a; else print b }')
echo "ssp_vs_bsp_time_to_accuracy_straggler: $(ratio "${TTT[${k}_bsp]:--1}" "$best_ssp")"
echo "ssp_vs_bsp_throughput_straggler: $(ratio "$(echo "${TRAIN[${k}_bsp]:-}" | median)" "$(echo "${TRAIN[${k}_ssp4]:-}" | median)")"
k=threads_1x3_persistent
echo "asp_vs_bsp_time_to_accuracy_slow_worker: $(ratio "${TTT[${k}_bsp]:--1}" "${TTT[${k}_asp]:--1}")"
