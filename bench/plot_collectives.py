#!/usr/bin/python3
"""Plots and summaries of collective benchmarks: reads the CSV/JSON that
weft-bench (--csv/--json), gloo_bench (--csv) and torch_allreduce.py (--csv)
write, all with the same columns.

    # PNG of busbw against size, one line per implementation/transport/algorithm
    /usr/bin/python3 bench/plot_collectives.py weft.csv gloo.csv torch.csv -o busbw.png
    # the table and ratio lines bench/compare_collectives.sh prints
    /usr/bin/python3 bench/plot_collectives.py --summary --memcpy 10.5 weft.csv mpi.csv gloo.csv torch.csv

Peers (Gloo, torch.distributed) run in place, so comparisons use the in-place
rows of every implementation unless --placement oop is given.
"""
import argparse
import csv
import json
import math
import sys
from collections import defaultdict

MiB = 1 << 20


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            if path.endswith(".json"):
                data = json.load(f)
                items = data["rows"] if isinstance(data, dict) else data
            else:
                items = list(csv.DictReader(f))
        for r in items:
            r = {k: ("" if v is None else v) for k, v in r.items()}
            for k in ("size", "count", "ranks"):
                r[k] = int(r[k])
            for k in ("time_us", "p50_us", "busbw_GBps", "algbw_GBps"):
                r[k] = float(r[k])
            rows.append(r)
    return rows


def series_name(r):
    return f"{r['impl']}:{r['transport']}:{r['algo']}"


def by_series(rows, op, placement):
    s = defaultdict(dict)
    for r in rows:
        if r["op"] != op or r["placement"] != placement:
            continue
        s[series_name(r)][r["size"]] = r
    return s


def fmt_size(b):
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if b >= scale and b % scale == 0:
            return f"{b // scale}{unit}"
    return f"{b}B"


def plot(rows, out, placement):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in rows if r["op"] != "barrier"})
    fig, axes = plt.subplots(len(ops), 1, figsize=(9, 5 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        pl = placement
        series = sorted(by_series(rows, op, pl).items())
        colors = plt.get_cmap("tab20")
        # line style tells the implementation/transport apart, colour the algorithm
        styles = {"weft:threads": "-", "weft:mpi": "-.", "gloo": "--", "torch": ":"}
        for i, (name, pts) in enumerate(series):
            xs = sorted(pts)
            style = next((v for k, v in styles.items() if name.startswith(k)), "-")
            ax.plot(xs, [pts[x]["busbw_GBps"] for x in xs], linestyle=style, color=colors(i % 20), marker="o",
                    markersize=3, label=name)
        # peers only have in-place rows: add them when plotting out-of-place
        if pl == "oop":
            for name, pts in sorted(by_series(rows, op, "ip").items()):
                if name.startswith("weft:"):
                    continue
                xs = sorted(pts)
                ax.plot(xs, [pts[x]["busbw_GBps"] for x in xs], linestyle="--", marker="x", markersize=3,
                        label=name + " (in place)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ranks = sorted({r["ranks"] for r in rows if r["op"] == op})
        ax.set_title(f"{op}, {'/'.join(map(str, ranks))} ranks ({'in place' if pl == 'ip' else 'out of place'})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def best(series, size, keep):
    vals = [(pts[size]["busbw_GBps"], name) for name, pts in series.items() if keep(name) and size in pts]
    return max(vals) if vals else (float("nan"), "")


def summary(rows, memcpy, placement):
    s = by_series(rows, "allreduce", placement)
    if not s:
        sys.exit("plot_collectives: no allreduce rows")
    names = sorted(s)
    all_sizes = sorted({x for pts in s.values() for x in pts})
    print(f"# allreduce busbw (GB/s), {'in place' if placement == 'ip' else 'out of place'}")
    for i, n in enumerate(names):
        print(f"#  [{i + 1}] {n}")
    print(f"{'size':>8} " + "".join(f"{'[' + str(i + 1) + ']':>8}" for i in range(len(names))))
    for x in all_sizes:
        cells = "".join(f"{s[n][x]['busbw_GBps']:>8.3f}" if x in s[n] else f"{'-':>8}" for n in names)
        print(f"{fmt_size(x):>8} " + cells)

    weft_thread = lambda n: n.startswith("weft:threads:")
    weft_mpi_own = lambda n: n.startswith("weft:mpi:") and n not in ("weft:mpi:mpi", "weft:mpi:native")
    weft_any = lambda n: weft_thread(n) or weft_mpi_own(n)
    mpi_native = lambda n: n == "weft:mpi:mpi"
    gloo = lambda n: n.startswith("gloo:")
    torch = lambda n: n.startswith("torch:")

    print("\n# ratios of busbw: weft's best policy / the peer's best, per size")
    print(f"{'size':>8} {'weft thread':>12} {'weft mpi':>12} {'MPI_Allr.':>12} {'gloo':>12} {'torch':>12}"
          f" {'mpi/MPI':>8} {'weft/gloo':>10} {'weft/torch':>10}")
    r2, r3, r4 = [], [], []
    for x in all_sizes:
        wt, wm, mn = best(s, x, weft_thread)[0], best(s, x, weft_mpi_own)[0], best(s, x, mpi_native)[0]
        gl, to, wa = best(s, x, gloo)[0], best(s, x, torch)[0], best(s, x, weft_any)[0]
        a, b, c = wm / mn, wa / gl, wa / to
        print(f"{fmt_size(x):>8} {wt:12.3f} {wm:12.3f} {mn:12.3f} {gl:12.3f} {to:12.3f} {a:8.2f} {b:10.2f} {c:10.2f}")
        if MiB <= x <= 64 * MiB:
            r2.append(a)
            r3.append(b)
            r4.append(c)

    def mn_(v):
        v = [x for x in v if not math.isnan(x)]
        return min(v) if v else float("nan")

    bw64, who = best(s, 64 * MiB, weft_thread)
    lat = [(min(r["time_us"] for r in rows if series_name(r) == n and r["op"] == "allreduce" and r["size"] == 8),
            n) for n in names if weft_thread(n) and 8 in s[n]]
    lat = min(lat) if lat else (float("nan"), "")
    print(f"\n# R1 uses {who} at 64 MiB and memcpy {memcpy:.2f} GB/s; L is {lat[1]} (best of in-place/out-of-place)")
    print(f"thread_busbw_vs_memcpy_64MiB: {bw64 / memcpy if memcpy else float('nan'):.2f}")
    print(f"mpi_transport_vs_mpi_native_min_1MiB_64MiB: {mn_(r2):.2f}")
    print(f"weft_vs_gloo_min_1MiB_64MiB: {mn_(r3):.2f}")
    print(f"weft_vs_torch_gloo_min_1MiB_64MiB: {mn_(r4):.2f}")
    print(f"thread_latency_8B_us: {lat[0]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="CSV or JSON files (weft-bench, gloo_bench, torch_allreduce.py)")
    ap.add_argument("-o", "--output", default="collectives_busbw.png", help="PNG to write")
    ap.add_argument("--summary", action="store_true", help="print the busbw table and ratio lines instead of plotting")
    ap.add_argument("--memcpy", type=float, default=0.0, help="memcpy GB/s measured in the same run (for R1)")
    ap.add_argument("--placement", choices=("ip", "oop"), default="ip", help="in-place (default) or out-of-place rows")
    args = ap.parse_args()
    rows = load(args.files)
    if args.summary:
        summary(rows, args.memcpy, args.placement)
    else:
        plot(rows, args.output, args.placement)


if __name__ == "__main__":
    main()
