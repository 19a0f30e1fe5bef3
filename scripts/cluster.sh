#!/usr/bin/env bash
# cluster.sh: an emulated multi-host cluster on this machine, with real MPI
# over real TCP between "hosts" and shared memory within each.
#
#   scripts/cluster.sh up   [--name N] [--hosts H] [--ranks-per-host R] [--rate RATE]
#   scripts/cluster.sh down  --name N
#   scripts/cluster.sh run  [--name N | --hosts H --ranks-per-host R --rate RATE]
#                           [--mpirun-arg ARG]... -- COMMAND [ARGS...]
#                           (with --name of a cluster that is up, --ranks-per-host
#                           may differ from the one it was built with)
#   scripts/cluster.sh link  --name N HOST up|down
#   scripts/cluster.sh status [--name N]
#
#   --hosts H            hosts (network namespaces), default 2
#   --ranks-per-host R   MPI ranks on each host, default 2
#   --rate RATE          every host's link, each direction: tc rate such as
#                        1gbit, 10gbit, 100mbit; "none" leaves it unshaped (default 1gbit)
#   --name N             the cluster's name; `run` without it builds a cluster of
#                        its own (unique name) and removes it when the command ends
#
# Each host h1..hH is a network namespace N-hI whose eth0 (10.77.0.I/24) is a
# veth into a bridge that lives in the namespace N-head (10.77.0.254, where
# mpirun runs). tc's token bucket (tbf) shapes both directions of every
# host's link: the host's eth0 and the bridge's port towards it. This kernel
# has no netem, so there is no added delay or loss: latency is what the
# kernel's TCP over veth costs. No address outside these namespaces is used.
#
# `run` starts Open MPI in N-head with --host h1:R,...,hH:R and
# --mca plm_rsh_agent scripts/cluster-agent.sh (it enters the host's
# namespace, and a UTS namespace whose hostname is the host's name), btl
# self,vader,tcp (vader: shared memory between ranks of one host; tcp between
# hosts, on the cluster's subnet only). Ranks see WEFT_CLUSTER (the name),
# WEFT_CLUSTER_HOSTS, WEFT_CLUSTER_RANKS_PER_HOST and WEFT_CLUSTER_RATE.
# Exit status: COMMAND's (mpirun's); 77 when namespaces cannot be created here.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=/run/weft-cluster
SUBNET=10.77.0.0/24
HEAD_IP=10.77.0.254

usage() {
  sed -n '5,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

# tc rate (1gbit, 10gbit, 500mbit, 1000000bit) -> bits per second.
rate_bits() {
  local r=${1,,} n unit
  n=${r%%[a-z]*}
  unit=${r#"$n"}
  [[ $n =~ ^[0-9]+$ ]] || return 1
  case $unit in
    bit|"") echo "$n" ;;
    kbit) echo $((n * 1000)) ;;
    mbit) echo $((n * 1000000)) ;;
    gbit) echo $((n * 1000000000)) ;;
    *) return 1 ;;
  esac
}

# Can this process create network namespaces? Prints why not.
can_namespace() {
  local probe="weft-probe-$$"
  if [ "$(id -u)" -ne 0 ]; then
    echo "not root (network namespaces and tc need root)"
    return 1
  fi
  for tool in ip tc unshare mpirun; do
    command -v "$tool" >/dev/null || { echo "'$tool' is not installed"; return 1; }
  done
  local err
  if ! err=$(ip netns add "$probe" 2>&1); then
    echo "ip netns add failed: $err"
    return 1
  fi
  if ! err=$(ip -n "$probe" link add vprobe type veth peer name vprobe2 2>&1); then
    ip netns del "$probe" 2>/dev/null
    echo "cannot create veth pairs: $err"
    return 1
  fi
  ip netns del "$probe"
  return 0
}

