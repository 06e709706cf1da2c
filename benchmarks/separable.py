"""The separable benchmark: a depthwise-separable convolution against the standard one it replaces,
counted exactly and timed on the clock.

Each row is one layer: M input channels, N output channels, a D_K x D_K kernel, a D_F x D_F input
and a stride. The rows are a grid (M and N from 8 to 1024, D_K 3/5/7, stride 1 and 2) plus every
separable layer of MobileNetV1 and V2 at 1.0-224, taken from the graphs (the depthwise node and
the pointwise node after it). For each row:

- MACs are counted by npmobile.cost on two tiny graphs, one standard conv and one depthwise +
  pointwise pair, built with "SAME" padding; the counted ratio is a Fraction and is compared with
  the paper's 1/N + 1/D_K^2 for equality;
- both are timed with npmobile's fast kernels and with torch.nn.functional.conv2d (NCHW,
  groups=M for the depthwise), in the same run: median of --repeats runs after a warm-up that
  also absorbs numba's compile. npmobile and torch are first checked to agree on the output.
  The separable time is the depthwise median plus the pointwise median;
- arithmetic intensity (MACs per byte of float32 moved: input, weights, output, each once) and
  the achieved GFLOP/s of each kernel are written beside, to show why the time ratio departs from
  the MAC ratio (docs/separable.md).

Threads: one core for everyone (npmobile.measure.pin_threads(1): numba, BLAS and OpenMP through
threadpoolctl, torch.set_num_threads, and the environment).

    python benchmarks/separable.py [--quick] [--repeats 5] [--save | --out DIR]

prints the headline figures; --save writes into benchmarks/results (the committed results that
docs/separable.md quotes: never overwritten unless asked), --out DIR elsewhere: separable.csv
(one row per layer), separable.png (predicted vs measured ratio, log-log; achieved GFLOP/s against
arithmetic intensity) and separable.json (machine, threads, headline medians quoted by the README). --quick runs a handful of rows in seconds (for the tests).
"""

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from npmobile import cost
from npmobile.graph import Builder, Graph, pad_same
from npmobile.kernels import KERNELS
from npmobile.architectures import mobilenet_v1, mobilenet_v2
from npmobile.io._common import to_torch
from npmobile.measure import median_time, pin_threads

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = (8, 32, 128, 512, 1024)
# Feature-map side per widest channel count, as in MobileNet (wide layers sit on small maps), so
# that the largest standard conv stays a few GMACs and the whole run a few minutes.
FEATURE_SIDE = {8: 56, 32: 56, 128: 28, 512: 14, 1024: 7}


# --- the layers --------------------------------------------------------------------------------

def grid_rows(channels=CHANNELS, kernels=(3, 5, 7), strides=(1, 2)):
    """(source, name, M, N, D_K, D_F, stride) for every combination."""
    return [("grid", f"M{m}_N{n}_k{k}_s{s}", m, n, k, FEATURE_SIDE[max(m, n)], s)
            for m in channels for n in channels for k in kernels for s in strides]


def mobilenet_rows():
    """Every separable layer of MobileNetV1 and V2 at 1.0-224: a depthwise node and the first
    pointwise node after it (V1: conv_dw_i -> conv_pw_i; V2: block_i_depthwise -> block_i_project)."""
    rows = []
    for source, graph in (("mobilenet_v1", mobilenet_v1()), ("mobilenet_v2", mobilenet_v2())):
        shapes = {"input": graph.input_shape}
        for node in graph.nodes:
            shapes[node.name] = node.shape
        for i, node in enumerate(graph.nodes):
            if node.op != "depthwise_conv2d":
                continue
            pw = next(n for n in graph.nodes[i + 1:] if n.op == "pointwise_conv2d")
            h, _, m = shapes[node.inputs[0]]
            k = node.params["w"][0]
            rows.append((source, f"{node.name}+{pw.name}", m, pw.params["w"][1], k, h, node.attrs["stride"]))
    return rows


def layer_graphs(m, n, k, d_f, stride):
    """Two tiny graphs over the same D_F x D_F x M input: the standard conv, and the separable pair."""
    std = Builder((d_f, d_f, m))
    std.conv2d("conv", n, k, stride, pad_same)
    sep = Builder((d_f, d_f, m))
    sep.depthwise("dw", k, stride, pad_same)
    sep.pointwise("pw", n)
    return Graph(std.nodes, (d_f, d_f, m)), Graph(sep.nodes, (d_f, d_f, m))


