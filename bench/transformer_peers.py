# One training step (forward, backward, AdamW) of a pre-LN transformer block
# stack, in PyTorch eager, PyTorch 2 torch.compile and JAX jit, interleaved
# with weft's bench_transformer (driven over a pipe), one thread each.
#   usage: transformer_peers.py WEFT_BINARY [REPEATS=7] [STEPS=5]
# Model (bench/bench_transformer.cpp builds the same): x (B, T, C); per block
#   x = x + proj(attn(split_heads(ln1(x) @ Wqkv + bqkv), causal))
#   x = x + gelu(ln2(x) @ W1 + b1) @ W2 + b2           (exact GELU, MLP 4C)
# loss = mean((x - target)^2); AdamW(lr 1e-3, betas 0.9/0.999, eps 1e-8, wd 0.01).
# Weights (I, O) layout, x @ W; initial values from one formula shared with
# weft (init_value), so the first losses must agree.
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

B, T, C, H, L = 32, 64, 128, 4, 2
D = C // H
LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01


def init_params():
    # Registration order per block: ln1.w ln1.b qkv.w qkv.b proj.w proj.b ln2.w ln2.b fc1.w fc1.b fc2.w fc2.b
    shapes = []
    for _ in range(L):
        shapes += [("ln", (C,)), ("lnb", (C,)), ("w", (C, 3 * C)), ("b", (3 * C,)), ("w", (C, C)), ("b", (C,)),
                   ("ln", (C,)), ("lnb", (C,)), ("w", (C, 4 * C)), ("b", (4 * C,)), ("w", (4 * C, C)), ("b", (C,))]
    params = []
    for p, (kind, shape) in enumerate(shapes):
        n = int(np.prod(shape))
        i = np.arange(n, dtype=np.float64)
        if kind == "ln":
            a = np.ones(n)
        elif kind == "lnb":
            a = np.zeros(n)
        elif kind == "w":
            a = np.sin(0.37 * i + 1.1 * p) / math.sqrt(shape[0])
        else:
            a = 0.01 * np.sin(0.11 * i + p)
        params.append(a.astype(np.float32).reshape(shape))
    n = B * T * C
    i = np.arange(n, dtype=np.float64)
    x = np.sin(0.013 * i).astype(np.float32).reshape(B, T, C)
    y = np.cos(0.017 * i).astype(np.float32).reshape(B, T, C)
    return params, x, y


