# The attention benchmark's peers: loss = sum(sdpa(q, k, v) * w), forward +
# backward to q, k, v, one thread, B = 1, H = 4, D = 64, float32, in
#   torch.nn.functional.scaled_dot_product_attention (eager)
#   jax.jit(jax.value_and_grad(...)) over jax.nn.dot_product_attention
#   usage: attention_peers.py REPS T [T ...]
# Prints:  torch_attention T=<T> causal=<c> ms: <median> (min <min>)
#          jax_attention   T=<T> causal=<c> ms: <median> (min <min>)
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import torch

reps = int(sys.argv[1])
ts = [int(t) for t in sys.argv[2:]] or [256, 1024, 4096]
torch.set_num_threads(1)
B, H, D = 1, 4, 64
print(f"torch {torch.__version__}, jax {jax.__version__} ({jax.devices()[0].platform}), one thread")


def median_min(f):
    f()  # warm-up (and compilation for jax)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


for T in ts:
    rng = np.random.default_rng(0)
    q, k, v, w = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(4))
    for causal in (False, True):
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        tw = torch.tensor(w)

        def torch_step():
            for t in (tq, tk, tv):
                t.grad = None
            loss = (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal) * tw).sum()
            loss.backward()
            return loss

        med, mn = median_min(torch_step)
        print(f"torch_attention T={T} causal={int(causal)} ms: {med:.3f} (min {mn:.3f}) loss: {torch_step().item():.6g}")

        # jax.nn.dot_product_attention reads (B, T, H, D).
        jq, jk, jv, jw = (jnp.asarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v, w))

        def loss_fn(a, b, c):
            return (jax.nn.dot_product_attention(a, b, c, is_causal=causal) * jw).sum()

        vg = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))

        def jax_step():
            val, grads = vg(jq, jk, jv)
            jax.block_until_ready(grads)
            return val

        med, mn = median_min(jax_step)
        print(f"jax_attention T={T} causal={int(causal)} ms: {med:.3f} (min {mn:.3f}) loss: {float(jax_step()):.6g}")
