#!/usr/bin/env python3
"""Plot metric against time, one line per trial, from weft::tune results files.

    python3 examples/10_tune/plot.py tune_results/asha.json tune_results/grid.json -o tune.png

One panel per results file (its name is the panel's title). Each trial is a
line through its reports (seconds since the search started, metric); the
line ends in a dot for a completed trial, a cross for one the scheduler
stopped, and is dashed for one that failed. Needs matplotlib (Debian:
python3-matplotlib).
"""
import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results files (.json) written by tune::search")
    ap.add_argument("-o", "--output", default="tune.png", help="PNG to write (default tune.png)")
    ap.add_argument("--ylabel", default="validation accuracy (%)")
    args = ap.parse_args()

    fig, axes = plt.subplots(1, len(args.results), figsize=(6 * len(args.results), 4.5), squeeze=False,
                             sharey=True)
    for ax, path in zip(axes[0], args.results):
        with open(path) as f:
            res = json.load(f)
        epochs = 0
        for t in res["trials"]:
            reps = [r for r in t["reports"] if r[1] is not None and math.isfinite(r[1])]
            epochs += t["reports"][-1][0] if t["reports"] else 0
            if not reps:
                continue
            xs = [r[2] for r in reps]
            ys = [r[1] for r in reps]
            style = "--" if t["status"] == "failed" else "-"
            line, = ax.plot(xs, ys, style, linewidth=1)
            end = {"completed": "o", "stopped": "x"}.get(t["status"])
            if end:
                ax.plot(xs[-1:], ys[-1:], end, color=line.get_color())
        ax.set_title("%s: %d trials, %d epochs" % (os.path.splitext(os.path.basename(path))[0],
                                                  len(res["trials"]), epochs))
        ax.set_xlabel("seconds since the search started")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(args.ylabel)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
