#!/usr/bin/env bash
# Fused attention, forward + backward (B = 1, H = 4, D = 64, T = 256, 1024,
# 4096, causal and not), one thread: weft against PyTorch's
# scaled_dot_product_attention and JAX's dot_product_attention under jit, and
# weft's scratch memory against the materialised softmax(q k^T s) v.
# Ends with:
#   attention_T<T>_vs_torch: R      (torch time / weft time, not causal)
#   attention_T<T>_vs_jax_jit: R
#   attention_memory_T4096_vs_materialised: M   (fused extra bytes / materialised extra bytes)
# Peers run in the venv of bench/peer_venv.sh (created once, outside the repository).
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" python3-venv
[ -f "$WEFT_BUILD/build.ninja" ] || meson setup "$WEFT_BUILD" "$WEFT_ROOT"
ninja -C "$WEFT_BUILD" bench/bench_attention
REPS=${REPS:-5}
TS=${TS:-"256 1024 4096"}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
echo "== weft"
w=$("$WEFT_BUILD/bench/bench_attention" "$REPS" $TS)
echo "$w"
p=""
if venv=$("$WEFT_ROOT/bench/peer_venv.sh"); then
  echo "== peers"
  p=$("$venv/bin/python" "$WEFT_ROOT/bench/attention_peers.py" "$REPS" $TS)
  echo "$p"
else
  echo "== peers: skipped (no venv; see bench/peer_venv.sh)"
fi
ms() { echo "$1" | awk -v k="$2" -v t="T=$3" '$1 == k && $2 == t && $3 == "causal=0" { print $5 }'; }
for T in $TS; do
  wm=$(ms "$w" weft_attention "$T")
  tm=$(ms "$p" torch_attention "$T")
  jm=$(ms "$p" jax_attention "$T")
  [ -n "$tm" ] && awk -v a="$tm" -v b="$wm" -v t="$T" 'BEGIN { printf "attention_T%s_vs_torch: %.2f\n", t, a / b }'
  [ -n "$jm" ] && awk -v a="$jm" -v b="$wm" -v t="$T" 'BEGIN { printf "attention_T%s_vs_jax_jit: %.2f\n", t, a / b }'
done
echo "$w" | awk '$1 == "memory" { split($2, t, "="); printf "attention_memory_T%s_vs_materialised: %.4f\n", t[2], $4 / $6 }'
