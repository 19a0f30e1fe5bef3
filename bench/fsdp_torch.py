# PyTorch's peers of bench_zero on the CPU: DDP and FSDP (FULL_SHARD, i.e.
# ZeRO-3; SHARD_GRAD_OP, i.e. ZeRO-2) with gloo, on the MLP 784-256-256-10
# (ReLU, cross-entropy, Adam lr 1e-3, global batch 128 over the ranks, random
# data, one thread per process), each layer its own FSDP unit as weft's
# Zero makes each layer a unit.
#   usage: python fsdp_torch.py ddp|full_shard|shard_grad_op [ranks = 2] [seconds = 3]
# Prints "torch_<mode>_<ranks>_samples_per_s: X", or "torch_<mode>_error: ..."
# naming why this torch cannot run it.
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def wrap(m, mode):
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(m)
    # FSDP2 (fully_shard) where it exists, else FSDP1 with a CPU device.
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
        reshard = mode == "full_shard"
        for layer in m:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, reshard_after_forward=reshard)
        fully_shard(m, reshard_after_forward=reshard)
        return m
    except ImportError:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        strategy = ShardingStrategy.FULL_SHARD if mode == "full_shard" else ShardingStrategy.SHARD_GRAD_OP
        return FSDP(m, sharding_strategy=strategy, device_id=torch.device("cpu"),
                    auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}))


def worker(rank, ranks, mode, seconds, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    try:
        net = wrap(model(), mode)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        batch = 128 // ranks
        g = torch.Generator().manual_seed(100 + rank)
        x = torch.rand(4096, 784, generator=g)
        y = torch.randint(0, 10, (4096,), generator=g)
        loss_fn = torch.nn.CrossEntropyLoss()
        pos = [0]

        def step():
            if pos[0] + batch > 4096:
                pos[0] = 0
            xb, yb = x[pos[0]:pos[0] + batch], y[pos[0]:pos[0] + batch]
            pos[0] += batch
            opt.zero_grad(set_to_none=True)
            loss_fn(net(xb), yb).backward()
            opt.step()

        for _ in range(5):
            step()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(10):
            step()
        probe = torch.tensor([(time.perf_counter() - t0) / 10])
        dist.broadcast(probe, 0)
        steps = int(seconds / probe.item()) + 1
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dist.barrier()
        secs = time.perf_counter() - t0
        if rank == 0:
            out.put(f"torch_{mode}_{ranks}_samples_per_s: {steps * batch * ranks / secs:.0f}")
    except Exception as e:  # report why, on one line
        if rank == 0:
            out.put(f"torch_{mode}_error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        dist.destroy_process_group()


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "full_shard"
    ranks = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    port = 29500 + (os.getpid() % 1000)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(worker, args=(ranks, mode, seconds, port, out), nprocs=ranks, join=True)
    print(out.get(timeout=5))


if __name__ == "__main__":
    main()
