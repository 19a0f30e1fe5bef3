#!/usr/bin/env bash
# Collectives and data-parallel training on the emulated cluster
# (scripts/cluster.sh): 2 hosts x 2 ranks, Open MPI over TCP between the hosts
# and shared memory within, every host's link shaped to 1 Gbit/s and then
# 10 Gbit/s (tc tbf; no added delay: this kernel has no netem).
#
# Per link rate:
#  - alpha and beta between hosts from a 2-rank ring allreduce with one rank
#    per host, T(n) = 2 alpha + n beta fitted by least squares over 1..64 MiB
#    (within a host: the same on 2 ranks of one host, 1..16 MiB);
#  - f32 sum allreduce busbw, 8 B .. 256 MiB: ring, hierarchical (rails
#    schedule), hierarchical_leaders (the host leaders carry the buffer,
#    pipelined), halving_doubling, MPI_Allreduce (--algo mpi), and Auto with
#    in-run selection over ring, tree, recursive_doubling, halving_doubling,
#    both hierarchical schedules and native (it decides during the warmup),
#    all in one weft-bench run, interleaved;
#  - the alpha-beta model's prediction for ring, hierarchical and
#    halving-doubling (bytes through each host's link, which the ranks of a
#    host share) against the measured time, >= 1 MiB;
# and at the rates in DP_RATES: data-parallel Fashion-MNIST (bench_dp_cluster)
# uncompressed and with bf16, top-k 1% and PowerSGD rank 4: samples/s and
# training time to 87% test accuracy.
# Ends with:
#   hierarchical_vs_flat_ring_1gbit_64MiB: R1       (ring / hierarchical_leaders; bound 1.5 at 2 x 2, 1.75 at 2 x 4)
#   compressed_vs_uncompressed_time_to_87pct_1gbit: R2
#   auto_worst_ratio_to_best: R3                    (per rate, and the worst)
#   model_worst_error_ge_1MiB: E                    (|predicted/measured - 1|; per rate, and the worst)
# Knobs (environment): RATES ("1gbit 10gbit"), DP_RATES ("1gbit"; empty: no training), MINBYTES (8), MAXBYTES
# (256M), FACTOR (2), ITERS (8), SMALL_ITERS (60, at 8 B-8 KiB), WARMUP (4; Auto gets at least 7 x IN_RUN + 1), IN_RUN (5: rounds of timed calls,
# one per Auto candidate each), BUDGET (512M), EPOCHS (6), OUT (build/cluster),
# WEFT_BUILD (build), SUMMARY_ONLY (set: print the tables from the files already in OUT). Needs root (network namespaces); exits 77 without.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" iproute2 dataset-fashion-mnist
[ -f "$WEFT_BUILD/build.ninja" ] || meson setup "$WEFT_BUILD" "$ROOT" >/dev/null
[ -n "${SUMMARY_ONLY:-}" ] || ninja -C "$WEFT_BUILD" bench/weft-bench >/dev/null

RATES=${RATES-"1gbit 10gbit"}
DP_RATES=${DP_RATES-"1gbit"}
MAXBYTES=${MAXBYTES:-256M}
MINBYTES=${MINBYTES:-8}
FACTOR=${FACTOR:-2}
ITERS=${ITERS:-8}
SMALL_ITERS=${SMALL_ITERS:-60}  # timed calls at 8 B-8 KiB (weft-bench --small-iters): 8 in shares of 1-2 per policy are the scheduler's
WARMUP=${WARMUP:-4}
IN_RUN=${IN_RUN:-5}
BUDGET=${BUDGET:-512M}
EPOCHS=${EPOCHS:-6}
OUT=${OUT:-$WEFT_BUILD/cluster}
mkdir -p "$OUT"
BENCH=$WEFT_BUILD/bench/weft-bench
DP=$WEFT_BUILD/bench/bench_dp_cluster
CLUSTER=$ROOT/scripts/cluster.sh
NAME="cc$$"
trap '"$CLUSTER" down --name "$NAME" 2>/dev/null || true' EXIT

if [ -z "${SUMMARY_ONLY:-}" ]; then  # SUMMARY_ONLY=1: only the tables and summary, from the files in $OUT
echo "== one host, shared memory (no cluster): 2 ranks' ring allreduce, 1..16 MiB, for alpha and beta within a host"
mpirun -np 2 --mca btl self,vader "$BENCH" --transport mpi -b 1M -e 16M -f 2 -n 5 -w 2 --algo ring -c 0 \
  --csv "$OUT/links_intra.csv" >/dev/null

