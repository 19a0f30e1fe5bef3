"""One training step on the GPU, weft against PyTorch on the same GPU, in one run.

Models (the same weights: weft writes its initial parameters, PyTorch loads them):
  mlp  784-256-256-10, ReLU, cross-entropy (bench/mlp.hpp)      batch 256
  vit  examples/05_vit's ViT: 49 patch tokens of 16 pixels, width 64, 4 heads,
       3 pre-LN blocks (MLP 128, exact GELU), final LayerNorm, mean pool, head
                                                                  batch 128
A step is forward, backward and AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8,
weight decay 0.01) on one fixed batch of deterministic inputs. PyTorch runs
eager with its fused AdamW and, where it works, under torch.compile; the
contenders alternate, three rounds, each the median of 20 timings of 10 steps
(CUDA events). The losses of the first steps are compared.

Prints, per model, ms per step and the ratios, then
  gpu_step_vs_torch_<model>: R   (best PyTorch ms / weft ms)
  gpu_step_vs_torch: R           (the smaller of the two; issue 20's target >= 1.5)

usage: python3 bench/gpu_step_torch.py BUILD_DIR (holding gpu_step) or the gpu_step binary
(scripts/test-gpu.sh runs it with its build directory).
"""
import os
import statistics
import struct
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

ROUNDS, REPEATS, ITERS = 3, 20, 10
CONFIG = {"mlp": 256, "vit": 128}


def read_params(path):
    """weft's dump: per parameter u32 name length, name, u32 rank, i64 dims, float32 values."""
    out = {}
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        at += 4
        name = data[at:at + n].decode()
        at += n
        (rank,) = struct.unpack_from("<I", data, at)
        at += 4
        dims = struct.unpack_from("<%dq" % rank, data, at)
        at += 8 * rank
        count = 1
        for d in dims:
            count *= d
        t = torch.frombuffer(bytearray(data[at:at + 4 * count]), dtype=torch.float32).reshape(dims)
        at += 4 * count
        out[name] = t.cuda().requires_grad_(True)
    return out


def inputs(model, batch):
    """The batch weft builds (bench/gpu_step.cu): x_i = ((i * 2654435761) mod 2^32) / 2^32, labels (7 b) mod 10."""
    shape = (batch, 784) if model == "mlp" else (batch, 49, 16)
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 2654435761) % 4294967296).to(torch.float64) / 4294967296.0
    y = (torch.arange(batch, dtype=torch.int64) * 7) % 10
    return x.to(torch.float32).reshape(shape).cuda(), y.cuda()


def affine(x, p, name):  # weft's Linear: x @ W (in, out) + b
    return x @ p[name + ".weight"] + p[name + ".bias"]


def layer_norm(x, p, name):
    return F.layer_norm(x, (x.shape[-1],), p[name + ".weight"], p[name + ".bias"], 1e-5)


def block(x, p, name, heads=4):
    n, t, c = x.shape
    dh = c // heads
    qkv = affine(layer_norm(x, p, name + ".ln1"), p, name + ".attn.qkv")
    q, k, v = (part.reshape(n, t, heads, dh).permute(0, 2, 1, 3) for part in qkv.chunk(3, dim=-1))
    a = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).reshape(n, t, c)
    x = x + affine(a, p, name + ".attn.proj")
    h = F.gelu(affine(layer_norm(x, p, name + ".ln2"), p, name + ".fc1"))
    return x + affine(h, p, name + ".fc2")


def loss_fn(model, p, x, y):
    if model == "mlp":
        h = torch.relu(affine(x, p, "l1"))
        h = torch.relu(affine(h, p, "l2"))
        return F.cross_entropy(affine(h, p, "l3"), y)
    h = affine(x, p, "embed.proj") + p["pos.weight"]
    for b in ("block1", "block2", "block3"):
        h = block(h, p, b)
    h = layer_norm(h, p, "norm").mean(dim=1)
    return F.cross_entropy(affine(h, p, "head"), y)


def torch_contender(model, batch, dump, compiled):
    p = read_params(dump)
    x, y = inputs(model, batch)
    opt = torch.optim.AdamW(list(p.values()), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)
    f = torch.compile(loss_fn, static_argnums=(0,)) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = f(model, p, x, y)
        loss.backward()
        opt.step()
        return loss

    losses = [step().item() for _ in range(3)]
    return step, losses


def time_ms(step):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(REPEATS):
        a.record()
        for _ in range(ITERS):
            step()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / ITERS)
    return statistics.median(ts)


def run_weft(binary, model, batch, dump):
    r = subprocess.run([binary, model, str(batch), "--dump", dump], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit("%s failed (exit %d):\n%s%s" % (binary, r.returncode, r.stdout, r.stderr))
    ms, losses, allocs = None, None, None
    for line in r.stdout.splitlines():
        if line.startswith("step_ms_median:"):
            ms = float(line.split()[1])
        elif line.startswith("losses:"):
            losses = [float(v) for v in line.split()[1:]]
        elif line.startswith("device_allocations_after_first_step:"):
            allocs = line.split(":", 1)[1].strip()
    return ms, losses, allocs


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    if os.path.isdir(binary):
        binary = os.path.join(binary, "gpu_step")
    print("PyTorch %s on %s" % (torch.__version__, torch.cuda.get_device_name()))
    ratios = {}
    for model, batch in CONFIG.items():
        dump = os.path.join(tempfile.mkdtemp(), model + ".bin")
        _, wlosses, allocs = run_weft(binary, model, batch, dump)
        eager, tlosses = torch_contender(model, batch, dump, compiled=False)
        print("%s batch %d: first losses weft %s, PyTorch %s; weft device allocations after the first step: %s"
              % (model, batch, ["%.5f" % v for v in wlosses], ["%.5f" % v for v in tlosses], allocs))
        agree = all(abs(a - b) <= 2e-3 * max(1.0, abs(b)) for a, b in zip(wlosses, tlosses))
        print("  losses agree within 2e-3: %s" % ("yes" if agree else "NO"))
        try:
            comp, _ = torch_contender(model, batch, dump, compiled=True)
            comp()
        except Exception as e:  # torch.compile needs a working Triton toolchain
            print("  torch.compile unavailable: %s" % str(e).splitlines()[0][:120])
            comp = None
        w, te, tc = [], [], []
        for _ in range(ROUNDS):
            w.append(run_weft(binary, model, batch, dump)[0])
            te.append(time_ms(eager))
            if comp:
                tc.append(time_ms(comp))
        wm, em = statistics.median(w), statistics.median(te)
        cm = statistics.median(tc) if tc else float("inf")
        best = min(em, cm)
        print("  ms/step: weft %.3f, PyTorch eager %.3f, torch.compile %s" % (wm, em, "%.3f" % cm if tc else "-"))
        ratios[model] = best / wm
        print("gpu_step_vs_torch_%s: %.2f" % (model, ratios[model]))
    print("gpu_step_vs_torch: %.2f" % min(ratios.values()))


if __name__ == "__main__":
    main()
