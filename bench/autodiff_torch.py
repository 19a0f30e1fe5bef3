# The same function as bench_autodiff.cpp under PyTorch eager, one thread.
#   usage: autodiff_torch.py [log2 n = 24] [repeats = 10]
import sys
import time

import torch

log2n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.set_num_threads(1)
torch.manual_seed(42)
n = 1 << log2n
x = torch.randn(n, requires_grad=True)
y = torch.randn(n, requires_grad=True)
times = []
for r in range(reps + 2):
    t0 = time.perf_counter()
    x.grad = None
    y.grad = None
    f = (torch.tanh(x * y + torch.sin(x)) * torch.exp(-y * y)).sum()
    f.backward()
    if r >= 2:
        times.append(time.perf_counter() - t0)
times.sort()
print(f"torch {torch.__version__} eager value={f.item():.6g}")
print(f"torch_ms: {times[len(times) // 2] * 1e3:.3f}  (min {times[0] * 1e3:.3f})")