for rate in $RATES; do
  echo "== $rate links: 2 hosts x 2 ranks"
  "$CLUSTER" down --name "$NAME" 2>/dev/null || true
  if ! "$CLUSTER" up --name "$NAME" --hosts 2 --ranks-per-host 2 --rate "$rate" >/dev/null; then
    echo "compare_cluster.sh: cannot build the emulated cluster here (see above)"; exit 77
  fi
  # One rank per host: a 2-rank ring allreduce sends n/2 twice over the link,
  # T(n) = 2 alpha + n beta (fitted below, 1..64 MiB). (weft-bench calibrate's
  # ping-pong would do, but its thousands of small round trips take minutes on
  # a loaded machine.)
  echo "-- the links alone: one rank per host, ring allreduce 1..64 MiB"
  "$CLUSTER" run --name "$NAME" --ranks-per-host 1 -- "$BENCH" --transport mpi -b 1M -e 64M -f 2 -n 5 -w 2 \
    --algo ring -c 0 --csv "$OUT/links_$rate.csv" >/dev/null
  # Auto in the same run as the policies it is compared with, interleaved with
  # them round by round (weft-bench's rounds): a separate run differed from
  # this one by more than Auto's choices do. Its warmup calls (at least
  # 7 x IN_RUN + 1) let in-run selection time its 7 candidates in IN_RUN
  # interleaved rounds first (a candidate's lower median counts: one call
  # each picked a 1.8x slower policy at some sizes below 512 KiB, where a
  # call takes 1-5 ms and one trial is noise; on 2026-12-05 neither 3 calls
  # per candidate one after another nor 5 interleaved rounds held Auto
  # within 1.10 everywhere, since calls of one policy vary up to 2x here:
  # docs/benchmarks.md); the others get the same warmup.
  echo "-- allreduce busbw (f32 sum), $MINBYTES B .. $MAXBYTES: ring, hierarchical, hierarchical_leaders, halving_doubling,"
  echo "   MPI_Allreduce, and Auto with in-run selection over ring, tree, recursive_doubling, halving_doubling,"
  echo "   hierarchical, hierarchical_leaders, native"
  W=$((WARMUP > 7 * IN_RUN + 1 ? WARMUP : 7 * IN_RUN + 1))
  "$CLUSTER" run --name "$NAME" -- "$BENCH" --transport mpi -b "$MINBYTES" -e "$MAXBYTES" -f "$FACTOR" -n "$ITERS" --small-iters "$SMALL_ITERS" -w "$W" \
    --bytes-budget "$BUDGET" -c 1 --algo ring,hierarchical,hierarchical_leaders,halving_doubling,mpi,auto --in-run "$IN_RUN" --auto-candidates wide \
    --csv "$OUT/allreduce_$rate.csv" >"$OUT/allreduce_$rate.txt"
  rm -f "$OUT/auto_$rate.csv"  # an older layout's separate Auto run
  "$CLUSTER" down --name "$NAME"
done

[ -n "$DP_RATES" ] && ninja -C "$WEFT_BUILD" bench/bench_dp_cluster >/dev/null
for rate in $DP_RATES; do
  "$CLUSTER" up --name "$NAME" --hosts 2 --ranks-per-host 2 --rate "$rate" >/dev/null
  for codec in none bf16 topk powersgd; do
    echo "-- data parallel, $rate links, codec $codec"
    "$CLUSTER" run --name "$NAME" -- "$DP" "$codec" "$EPOCHS" 87 2>&1 | tee "$OUT/dp_${codec}_$rate.txt" |
      grep -E "^(epoch|result)" || true
  done
  "$CLUSTER" down --name "$NAME"
done
fi

RATES="$RATES" DP_RATES="$DP_RATES" OUT="$OUT" python3 - <<'EOF'
import csv, os, re, math
out = os.environ["OUT"]
rates = os.environ["RATES"].split()
dp_rates = os.environ["DP_RATES"].split()
MiB = 1 << 20
summary = {}
def fit(path):
    pts = [(int(r["size"]), float(r["p50_us"]) * 1e-6) for r in csv.DictReader(open(path))
           if r["placement"] == "oop" and r["algo"] == "ring"]
    n = len(pts); sx = sum(b for b, _ in pts); sy = sum(t for _, t in pts)
    sxx = sum(b * b for b, _ in pts); sxy = sum(b * t for b, t in pts)
    beta = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return max((sy - beta * sx) / n / 2, 0.0), beta