load_state() {
  local f="$STATE_DIR/$NAME"
  [ -f "$f" ] || die "no cluster named '$NAME' (see: scripts/cluster.sh status)"
  # shellcheck disable=SC1090
  . "$f"
}

# Kills the processes we started inside the cluster's namespaces (by id), then removes them.
down() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(head|h[0-9]+)$"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -TERM "$pid" 2>/dev/null
    done
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NAME-(head|h[0-9]+)$"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      sleep 0.2
      kill -KILL "$pid" 2>/dev/null
    done
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  rm -f "$STATE_DIR/$NAME"
}

up() {
  local why bits burst i ns
  if ! why=$(can_namespace); then
    echo "cluster.sh: cannot build an emulated cluster here: $why" >&2
    exit 77
  fi
  [[ $HOSTS =~ ^[0-9]+$ && $HOSTS -ge 1 && $HOSTS -le 200 ]] || die "--hosts must be 1..200, got '$HOSTS'"
  [[ $RPH =~ ^[0-9]+$ && $RPH -ge 1 ]] || die "--ranks-per-host must be a positive integer, got '$RPH'"
  if [ "$RATE" != none ]; then
    bits=$(rate_bits "$RATE") || die "--rate must be a tc rate such as 1gbit, 10gbit or 100mbit (or none), got '$RATE'"
    # Bucket: 2 ms of the rate, at least 128 KiB (a GSO packet over veth is up to 64 KiB).
    burst=$((bits / 8 / 500))
    [ "$burst" -lt 131072 ] && burst=131072
  fi
  [ -e "$STATE_DIR/$NAME" ] && die "a cluster named '$NAME' is up already (scripts/cluster.sh down --name $NAME)"
  mkdir -p "$STATE_DIR"
  trap 'echo "cluster.sh: building $NAME failed; removing it" >&2; down; exit 1' ERR
  set -E
  local head="$NAME-head" hosts_line=""
  ip netns add "$head"
  ip -n "$head" link set lo up
  ip -n "$head" link add br0 type bridge
  ip -n "$head" addr add "$HEAD_IP/24" dev br0
  ip -n "$head" link set br0 up
  for ((i = 1; i <= HOSTS; i++)); do
    ns="$NAME-h$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # The pair is born in the two namespaces: no name in the root namespace.
    ip -n "$head" link add "vh$i" type veth peer name eth0 netns "$ns"
    ip -n "$head" link set "vh$i" master br0
    ip -n "$head" link set "vh$i" up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    if [ "$RATE" != none ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst "$burst" latency 50ms
      ip netns exec "$head" tc qdisc add dev "vh$i" root tbf rate "$RATE" burst "$burst" latency 50ms
    fi
    hosts_line+="10.77.0.$i h$i"$'\n'
  done
  # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: every
  # namespace resolves h1..hH and head to the cluster's addresses.
  for ns in "$head" $(for ((i = 1; i <= HOSTS; i++)); do echo "$NAME-h$i"; done); do
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s %s\n%s' "$HEAD_IP" head "$hosts_line" >"/etc/netns/$ns/hosts"
  done
  for ((i = 2; i <= HOSTS; i++)); do
    ip netns exec "$NAME-h1" ping -c 1 -W 2 "10.77.0.$i" >/dev/null 2>&1 || true  # fill ARP caches
  done
  printf 'HOSTS=%s\nRPH=%s\nRATE=%s\n' "$HOSTS" "$RPH" "$RATE" >"$STATE_DIR/$NAME"
  trap - ERR
  set +E
  echo "cluster.sh: $NAME up: $HOSTS hosts x $RPH ranks, links $RATE each way, subnet $SUBNET" >&2
}

run_cmd() {
  local i hostlist="" np
  for ((i = 1; i <= HOSTS; i++)); do hostlist+="${hostlist:+,}h$i:$RPH"; done
  np=$((HOSTS * RPH))
  # shellcheck source=common.sh
  . "$ROOT/scripts/common.sh"  # OMPI_ALLOW_RUN_AS_ROOT, vader settings, OPENBLAS_CORETYPE
  export WEFT_CLUSTER="$NAME" WEFT_CLUSTER_HOSTS="$HOSTS" WEFT_CLUSTER_RANKS_PER_HOST="$RPH" WEFT_CLUSTER_RATE="$RATE"
  local cmd=(mpirun -np "$np" --host "$hostlist"
    --mca plm_rsh_agent "$ROOT/scripts/cluster-agent.sh" --mca plm_rsh_no_tree_spawn 1
    --mca pml ob1 --mca btl self,vader,tcp
    --mca btl_tcp_if_include "$SUBNET" --mca oob_tcp_if_include "$SUBNET"
    "${MPIRUN_ARGS[@]}" "$@")
  [ -n "${WEFT_CLUSTER_QUIET:-}" ] || echo "cluster.sh: ${cmd[*]}" >&2
  ip netns exec "$NAME-head" unshare --uts /bin/sh -c 'hostname head && exec "$@"' sh "${cmd[@]}"
}

[ $# -ge 1 ] || usage
ACTION=$1
shift
NAME="" HOSTS=2 RPH=2 RATE=1gbit RPH_GIVEN=""
MPIRUN_ARGS=()
while [ $# -gt 0 ]; do
  # An option given last with no value: `shift 2` would fail without
  # shifting and this loop would spin forever.
  case $1 in
    --name|--hosts|--ranks-per-host|--rate|--mpirun-arg) [ $# -ge 2 ] || die "$1 needs a value" ;;
  esac
  case $1 in
    --name) NAME=${2:-}; shift 2 ;;
    --hosts) HOSTS=${2:-}; shift 2 ;;
    --ranks-per-host) RPH=${2:-}; RPH_GIVEN=$RPH; shift 2 ;;
    --rate) RATE=${2:-}; shift 2 ;;
    --mpirun-arg) MPIRUN_ARGS+=("${2:-}"); shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "cluster.sh: unknown option '$1'" >&2; usage ;;
    *) break ;;
  esac
