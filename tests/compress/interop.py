"""The Python side of tests/compress/interop.sh, with the PyPI safetensors package.
check DIR: weft's quantised file holds int8 weights and float32 scales that
follow the per-channel symmetric rule for the f32 weights beside it.
write FILE: a quantised model in weft's layout, written by safetensors; prints
the per-layer line interop_tool's `read` must print."""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def check(d):
    q = load_file(f"{d}/mlp_int8.safetensors")
    f = load_file(f"{d}/f32.safetensors")
    assert sorted(q) == sorted(["l1.weight", "l1.weight_scale", "l1.input_scale", "l1.bias",
                                "l2.weight", "l2.weight_scale", "l2.input_scale"]), sorted(q)
    for name in ("l1", "l2"):
        w, s = q[f"{name}.weight"], q[f"{name}.weight_scale"]
        assert w.dtype == np.int8 and s.dtype == np.float32, (w.dtype, s.dtype)
        ref = f[f"{name}.weight"]
        assert w.shape == ref.shape and s.shape == (ref.shape[1],)
        want_s = np.abs(ref).max(axis=0) / np.float32(127)
        assert np.array_equal(s, want_s.astype(np.float32)), (s, want_s)
        want_q = np.clip(np.round(ref / s), -127, 127).astype(np.int8)  # numpy rounds half to even too
        # weft multiplies by 1/s; a value on a rounding boundary may land either side: allow 1 step there.
        diff = np.abs(w.astype(np.int32) - want_q.astype(np.int32))
        assert diff.max() <= 1 and (diff == 1).sum() <= 1, diff
        assert (np.abs(w).max(axis=0) == 127).all()
    assert np.array_equal(q["l1.bias"], f["l1.bias"])
    assert q["l1.input_scale"].dtype == np.float32 and q["l1.input_scale"][0] == np.float32(0.03)
    print("check: ok")


def write(path):
    rng = np.random.default_rng(5)
    t, lines = {}, []
    for name, (i, o), bias in (("a", (8, 5), True), ("b", (5, 2), False)):
        t[f"{name}.weight"] = rng.integers(-127, 128, size=(i, o), dtype=np.int8)
        t[f"{name}.weight_scale"] = rng.uniform(0.01, 0.1, size=o).astype(np.float32)
        t[f"{name}.input_scale"] = np.array([0.5], dtype=np.float32)
        bsum = 0.0
        if bias:
            t[f"{name}.bias"] = rng.normal(size=o).astype(np.float32)
            bsum = float(t[f"{name}.bias"].astype(np.float64).sum())
        ssum = float(t[f"{name}.weight_scale"].astype(np.float64).sum())
        lines.append(f"{name} {i} {o} {int(t[f'{name}.weight'].astype(np.int64).sum())} {ssum:.9g} 0.5 {bsum:.9g}")
    save_file(t, path, metadata={"weft.format": "compress.int8", "weft.layers": "a,b"})
    print("\n".join(lines))


if __name__ == "__main__":
    {"check": check, "write": write}[sys.argv[1]](sys.argv[2])
