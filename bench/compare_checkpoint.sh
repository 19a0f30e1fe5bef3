#!/usr/bin/env bash
# Checkpoint save/load speed on this disk, in one run: weft's save (CRC-32,
# fsync, rename, metadata) and load (checksums) of a SIZE_MIB model against
# writing the same bytes with dd conv=fsync, and the PyPI safetensors
# package's save_file (+ fsync; in the venv of tests/checkpoint/venv.sh).
# Ends with: checkpoint_save_vs_dd: R   (weft save GB/s / dd GB/s; target >= 0.8)
# Knobs: SIZE_MIB (1024), DIR (build-bench/checkpoint, on the disk to measure).
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
if [ -f "$WEFT_BUILD/build.ninja" ]; then ninja -C "$WEFT_BUILD" bench/bench_checkpoint >/dev/null; else weft_build >/dev/null; fi
SIZE_MIB=${SIZE_MIB:-1024}
DIR=${DIR:-$WEFT_ROOT/build-bench/checkpoint}
mkdir -p "$DIR"
trap 'rm -rf "$DIR/ck" "$DIR/dd.bin" "$DIR/peer"' EXIT
echo "== weft: save and load of $SIZE_MIB MiB in $DIR"
w=$("$WEFT_BUILD/bench/bench_checkpoint" "$SIZE_MIB" "$DIR/ck" | tee -a /dev/stderr)
bytes=$(echo "$w" | awk '/^bytes:/ {print $2}')
echo "== dd: the same bytes (weft's rank file), conv=fsync"
sync
t0=$(date +%s.%N)
dd if="$DIR/ck/rank-00000.safetensors" of="$DIR/dd.bin" bs=16M conv=fsync status=none
t1=$(date +%s.%N)
dd_gbps=$(awk -v b="$bytes" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.3f", b / (z - a) / 1e9 }')
echo "dd_GBps: $dd_gbps"
if venv=$("$WEFT_ROOT/tests/checkpoint/venv.sh" 2>/dev/null); then
  echo "== peers: safetensors (numpy) and torch.save, + fsync"
  "$venv/bin/python" "$WEFT_ROOT/bench/checkpoint_peer.py" "$SIZE_MIB" "$DIR/peer" || true
else
  echo "== peers: skipped (no safetensors venv; see tests/checkpoint/venv.sh)"
fi
save=$(echo "$w" | awk '/^save_GBps:/ {print $2}')
awk -v s="$save" -v d="$dd_gbps" 'BEGIN { printf "checkpoint_save_vs_dd: %.2f\n", s / d }'