def count_row(m, n, k, d_f, stride):
    """Counted MACs (npmobile.cost on the tiny graphs) and the exact ratio, with the paper's terms."""
    std, sep = (cost.count(g) for g in layer_graphs(m, n, k, d_f, stride))
    macs_dw, macs_pw = (layer.macs for layer in sep.layers)
    ratio = Fraction(sep.macs, std.macs)
    predicted = Fraction(1, n) + Fraction(1, k * k)
    return dict(d_out=std.layers[0].output_shape[0], macs_std=std.macs, macs_dw=macs_dw, macs_pw=macs_pw,
                macs_sep=sep.macs, ratio_counted=ratio, ratio_predicted=predicted,
                # The paper's eq. (2) and (5) with D_F the *input* side: exact for stride 1 only.
                paper_macs_std=k * k * m * n * d_f * d_f, paper_macs_sep=k * k * m * d_f * d_f + m * n * d_f * d_f)


def intensity(macs, *shapes):
    """MACs per byte of float32 moved, when every tensor (input, weights, output) moves once."""
    return macs / (4 * sum(int(np.prod(s)) for s in shapes))


# --- timing ------------------------------------------------------------------------------------

def time_row(m, n, k, d_f, stride, repeats, torch, rng):
    """Seconds for the standard conv, the depthwise and the pointwise: npmobile, then torch."""
    std_graph, sep_graph = layer_graphs(m, n, k, d_f, stride)
    pad = std_graph.nodes[0].attrs["pad"]  # the same "SAME" padding for the conv and the depthwise
    x = rng.standard_normal((1, d_f, d_f, m)).astype(np.float32)
    w_std = (rng.standard_normal((k, k, m, n)) / np.sqrt(k * k * m)).astype(np.float32)
    w_dw = (rng.standard_normal((k, k, m)) / k).astype(np.float32)
    w_pw = (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32)
    conv, dw, pw = (KERNELS[op].fast for op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d"))

    y_dw = dw(x, w_dw, stride=stride, pad=pad)
    ours = {"std": lambda: conv(x, w_std, stride=stride, pad=pad),
            "dw": lambda: dw(x, w_dw, stride=stride, pad=pad),
            "pw": lambda: pw(y_dw, w_pw)}

    # torch in its own layout (NCHW, OIHW), the input padded once outside the timed call: torch's
    # padding argument is symmetric, "SAME" at stride 2 is not.
    F = torch.nn.functional
    top, bottom, left, right = pad
    xt = F.pad(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), (left, right, top, bottom))
    wt_std = torch.from_numpy(to_torch("conv2d", w_std))
    wt_dw = torch.from_numpy(to_torch("depthwise_conv2d", w_dw))
    wt_pw = torch.from_numpy(to_torch("pointwise_conv2d", w_pw))
    yt_dw = F.conv2d(xt, wt_dw, stride=stride, groups=m)
    theirs = {"std": lambda: F.conv2d(xt, wt_std, stride=stride),
              "dw": lambda: F.conv2d(xt, wt_dw, stride=stride, groups=m),
              "pw": lambda: F.conv2d(yt_dw, wt_pw)}

    with torch.no_grad():
        for part in ("std", "dw", "pw"):  # the two must compute the same thing before we time them
            a, b = ours[part](), theirs[part]().permute(0, 2, 3, 1).numpy()
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4 * (np.abs(b).max() + 1)):
                raise AssertionError(f"M={m} N={n} k={k} D_F={d_f} s={stride}: npmobile and torch disagree on {part}")
        return ({part: median_time(fn, repeats)[0] for part, fn in ours.items()},
                {part: median_time(fn, repeats)[0] for part, fn in theirs.items()})


def measure(rows, repeats, torch, log=print):
    rng = np.random.default_rng(0)
    out = []
    for i, (source, name, m, n, k, d_f, stride) in enumerate(rows):
        row = dict(source=source, layer=name, M=m, N=n, k=k, d_f=d_f, stride=stride, **count_row(m, n, k, d_f, stride))
        t_np, t_torch = time_row(m, n, k, d_f, stride, repeats, torch, rng)
        d_out = row["d_out"]
        for who, t in (("np", t_np), ("torch", t_torch)):
            row.update({f"t_{part}_{who}": t[part] for part in ("std", "dw", "pw")})
            row[f"ratio_{who}"] = (t["dw"] + t["pw"]) / t["std"]
            for part in ("std", "dw", "pw"):
                row[f"gflops_{part}_{who}"] = 2 * row[f"macs_{part}"] / t[part] / 1e9
        row["ai_std"] = intensity(row["macs_std"], (d_f, d_f, m), (k, k, m, n), (d_out, d_out, n))
        row["ai_dw"] = intensity(row["macs_dw"], (d_f, d_f, m), (k, k, m), (d_out, d_out, m))
        row["ai_pw"] = intensity(row["macs_pw"], (d_out, d_out, m), (m, n), (d_out, d_out, n))
        out.append(row)
        log(f"[{i + 1}/{len(rows)}] {source:12s} {name:38s} counted {float(row['ratio_counted']):.4f} "
            f"{'==' if row['ratio_counted'] == row['ratio_predicted'] else '!='} 1/N+1/k^2 | "
            f"measured npmobile {row['ratio_np']:.3f} torch {row['ratio_torch']:.3f}")
    return out


