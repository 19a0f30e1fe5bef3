# The bench_training.cpp model under PyTorch eager, one thread: MLP
# 784-256-256-10, ReLU, cross-entropy, Adam lr 1e-3, batch 128 and 512.
#   usage: training_torch.py [seconds per batch size = 3]
import sys
import time

import torch

from torch_mlp import Batches, mlp, random_data

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
torch.set_num_threads(1)
torch.manual_seed(7)
data = random_data(8192)
for batch in (128, 512):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()
    batches = Batches(data, batch)

    def step():
        x, y = batches.next()
        opt.zero_grad(set_to_none=False)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(10):
        step()
    steps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        last = step()
        steps += 1
    t = time.perf_counter() - t0
    print(f"torch {torch.__version__} batch {batch}: {steps * batch / t:.0f} samples/s  ({1e3 * t / steps:.3f} ms/step, loss {last:.3f})")
    print(f"torch_samples_per_s_batch{batch}: {steps * batch / t:.0f}")
