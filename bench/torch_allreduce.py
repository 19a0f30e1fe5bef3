#!/usr/bin/python3
"""torch.distributed allreduce (gloo backend) over loopback, measured as
weft-bench measures: per-iteration time of the slowest rank, algbw, busbw
(2(p-1)/p), p50/p99. A peer for bench/compare_collectives.sh.

    /usr/bin/python3 bench/torch_allreduce.py --np 2 -b 8 -e 256M -f 2 --csv torch.csv
"""
import argparse
import math
import os
import socket
import sys
import time


def parse_size(text):
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    num = text.rstrip("KMG")
    suffix = text[len(num):]
    try:
        return int(float(num) * mult[suffix])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size like 8, 64K, 1M or 2G, got '{text}'")


def sizes(lo, hi, factor):
    s = max(lo, 4)
    while s <= hi:
        yield s
        s = max(s + 1, int(math.ceil(s * factor)))


def rank_main(rank, args, port, queue):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.np)
    p = args.np
    rows = []
    for size in sizes(args.minbytes, args.maxbytes, args.stepfactor):
        count = size // 4
        if count == 0:
            continue
        nbytes = count * 4
        iters = max(3, min(args.iters, args.bytes_budget // nbytes))
        t = torch.ones(count, dtype=torch.float32)
        for _ in range(min(args.warmup, max(1, iters // 2))):
            dist.all_reduce(t)
        dist.barrier()
        times = torch.zeros(iters, dtype=torch.float64)
        for k in range(iters):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times[k] = time.perf_counter() - t0
        t.fill_(1.0)
        dist.all_reduce(t)
        wrong = int((t != float(p)).sum())
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        ts = sorted(times.tolist())
        mean = sum(ts) / iters
        p50 = ts[min(iters - 1, math.ceil(0.5 * iters) - 1)]
        p99 = ts[min(iters - 1, math.ceil(0.99 * iters) - 1)]
        algbw = nbytes / mean / 1e9
        busbw = algbw * 2 * (p - 1) / p
        if rank == 0:
            print(f"{nbytes:12d} {count:12d} {mean * 1e6:10.2f} {algbw:8.3f} {busbw:8.3f} "
                  f"{p50 * 1e6:10.2f} {p99 * 1e6:10.2f} {wrong:6d}", flush=True)
        rows.append((nbytes, count, mean * 1e6, p50 * 1e6, p99 * 1e6, algbw, busbw, wrong))
    dist.destroy_process_group()
    if rank == 0:
        queue.put(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("-b", "--minbytes", type=parse_size, default=8)
    ap.add_argument("-e", "--maxbytes", type=parse_size, default=32 << 20)
    ap.add_argument("-f", "--stepfactor", type=float, default=2)
    ap.add_argument("-n", "--iters", type=int, default=20)
    ap.add_argument("-w", "--warmup", type=int, default=5)
    ap.add_argument("--bytes-budget", type=parse_size, default=2 << 30)
    ap.add_argument("--csv")
    args = ap.parse_args()
    if args.np < 1 or args.stepfactor <= 1:
        ap.error("--np must be >= 1 and -f > 1")

    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"# torch.distributed (gloo) {args.np} ranks, f32 sum allreduce (in place)")
    print(f"# {'size(B)':>10} {'count':>12} {'time(us)':>10} {'algbw':>8} {'busbw':>8} {'p50(us)':>10} "
          f"{'p99(us)':>10} {'#wrong':>6}", flush=True)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=rank_main, args=(r, args, port, queue)) for r in range(args.np)]
    for pr in procs:
        pr.start()
    rows = queue.get()
    for pr in procs:
        pr.join()
    if any(pr.exitcode != 0 for pr in procs):
        sys.exit("torch_allreduce: a rank failed")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("impl,transport,algo,op,type,redop,root,ranks,size,count,placement,time_us,p50_us,p99_us,"
                    "algbw_GBps,busbw_GBps,wrong,pred_us,skew_us,last_rank,auto_choice\n")
            for nbytes, count, mean, p50, p99, algbw, busbw, wrong in rows:
                f.write(f"torch,gloo,default,allreduce,f32,sum,-1,{args.np},{nbytes},{count},ip,{mean},{p50},{p99},"
                        f"{algbw},{busbw},{wrong},,,,\n")
    if any(r[-1] for r in rows):
        sys.exit("torch_allreduce: wrong results")


if __name__ == "__main__":
    main()
