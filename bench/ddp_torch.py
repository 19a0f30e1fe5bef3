# PyTorch DDP (gloo) peer for bench_dp: MLP 784-256-256-10, ReLU, cross-entropy,
# Adam lr 1e-3, global batch 128 split over the processes, one thread each,
# random data. Prints global samples/s.
#   usage: ddp_torch.py [processes = 2] [seconds = 3]
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_mlp import Batches, mlp, random_data


def worker(rank, world, seconds, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)
    batch = 128 // world
    batches = Batches(random_data(4096), batch)
    torch.manual_seed(1)
    ddp = torch.nn.parallel.DistributedDataParallel(mlp())
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        x, y = batches.next()
        opt.zero_grad()
        lossf(ddp(x), y).backward()
        opt.step()

    for _ in range(10):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    probe = torch.tensor([(time.perf_counter() - t0) / 20])
    dist.broadcast(probe, 0)
    steps = int(seconds / probe.item()) + 1
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:
        out.put(steps * batch * world / secs)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=worker, args=(r, world, seconds, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    sps = q.get()
    for p in procs:
        p.join()
    print(f"torch {torch.__version__} DDP gloo, {world} processes: {sps:.0f} samples/s")
    print(f"torch_ddp_{world}_samples_per_s: {sps:.0f}")
