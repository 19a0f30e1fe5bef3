#!/bin/sh
# cluster-agent.sh: the "remote shell" Open MPI uses to start its daemon on an
# emulated host of scripts/cluster.sh (mpirun --mca plm_rsh_agent points here).
# Open MPI calls it as `cluster-agent.sh [options] HOST COMMAND...`, as it
# would call ssh; it runs COMMAND inside HOST's network namespace
# (${WEFT_CLUSTER}-HOST, exported by cluster.sh), in a UTS namespace of its own
# whose hostname is HOST, so the daemon and its ranks see HOST as their
# machine's name. The environment is inherited (no ssh in between), so the
# ranks see the variables mpirun was started with.
set -eu
while [ $# -gt 0 ]; do
  case $1 in
    -l) shift 2 ;;   # ssh-style options Open MPI may pass: ignored
    -*) shift ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "cluster-agent.sh: usage: cluster-agent.sh HOST COMMAND..." >&2
  exit 2
fi
: "${WEFT_CLUSTER:?cluster-agent.sh: WEFT_CLUSTER is not set (run it through scripts/cluster.sh)}"
host=$1
shift
ns="$WEFT_CLUSTER-$host"
if ! ip netns list | grep -q "^$ns\b"; then
  echo "cluster-agent.sh: no network namespace '$ns' for host '$host' (is the cluster '$WEFT_CLUSTER' up?)" >&2
  exit 255
fi
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && eval "$2"' cluster-agent "$host" "$*"
