"""The PyPI safetensors package's save_file (numpy), and torch.save when torch
imports, on tensors of the same sizes as bench_checkpoint, each followed by
fsync like weft's save. Prints <name>_GBps: X lines.
  checkpoint_peer.py MIB DIR"""
import os
import sys
import time

import numpy as np


def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main():
    mib, d = int(sys.argv[1]), sys.argv[2]
    os.makedirs(d, exist_ok=True)
    n = max(1, mib // 16)
    ts = {f"w{i}": np.random.default_rng(i).random(4 << 20, dtype=np.float32) for i in range(n)}
    nbytes = sum(t.nbytes for t in ts.values())
    from safetensors.numpy import save_file
    p = os.path.join(d, "st.safetensors")
    t0 = time.perf_counter()
    save_file(ts, p)
    fsync(p)
    print(f"safetensors_numpy_save_GBps: {nbytes / (time.perf_counter() - t0) / 1e9:.3f}")
    os.remove(p)
    try:
        import torch
    except ImportError:
        print("torch_save_GBps: n/a (torch not importable here)")
        return
    tt = {k: torch.from_numpy(v) for k, v in ts.items()}
    p = os.path.join(d, "t.pt")
    t0 = time.perf_counter()
    torch.save(tt, p)
    fsync(p)
    print(f"torch_save_GBps: {nbytes / (time.perf_counter() - t0) / 1e9:.3f}")
    os.remove(p)


if __name__ == "__main__":
    main()