done
if [ -n "$NAME" ] && ! [[ $NAME =~ ^[A-Za-z0-9_.]{1,40}$ ]]; then
  die "--name must be 1..40 letters, digits, '_' or '.', got '$NAME'"
fi

case $ACTION in
  up)
    NAME=${NAME:-weft}
    up
    echo "$NAME"
    ;;
  down)
    [ -n "$NAME" ] || die "down needs --name"
    down
    ;;
  link)
    [ -n "$NAME" ] || die "link needs --name"
    [ $# -eq 2 ] || die "usage: cluster.sh link --name N HOST up|down"
    load_state
    [[ $1 =~ ^h[0-9]+$ ]] && ip netns list | grep -q "^$NAME-$1\b" || die "cluster '$NAME' has no host '$1' (h1..h$HOSTS)"
    [[ $2 == up || $2 == down ]] || die "link state must be up or down, got '$2'"
    ip -n "$NAME-$1" link set eth0 "$2"
    ;;
  status)
    if [ -n "$NAME" ]; then load_state; echo "$NAME: $HOSTS hosts x $RPH ranks, links $RATE"; else ls "$STATE_DIR" 2>/dev/null; fi
    ;;
  run)
    [ $# -ge 1 ] || die "run needs a command after --"
    if [ -n "$NAME" ] && [ -f "$STATE_DIR/$NAME" ]; then
      load_state
      # A cluster that is up: --ranks-per-host picks how many ranks each host runs this time.
      RPH=${RPH_GIVEN:-$RPH}
    else
      # A cluster of its own, removed however the command ends.
      NAME=${NAME:-wc$$}
      trap 'down' EXIT
      trap 'exit 130' INT TERM
      up
    fi
    run_cmd "$@"
    ;;
  *) usage ;;
esac