# --- output ------------------------------------------------------------------------------------

def write_csv(rows, path):
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + ["exact"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: (float(v) if isinstance(v, Fraction) else v) for k, v in row.items()},
                             "exact": row["ratio_counted"] == row["ratio_predicted"]})


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    pred = np.array([float(r["ratio_predicted"]) for r in rows])
    for who, color in (("np", "tab:blue"), ("torch", "tab:orange")):
        label = "npmobile (numba + BLAS)" if who == "np" else "torch"
        for source, marker in (("grid", "o"), ("mobilenet_v1", "s"), ("mobilenet_v2", "^")):
            sel = [i for i, r in enumerate(rows) if r["source"] == source]
            if sel:
                ax.scatter(pred[sel], [rows[i][f"ratio_{who}"] for i in sel], s=18, marker=marker, color=color,
                           alpha=0.7, label=f"{label}, {source}")
    lo, hi = min(pred.min(), 0.01), 2.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = counted = 1/N + 1/D_K²")
    ax.set(xscale="log", yscale="log", xlabel="counted MAC ratio separable / standard (= 1/N + 1/D_K²)",
           ylabel="measured time ratio separable / standard",
           title="Depthwise-separable vs standard convolution, 1 thread")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    for part, color, label in (("std", "tab:green", "standard conv"), ("dw", "tab:red", "depthwise"),
                               ("pw", "tab:purple", "pointwise")):
        ax2.scatter([r[f"ai_{part}"] for r in rows], [r[f"gflops_{part}_np"] for r in rows], s=14,
                    color=color, alpha=0.7, label=f"npmobile {label}")
    ax2.set(xscale="log", yscale="log", xlabel="arithmetic intensity (MACs per byte moved, float32)",
            ylabel="achieved GFLOP/s (2 x MACs / time)", title="Why: depthwise moves a byte for about one MAC")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(rows, torch, threads):
    def med(key, source=None):
        vals = [r[key] for r in rows if source is None or r["source"] == source]
        return statistics.median(vals) if vals else None

    return {
        "rows": len(rows),
        "exact_rows": sum(r["ratio_counted"] == r["ratio_predicted"] for r in rows),
        "threads": threads,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "numpy": np.__version__, "torch": torch.__version__},
        "median": {src: {"counted": float(med("ratio_predicted", src)),
                         "measured_npmobile": med("ratio_np", src), "measured_torch": med("ratio_torch", src),
                         "gflops_dw_npmobile": med("gflops_dw_np", src), "gflops_pw_npmobile": med("gflops_pw_np", src),
                         "gflops_std_npmobile": med("gflops_std_np", src),
                         "ai_dw": med("ai_dw", src), "ai_pw": med("ai_pw", src)}
                   for src in ("grid", "mobilenet_v1", "mobilenet_v2") if med("ratio_np", src) is not None},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a handful of rows, 2 repeats: seconds, for tests")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel after the warm-up (median)")
    parser.add_argument("--out", type=Path, help="write separable.csv/.png/.json into this folder")
    parser.add_argument("--save", action="store_true", help="write them into benchmarks/results (the committed results)")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS if args.save else None)
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks/separable.py times torch beside npmobile; torch is not installed: "
                 "pip install 'npmobile[bench]'")
    threads = pin_threads(1)

    if args.quick:
        rows = grid_rows(channels=(8, 128), kernels=(3,)) + mobilenet_rows()[5:7]
        repeats = 2
    else:
        rows = grid_rows() + mobilenet_rows()
        repeats = args.repeats
    start = time.perf_counter()
    results = measure(rows, repeats, torch)
    summary = headline(results, torch, threads) | {"seconds": round(time.perf_counter() - start, 1), "repeats": repeats}
    print(json.dumps(summary["median"], indent=1))
    print(f"{summary['exact_rows']}/{summary['rows']} rows: counted ratio == 1/N + 1/D_K^2 exactly "
          f"({summary['seconds']} s)")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(results, out / "separable.csv")
        plot(results, out / "separable.png")
        (out / "separable.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {out}/separable.csv, .png, .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
