"""Interop with the PyPI safetensors package (numpy API), run by interop.sh.

  interop.py check-weft FILE      FILE was written by weft (interop_tool write):
                                  every tensor loads, with the values the tool
                                  wrote, and its CRC-32 matches weft's metadata
  interop.py check-ckpt FILE      a weft checkpoint rank file: every tensor loads
                                  and matches its crc32 in __metadata__
  interop.py write FILE           writes tensors for weft to read (interop_tool read)
"""
import sys
import zlib

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def expected():
    # The same values as interop_tool.cpp's expected().
    return {
        "f32": (np.arange(6, dtype=np.float32) * 0.5 - 1).reshape(2, 3),
        "f64": np.array([1e-300, -2.5, 3.141592653589793], dtype=np.float64),
        "i64": np.array([-(2**62), 7, 2**40], dtype=np.int64),
        "i32": np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 12,
        "u8": np.array([0, 255, 7], dtype=np.uint8),
        "f16": np.array([1.5, -0.25], dtype=np.float16),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "scalar": np.array(42.0, dtype=np.float32),
    }


def check_crc(path, f):
    meta = f.metadata() or {}
    for k in f.keys():
        t = f.get_tensor(k)
        want = meta.get("crc32:" + k)
        if want is None:
            sys.exit(f"{path}: tensor '{k}': no crc32 in __metadata__")
        got = "%08x" % (zlib.crc32(np.ascontiguousarray(t).tobytes()) & 0xFFFFFFFF)
        if got != want:
            sys.exit(f"{path}: tensor '{k}': crc32 {got}, weft wrote {want}")


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "check-weft":
        with safe_open(path, framework="np") as f:
            want = expected()
            if sorted(f.keys()) != sorted(want):
                sys.exit(f"{path}: tensors {sorted(f.keys())}, expected {sorted(want)}")
            for k, v in want.items():
                t = f.get_tensor(k)
                if t.dtype != v.dtype or t.shape != v.shape or not np.array_equal(t, v):
                    sys.exit(f"{path}: tensor '{k}': {t.dtype} {t.shape} {t!r}, expected {v.dtype} {v.shape} {v!r}")
            if (f.metadata() or {}).get("written_by") != "weft":
                sys.exit(f"{path}: __metadata__ {f.metadata()} lacks written_by = weft")
            check_crc(path, f)
        print(f"safetensors (python) read {len(want)} tensors from weft's {path}: values equal")
    elif cmd == "check-ckpt":
        with safe_open(path, framework="np") as f:
            check_crc(path, f)
            n = len(f.keys())
        print(f"safetensors (python) read {n} tensors of weft checkpoint file {path}: checksums equal")
    elif cmd == "write":
        save_file(expected(), path, metadata={"written_by": "safetensors"})
        print(f"safetensors (python) wrote {path}")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