def torch_runner(compiled):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    params0, x0, y0 = init_params()
    ps = [torch.tensor(a, requires_grad=True) for a in params0]
    x, y = torch.tensor(x0), torch.tensor(y0)
    opt = torch.optim.AdamW(ps, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)

    def loss_fn(ps, x, y):
        for l in range(L):
            g1, b1, wqkv, bqkv, wp, bp, g2, b2, w1, bb1, w2, bb2 = ps[12 * l:12 * l + 12]
            h = F.layer_norm(x, (C,), g1, b1, 1e-5)
            q, k, v = (h @ wqkv + bqkv).split(C, dim=-1)
            q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + o @ wp + bp
            h = F.layer_norm(x, (C,), g2, b2, 1e-5)
            x = x + F.gelu(h @ w1 + bb1) @ w2 + bb2
        return ((x - y) ** 2).mean()

    f = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = f(ps, x, y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, torch.__version__


def jax_runner():
    import jax
    import jax.numpy as jnp

    params0, x0, y0 = init_params()

    def layer_norm(x, g, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(v + 1e-5) * g + b

    def loss_fn(ps, x, y):
        for l in range(L):
            g1, b1, wqkv, bqkv, wp, bp, g2, b2, w1, bb1, w2, bb2 = ps[12 * l:12 * l + 12]
            h = layer_norm(x, g1, b1)
            q, k, v = jnp.split(h @ wqkv + bqkv, 3, axis=-1)
            q, k, v = (t.reshape(B, T, H, D) for t in (q, k, v))  # jax.nn.dot_product_attention reads (B, T, H, D)
            o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, T, C)
            x = x + o @ wp + bp
            h = layer_norm(x, g2, b2)
            x = x + jax.nn.gelu(h @ w1 + bb1, approximate=False) @ w2 + bb2
        return ((x - y) ** 2).mean()

    @jax.jit
    def train_step(ps, m, v, t, x, y):
        loss, g = jax.value_and_grad(loss_fn)(ps, x, y)
        t = t + 1
        bc1, bc2 = 1 - B1 ** t, 1 - B2 ** t
        new_p, new_m, new_v = [], [], []
        for p, gi, mi, vi in zip(ps, g, m, v):
            mi = B1 * mi + (1 - B1) * gi
            vi = B2 * vi + (1 - B2) * gi * gi
            p = p * (1 - LR * WD) - (LR / bc1) * mi / (jnp.sqrt(vi) / jnp.sqrt(bc2) + EPS)
            new_p.append(p)
            new_m.append(mi)
            new_v.append(vi)
        return loss, new_p, new_m, new_v, t

    state = {"p": [jnp.asarray(a) for a in params0], "m": [jnp.zeros_like(jnp.asarray(a)) for a in params0],
             "v": [jnp.zeros_like(jnp.asarray(a)) for a in params0], "t": jnp.float32(0)}
    x, y = jnp.asarray(x0), jnp.asarray(y0)

    def step():
        loss, state["p"], state["m"], state["v"], state["t"] = train_step(state["p"], state["m"], state["v"], state["t"], x, y)
        return float(loss)  # (waits for the step)

    return step, jax.__version__


class WeftRunner:
    def __init__(self, binary):
        self.p = subprocess.Popen([binary, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().split()

    def steps(self, n):  # -> per-step ms list, last loss
        r = self.ask(f"steps {n}")
        return [float(t) for t in r[1:-1]], float(r[-1])


def main():
    binary = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    print(f"config: B={B} T={T} C={C} heads={H} blocks={L} MLP={4 * C} causal, float32, AdamW, one thread")
    runners = {}
    weft = WeftRunner(binary)
    runners["weft"] = None
    try:
        runners["torch_eager"] = torch_runner(False)
    except Exception as e:  # noqa: BLE001
        print(f"torch eager: unavailable ({e})")
    try:
        runners["torch_compile"] = torch_runner(True)
    except Exception as e:  # noqa: BLE001
        print(f"torch.compile: unavailable ({e})")
    try:
        runners["jax_jit"] = jax_runner()
    except Exception as e:  # noqa: BLE001
        print(f"jax: unavailable ({e})")
    # The first three losses from the shared initial weights must agree.
    first = {}
    _, first["weft"] = None, [float(weft.ask("steps 1")[-1]) for _ in range(3)]
    for name in list(runners):
        if name == "weft":
            continue
        step, ver = runners[name]
        try:
            first[name] = [step() for _ in range(3)]  # (torch.compile and jit compile here)
            print(f"{name} ({ver}) losses: " + " ".join(f"{v:.6f}" for v in first[name]))
        except Exception as e:  # noqa: BLE001
            print(f"{name}: failed ({type(e).__name__}: {e})")
            del runners[name]
    print("weft losses: " + " ".join(f"{v:.6f}" for v in first["weft"]))
    for name in runners:
        if name != "weft":
            ok = all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(first["weft"], first[name]))
            print(f"losses_agree_{name}: {'yes' if ok else 'NO'}")
    times = {n: [] for n in runners}
    for r in range(reps):  # interleaved: every framework once per repeat
        for name in runners:
            if name == "weft":
                ts, _ = weft.steps(steps)
                times[name] += ts
            else:
                step = runners[name][0]
                for _ in range(steps):
                    t0 = time.perf_counter()
                    step()
                    times[name].append((time.perf_counter() - t0) * 1e3)
    med = {}
    for name, ts in times.items():
        ts.sort()
        med[name] = ts[len(ts) // 2]
        print(f"{name}_step_ms: {med[name]:.3f} (min {ts[0]:.3f}, {len(ts)} steps)")
    # The roofline (bench_transformer.cpp): the step's matrix-product FLOPs at
    # the best FMA rate measured on this core, with nothing else taking time.
    _, flops, fma_median, fma_best = weft.ask("roofline")
    flops, fma_median, fma_best = float(flops), float(fma_median), float(fma_best)
    floor = 1e3 * flops / fma_best
    weft.ask("quit")
    print(f"roofline: {flops / 1e9:.3f} GFLOP of matrix products per step; one core's FMA rate {fma_median / 1e9:.1f} "
          f"GFLOP/s median, {fma_best / 1e9:.1f} best; floor {floor:.2f} ms (every product at the best rate, nothing else)")
    for name in med:
        print(f"{name}_products_gflops: {flops / med[name] / 1e6:.1f} ({100 * floor / med[name]:.0f}% of the best FMA rate)")
    if "torch_eager" in med:
        print(f"transformer_step_vs_torch_eager_ceiling: {med['torch_eager'] / floor:.2f} "
              "(the highest transformer_step_vs_torch_eager any implementation could reach on this core)")
        print(f"transformer_step_vs_torch_eager: {med['torch_eager'] / med['weft']:.2f}")
    peers = [med[n] for n in med if n != "weft"]
    if peers:
        print(f"transformer_step_vs_best_peer_ceiling: {min(peers) / floor:.2f}")
        print(f"transformer_step_vs_best_peer: {min(peers) / med['weft']:.2f}")


if __name__ == "__main__":
    main()
