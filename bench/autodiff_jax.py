# The same function as bench_autodiff.cpp under jax.jit(jax.value_and_grad(f)),
# one thread (XLA's CPU backend, no Eigen thread pool).
#   usage: autodiff_jax.py [log2 n = 24] [repeats = 10]
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax
import jax.numpy as jnp

log2n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
n = 1 << log2n
kx, ky = jax.random.split(jax.random.PRNGKey(42))
x = jax.random.normal(kx, (n,), jnp.float32)
y = jax.random.normal(ky, (n,), jnp.float32)


def f(x, y):
    return (jnp.tanh(x * y + jnp.sin(x)) * jnp.exp(-y * y)).sum()


vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
times = []
for r in range(reps + 2):
    t0 = time.perf_counter()
    val, (gx, gy) = vg(x, y)
    jax.block_until_ready((val, gx, gy))
    if r >= 2:
        times.append(time.perf_counter() - t0)
times.sort()
print(f"jax {jax.__version__} jit(value_and_grad) value={float(val):.6g}")
print(f"jax_ms: {times[len(times) // 2] * 1e3:.3f}  (min {times[0] * 1e3:.3f})")