worst_model = 0.0
model_worst = {}  # per rate
auto_worst = {}
for rate in rates:
    if not all(os.path.exists(f"{out}/{f}_{rate}.csv") for f in ("links", "allreduce")):
        print(f"\n== {rate}: no measurements in {out} (not run, or interrupted)")
        continue
    # alpha, beta between hosts: least squares of the 2-rank ring's p50 time T(n) = 2 alpha + n beta.
    alpha, beta = fit(f"{out}/links_{rate}.csv")
    print(f"\n== {rate}: between hosts alpha {alpha*1e6:.1f} us, beta {beta*1e9:.3f} ns/B ({1/beta/1e9:.3f} GB/s)")
    rows = [r for f in ("allreduce", "auto") if os.path.exists(f"{out}/{f}_{rate}.csv")
            for r in csv.DictReader(open(f"{out}/{f}_{rate}.csv")) if r["placement"] == "oop"]
    wrong = sum(int(r["wrong"] or 0) for r in rows)
    sizes = sorted({int(r["size"]) for r in rows})
    algos = ["ring", "hierarchical", "hierarchical_leaders", "halving_doubling", "mpi", "auto"]
    t = {(r["algo"], int(r["size"])): float(r["p50_us"]) for r in rows}
    bw = {(r["algo"], int(r["size"])): float(r["busbw_GBps"]) for r in rows}
    choice = {int(r["size"]): r["auto_choice"] for r in rows if r["algo"] == "auto"}
    print(f"# busbw GB/s (p50 time); wrong elements over every run: {wrong}")
    print("# %12s " % "size" + " ".join("%17s" % a for a in algos) + "  auto_choice  auto/best")
    worst = 0.0
    for s in sizes:
        others = [t[(a, s)] for a in algos if a != "auto" and (a, s) in t]
        if not others: continue
        ratio = t[("auto", s)] / min(others) if ("auto", s) in t else None
        if ratio: worst = max(worst, ratio)
        print("  %12d " % s + " ".join("%8.3f (%6.0f)" % (bw[(a, s)], t[(a, s)]) if (a, s) in t else "%17s" % "-"
                                       for a in algos) + "  %-18s %s" % (choice.get(s, ""), "%.2f" % ratio if ratio else "-"))
    if ("auto", sizes[-1]) in t: auto_worst[rate] = worst
    # Within a host (shared memory): a 2-rank ring allreduce of S takes
    # T_i(S) = 2 ia + S ib (links_intra, 2 ranks on the machine's cores).
    # Here both hosts' ranks share this machine's cores, so when all 4 ranks
    # work within their hosts at once that takes `share` times as long.
    ia, ib = fit(f"{out}/links_intra.csv")
    ncores = os.cpu_count() or 1
    share = max(1.0, 4 / ncores) / max(1.0, 2 / ncores)
    intra = lambda S: share * (2 * ia + S * ib)
    # Model: bytes through one host's link (each direction), which a host's ranks share.
    # p = 4 on 2 hosts. ring: 2(p-1) steps, each paced by its host-crossing edge
    # carrying n/p: 2(p-1)(alpha + n/p beta), 1.5 n per link. hierarchical:
    # node reduce-scatter and allgather in shared memory (together the volume of
    # one intra-host allreduce, T_i(n) x share), then the two rails' 2-rank rings
    # on n/2 share each link: 2 (alpha + n/2 beta), n per link.
    # hierarchical_leaders: the leaders' 2-rank ring on n, chunk by chunk, the
    # node's shared-memory traffic overlapped with it: 2 (alpha + n/2 beta), n per link.
    # halving-doubling: its distance-2 steps (n/2 each way, both pairs across) cross,
    # the distance-1 steps stay in the host: 2 (alpha + n beta), 2 n per link.
    pred = {
        "ring": lambda S: 6 * (alpha + S / 4 * beta),
        "hierarchical": lambda S: intra(S) + 2 * (alpha + S / 2 * beta),
        "hierarchical_leaders": lambda S: 2 * (alpha + S / 2 * beta),
        "halving_doubling": lambda S: 2 * (alpha + S * beta),
    }
    print(f"# model vs measured, >= 1 MiB (us): alpha-beta on the fitted link constants")
    print("# %12s " % "size" + " ".join("%30s" % a for a in pred))
    for s in sizes:
        if s < MiB: continue
        cells = []
        for a, f in pred.items():
            if (a, s) not in t: continue
            p = f(s) * 1e6; m = t[(a, s)]
            e = p / m - 1
            worst_model = max(worst_model, abs(e))
            model_worst[rate] = max(model_worst.get(rate, 0.0), abs(e))
            cells.append("%9.0f / %9.0f (%+5.0f%%)" % (p, m, 100 * e))
        print("  %12d " % s + " ".join("%30s" % c for c in cells))
    # The projection (weft-bench project) with these links between nodes of 2 ranks.
    with open(f"{out}/cluster_model_{rate}.txt", "w") as f:
        f.write("# weft cost model: shared memory within a host, the emulated %s links between hosts\n[mpi]\n" % rate)
        f.write("alpha %g\nbeta %g\ngamma %g\nalpha_inter %g\nbeta_inter %g\nranks_per_node 2\n"
                % (ia, ib, ib, alpha, beta))
    if rate == "1gbit" and ("ring", 64 * MiB) in t:
        summary["R1"] = t[("ring", 64 * MiB)] / t[("hierarchical_leaders", 64 * MiB)]
        summary["R1_rails"] = t[("ring", 64 * MiB)] / t[("hierarchical", 64 * MiB)]
