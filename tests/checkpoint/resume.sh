#!/usr/bin/env bash
# Exact resume across processes: for 1, 2 and 4 thread ranks, sharded update
# off and on, a process trains k steps and saves, a fresh process loads and
# trains N - k; its parameters must equal, bit for bit, those of a process
# that trained N steps straight. usage: resume.sh RESUME_TOOL
set -eu
tool=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-resume.XXXXXX")
trap 'rm -rf "$work"' EXIT
for p in 1 2 4; do
  for shard in 0 1; do
    "$tool" straight "$p" "$shard" >"$work/straight"
    "$tool" first "$p" "$shard" "$work/ck-$p-$shard" >/dev/null
    "$tool" rest "$p" "$shard" "$work/ck-$p-$shard" >"$work/rest"
    n=$(grep -c . "$work/straight")
    if [ "$n" -eq 0 ] || ! cmp -s "$work/straight" "$work/rest"; then
      echo "FAIL: p=$p shard=$shard: resumed parameters differ from the straight run ($n values)"
      diff "$work/straight" "$work/rest" | head -5
      exit 1
    fi
    echo "ok: p=$p shard=$shard: $n parameters bit for bit after resuming in a fresh process"
  done
done
