#!/usr/bin/env bash
# One training step (forward, backward, AdamW) of a pre-LN transformer block
# stack (B=32, T=64, C=128, 4 heads, 2 blocks, causal), one thread, in weft,
# PyTorch eager, torch.compile and JAX jit, from the same initial weights
# (the first three losses are checked to agree), interleaved repeats, medians.
# Ends with:
#   transformer_step_vs_torch_eager: R1   (torch eager time / weft time)
#   transformer_step_vs_best_peer: R2     (best peer time / weft time)
# Peers run in the venv of bench/peer_venv.sh (created once, outside the repository).
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_install "${WEFT_BASE_PKGS[@]}" python3-venv
[ -f "$WEFT_BUILD/build.ninja" ] || meson setup "$WEFT_BUILD" "$WEFT_ROOT"
ninja -C "$WEFT_BUILD" bench/bench_transformer
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
REPS=${REPS:-7}
STEPS=${STEPS:-5}
if venv=$("$WEFT_ROOT/bench/peer_venv.sh"); then
  "$venv/bin/python" "$WEFT_ROOT/bench/transformer_peers.py" "$WEFT_BUILD/bench/bench_transformer" "$REPS" "$STEPS"
else
  echo "== peers: skipped (no venv; see bench/peer_venv.sh); weft alone:"
  "$WEFT_BUILD/bench/bench_transformer" $((REPS * STEPS))
fi