for rate in dp_rates:
    res = {}
    for codec in ["none", "bf16", "topk", "powersgd"]:
        p = f"{out}/dp_{codec}_{rate}.txt"
        if not os.path.exists(p): continue
        for line in open(p):
            m = re.search(r"result codec=(\S+) samples_per_s=(\S+) time_to_target_s=(\S+) epochs_to_target=(\S+) accuracy=(\S+)", line)
            if m: res[codec] = tuple(float(x) for x in m.groups()[1:])
    print(f"\n== data parallel Fashion-MNIST, {rate} links, 2 hosts x 2 ranks, global batch 128")
    print("# %-9s %12s %18s %16s %10s" % ("codec", "samples/s", "time_to_87pct_s", "epochs_to_87pct", "accuracy"))
    for c, (sps, tt, ep, acc) in res.items():
        print("  %-9s %12.0f %18s %16s %10.2f" % (c, sps, "%.1f" % tt if tt >= 0 else "not reached",
                                                  "%.2f" % ep if ep >= 0 else "-", acc))
    if rate == "1gbit" and "none" in res:
        comp = [v[1] for c, v in res.items() if c != "none" and v[1] >= 0]
        if res["none"][1] >= 0 and comp:
            summary["R2"] = res["none"][1] / min(comp)
        elif res["none"][1] >= 0 and len(res) > 1:
            summary["R2"] = 0.0  # no compressed run reached the target within the epochs given
final = []
final.append("# hierarchical vs flat ring at 2 hosts x 2 ranks: a flat ring moves 2(p-1)/p n = 1.5 n bytes")
final.append("# through each host's link, the hierarchical schedules 2(pg-1)/pg n = n (leaders: one 2-rank")
final.append("# ring on n; rails: pl = 2 rings of n/2 each, sharing the link): bound 1.5 / 1 = 1.5. At 2 hosts")
final.append("# x 4 ranks: 2(7/8) n = 1.75 n against n, bound 1.75; in general (1 - 1/p) / (1 - 1/pg).")
r1 = summary.get("R1")
final.append("hierarchical_vs_flat_ring_1gbit_64MiB: " + ("%.2f" % r1 if r1 else "n/a") + "   (hierarchical_leaders)")
r1r = summary.get("R1_rails")
final.append("hierarchical_rails_vs_flat_ring_1gbit_64MiB: " + ("%.2f" % r1r if r1r else "n/a"))
r2 = summary.get("R2")
final.append("compressed_vs_uncompressed_time_to_87pct_1gbit: " + ("%.2f" % r2 if r2 else
             "0 (no compressed run reached 87%)" if r2 == 0.0 else "n/a"))
for rate, w in auto_worst.items():
    final.append(f"auto_worst_ratio_to_best_{rate}: {w:.2f}")
final.append("auto_worst_ratio_to_best: " + ("%.2f" % max(auto_worst.values()) if auto_worst else "n/a"))
for rate, w in model_worst.items():
    final.append(f"model_worst_error_ge_1MiB_{rate}: {100 * w:.0f}%")
final.append("model_worst_error_ge_1MiB: " + ("%.0f%%" % (100 * worst_model) if worst_model else "n/a"))
open(f"{out}/summary.txt", "w").write("\n".join(final) + "\n")
EOF

for rate in $RATES; do
  [ -f "$OUT/cluster_model_$rate.txt" ] || continue
  echo "== projection to more ranks, nodes of 2 ranks, $rate links between them (model: $OUT/cluster_model_$rate.txt)"
  "$BENCH" project --model "$OUT/cluster_model_$rate.txt" --transport mpi --ranks-per-node 2 | grep -v "^$" | head -40
done

echo "== summary (measured on this machine; see the load note in README)"
cat "$OUT/summary.txt"
