#!/usr/bin/env bash
# The emulated cluster's tests (scripts/cluster.sh; tests/comm/cluster_mpi.cpp):
#   exact      2 hosts x 2 ranks, 1 Gbit/s links: every policy's allreduce is exact
#   link-down  the same cluster; once the ranks have run 3 allreduces, host h2's
#              link goes down (ip link set eth0 down): every rank, on both sides,
#              must fail within its 3 s deadline with an error naming the other
#              host's ranks as unreachable
# Usage: cluster.sh SCRIPTS_DIR CLUSTER_MPI_BINARY exact|link-down
# Exit 77 (skipped) where network namespaces cannot be created, saying why.
# The cluster has a name of its own (this shell's pid) and is removed on exit,
# whatever happened.
set -u
scripts=$1 bin=$2 mode=$3
name="wt$$"
cluster() { "$scripts/cluster.sh" "$@"; }
trap 'cluster down --name "$name"' EXIT

cluster up --name "$name" --hosts 2 --ranks-per-host 2 --rate 1gbit >/dev/null
rc=$?
[ $rc -eq 77 ] && exit 77
[ $rc -ne 0 ] && { echo "FAIL: cluster.sh up exited $rc"; exit 1; }

case $mode in
  exact)
    WEFT_CLUSTER_QUIET=1 timeout 150 "$scripts/cluster.sh" run --name "$name" -- "$bin" exact
    rc=$?
    [ $rc -eq 124 ] && echo "FAIL: the exact run did not finish in 150 s"
    exit $rc
    ;;
  link-down)
    dir=$(mktemp -d)
    trap 'cluster down --name "$name"; rm -rf "$dir"' EXIT
    # mpirun's own complaints once the job is torn apart go to a file, shown on failure.
    WEFT_CLUSTER_QUIET=1 "$scripts/cluster.sh" run --name "$name" -- "$bin" link-down "$dir" >"$dir/mpirun.log" 2>&1 &
    runner=$!
    for _ in $(seq 600); do
      [ -f "$dir/ready" ] && break
      kill -0 "$runner" 2>/dev/null || break
      sleep 0.1
    done
    if [ ! -f "$dir/ready" ]; then
      echo "FAIL: rank 0 never reported 3 completed allreduces"
      exit 1
    fi
    cluster link --name "$name" h2 down
    echo "h2's link is down"
    # Deadline 3 s + reachability grace (0.75 s) + slack: every rank reports by 30 s.
    for _ in $(seq 300); do
      [ "$(ls "$dir"/rank* 2>/dev/null | wc -l)" -ge 4 ] && break
      sleep 0.1
    done
    # mpirun cannot reach h2's daemon to end the job: removing the cluster
    # (trap) ends the processes we started inside it.
    kill "$runner" 2>/dev/null
    bad=0
    for r in 0 1 2 3; do
      if [ ! -f "$dir/rank$r" ]; then
        echo "FAIL rank $r: no report within 30 s of the link going down"
        bad=1
      else
        cat "$dir/rank$r"
        grep -q '^ok' "$dir/rank$r" || bad=1
      fi
    done
    [ $bad -ne 0 ] && { echo "-- mpirun's output:"; cat "$dir/mpirun.log"; }
    exit $bad
    ;;
  *) echo "usage: cluster.sh SCRIPTS_DIR BINARY exact|link-down" >&2; exit 2 ;;
esac
