#!/usr/bin/env bash
# weft's fused value_and_grad vs PyTorch eager on the same function, one thread,
# in the same run. Ends with: autodiff_vs_torch_eager: R  (torch time / weft time)
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"
weft_build_with_torch_peer
LOG2N=${LOG2N:-24}
REPS=${REPS:-10}
echo "== weft"
w=$("$WEFT_BUILD/bench/bench_autodiff" "$LOG2N" "$REPS" | tee -a /dev/stderr)
echo "== torch"
t=$(OMP_NUM_THREADS=1 /usr/bin/python3 "$WEFT_ROOT/bench/autodiff_torch.py" "$LOG2N" "$REPS" | tee -a /dev/stderr)
wm=$(echo "$w" | awk '/^weft_ms:/ {print $2}')
tm=$(echo "$t" | awk '/^torch_ms:/ {print $2}')
echo "$w" | grep -E "^(memcpy_GBps|fraction_of_memcpy):"
awk -v a="$tm" -v b="$wm" 'BEGIN { printf "autodiff_vs_torch_eager: %.2f\n", a / b }'
# JAX's jit(value_and_grad) on the same function, in the venv of bench/peer_venv.sh.
echo "== jax"
if venv=$("$WEFT_ROOT/bench/peer_venv.sh"); then
  j=$("$venv/bin/python" "$WEFT_ROOT/bench/autodiff_jax.py" "$LOG2N" "$REPS" | tee -a /dev/stderr)
  jm=$(echo "$j" | awk '/^jax_ms:/ {print $2}')
  awk -v a="$jm" -v b="$wm" 'BEGIN { printf "autodiff_vs_jax_jit: %.2f\n", a / b }'
else
  echo "jax: skipped (no venv; see bench/peer_venv.sh)"
fi
