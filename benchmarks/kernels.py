"""Kernel benchmark: every fast kernel against its oracle and against torch, on the real layers
of MobileNetV1-1.0-224 and MobileNetV2-1.0-224.

For each distinct layer shape of each network (taken from the graph, so every row is a real
MobileNet layer) it first checks the fast kernel against its oracle (float32 error bound), then
times fast kernel, oracle and torch.nn.functional (torch in its native NCHW layout) in the same
run: median of several runs after a warm-up that also absorbs numba's compile. It prints MACs,
GFLOP/s and the ratios per layer and per kernel; --save writes benchmarks/results/kernels.json (the
committed results: never overwritten unless asked), --out FILE elsewhere.

Threads are pinned to 1 for every peer (npmobile.measure.pin_threads: numba, BLAS and OpenMP through
threadpoolctl, torch.set_num_threads, and the environment).

    python benchmarks/kernels.py [--quick] [--arch mobilenet_v2] [--save | --out FILE]
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from npmobile.cost import node_macs
from npmobile.kernels import KERNELS
from npmobile.architectures import mobilenet_v1, mobilenet_v2, random_params
from npmobile.io._common import to_torch
from npmobile.measure import median_time, pin_threads

U = 2.0 ** -24
RESULTS = Path(__file__).resolve().parent / "results"


def layer_cases(graph):
    """One case per distinct (op, input shape, attrs, param shapes) in the graph, batch 1."""
    shapes = {"input": graph.input_shape}
    params = random_params(graph, seed=0)
    seen, cases = set(), []
    for node in graph.nodes:
        in_shapes = [shapes[i] for i in node.inputs]
        shapes[node.name] = node.shape
        key = (node.op, tuple(in_shapes), repr(sorted(node.attrs.items())),
               tuple(node.params.values()))
        if key in seen:
            continue
        seen.add(key)
        rng = np.random.default_rng(len(cases))
        inputs = [rng.standard_normal((1, *s)).astype(np.float32) for s in in_shapes]
        tensors = [params[f"{node.name}.{p}"] for p in node.params]
        cases.append(dict(node=node, inputs=inputs, tensors=tensors, count=1))
    return cases


def macs(node, inputs):
    """MACs of one call: npmobile.cost's count for one sample, times the batch; batch norm, which
    the papers count as free, is counted here as one multiply-add per element (so its GFLOP/s
    means something)."""
    if node.op == "batchnorm":
        return int(inputs[0].size)
    return inputs[0].shape[0] * node_macs(node, inputs[0].shape[1:])


def torch_call(node, inputs, tensors):
    """The same layer in torch.nn.functional, on NCHW tensors prepared outside the timing."""
    import torch
    F = torch.nn.functional
    t = [torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))) if x.ndim == 4 else torch.from_numpy(x)
         for x in inputs]
    p = node.attrs.get("pad", (0, 0, 0, 0))
    torch_pad = (p[2], p[3], p[0], p[1])
    if node.op == "conv2d":
        w = torch.from_numpy(to_torch(node.op, tensors[0]))
        return lambda: F.conv2d(F.pad(t[0], torch_pad), w, stride=node.attrs["stride"])
    if node.op == "depthwise_conv2d":
        w = torch.from_numpy(to_torch(node.op, tensors[0]))
        c = inputs[0].shape[-1]
        if p[0] == p[1] and p[2] == p[3]:  # symmetric: let conv2d pad, as torchvision does
            return lambda: F.conv2d(t[0], w, stride=node.attrs["stride"], padding=(p[0], p[2]), groups=c)
        return lambda: F.conv2d(F.pad(t[0], torch_pad), w, stride=node.attrs["stride"], groups=c)
    if node.op == "pointwise_conv2d":
        w = torch.from_numpy(to_torch(node.op, tensors[0]))
        return lambda: F.conv2d(t[0], w)
    if node.op == "batchnorm":
        g, b, m, v = (torch.from_numpy(a) for a in tensors)
        return lambda: F.batch_norm(t[0], m, v, g, b, training=False, eps=node.attrs["eps"])
    if node.op == "clamp":
        return lambda: F.hardtanh(t[0], node.attrs["lo"], node.attrs["hi"])
    if node.op == "add":
        return lambda: torch.add(t[0], t[1])
    if node.op == "global_avg_pool":
        return lambda: F.adaptive_avg_pool2d(t[0], 1)
    if node.op == "dense":
        w, b = torch.from_numpy(to_torch(node.op, tensors[0])), torch.from_numpy(tensors[1])
        return lambda: F.linear(t[0], w, b)
    if node.op == "softmax":
        return lambda: F.softmax(t[0], dim=-1)
    raise KeyError(node.op)


def check(node, inputs, tensors):
    """The fast kernel equals its oracle within the float32 bound gamma(k) * magnitude, where k
    counts the terms of each output's sum and magnitude is the oracle run on absolute values
    (tests/bounds.py explains the bound; the property tests hold it on drawn shapes)."""
    kernel = KERNELS[node.op]
    y = kernel.fast(*inputs, *tensors, **node.attrs)
    ref = kernel.ref(*inputs, *tensors, **node.attrs)
    if y.dtype != np.float32 or y.shape != ref.shape:
        raise AssertionError(f"{node.name}: fast kernel gave {y.dtype} {y.shape}, oracle {ref.shape}")
    if node.op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense"):
        attrs = {**node.attrs, "clamp": None}
        magnitude = kernel.ref(*(np.abs(a) for a in inputs + tensors), **attrs)
        k = macs(node, inputs) // ref.size + 2
    elif node.op == "batchnorm":  # 8 roundings over |x * scale| + |mean * scale| + |beta|
        gamma, beta, mean, var = (t.astype(np.float64) for t in tensors)
        scale = np.abs(gamma) / np.sqrt(var + node.attrs["eps"])
        magnitude, k = np.abs(inputs[0]) * scale + np.abs(mean) * scale + np.abs(beta), 8
    else:  # elementwise ops, pooling, softmax: a few roundings, sums of at most h*w terms
        magnitude = np.abs(kernel.ref(*(np.abs(a) for a in inputs), **node.attrs)) + np.abs(ref)
        k = (int(np.prod(inputs[0].shape[1:3])) if inputs[0].ndim == 4 else inputs[0].shape[-1]) + 16
    bound = k * U / (1 - k * U) * magnitude
    if (np.abs(y - ref) > bound).any():
        raise AssertionError(f"{node.name}: fast kernel disagrees with its oracle beyond the float32 bound")


def bench(arch, graph, quick):
    import torch
    rows = []
    cases = layer_cases(graph)
    if quick:
        cases = [c for c in cases if c["node"].op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d")][:3]
    for case in cases:
        node, inputs, tensors = case["node"], case["inputs"], case["tensors"]
        kernel = KERNELS[node.op]
        check(node, inputs, tensors)
        t_fast = median_time(lambda: kernel.fast(*inputs, *tensors, **node.attrs), 3 if quick else 9, 0.05)[0]
        t_ref = median_time(lambda: kernel.ref(*inputs, *tensors, **node.attrs), 1 if quick else 3)[0]
        with torch.inference_mode():
            t_torch = median_time(torch_call(node, inputs, tensors), 3 if quick else 9, 0.05)[0]
        m = macs(node, inputs)
        rows.append(dict(arch=arch, layer=node.name, op=node.op, input=list(inputs[0].shape),
                         output=[1, *node.shape], macs=m, fast_s=t_fast, oracle_s=t_ref, torch_s=t_torch,
                         gflops=2 * m / t_fast / 1e9, oracle_over_fast=t_ref / t_fast,
                         torch_over_fast=t_torch / t_fast))
        print(f"{arch:13s} {node.name:24s} {node.op:17s} {str(tuple(inputs[0].shape)):20s} "
              f"{m / 1e6:8.2f}M {t_fast * 1e3:9.3f}ms {2 * m / t_fast / 1e9:7.2f} GFLOP/s "
              f"oracle/fast {t_ref / t_fast:8.1f}x  torch/fast {t_torch / t_fast:6.2f}x", flush=True)
    return rows


def summarise(rows):
    """Per network and kernel: summed times over the distinct layers, and the ratios."""
    out = {}
    for r in rows:
        s = out.setdefault(f"{r['arch']}/{r['op']}", dict(macs=0, fast_s=0.0, oracle_s=0.0, torch_s=0.0, layers=0,
                                                          min_oracle_over_fast=float("inf")))
        for k in ("macs", "fast_s", "oracle_s", "torch_s"):
            s[k] += r[k]
        s["layers"] += 1
        s["min_oracle_over_fast"] = min(s["min_oracle_over_fast"], r["oracle_over_fast"])
    for s in out.values():
        s["oracle_over_fast"] = s["oracle_s"] / s["fast_s"]
        s["torch_over_fast"] = s["torch_s"] / s["fast_s"]
        s["gflops"] = 2 * s["macs"] / s["fast_s"] / 1e9
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three layers, few repeats (a smoke test)")
    parser.add_argument("--arch", choices=["mobilenet_v1", "mobilenet_v2", "both"], default="both")
    parser.add_argument("--out", type=Path, help="write the JSON results to this file")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/kernels.json (the committed results the README quotes)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("benchmarks/kernels.py compares against torch, which is not installed: pip install 'npmobile[bench]'")
    threads = pin_threads(1)
    nets = {"mobilenet_v1": mobilenet_v1(1.0, 224), "mobilenet_v2": mobilenet_v2(1.0, 224)}
    rows = []
    for arch, graph in nets.items():
        if args.arch in (arch, "both"):
            rows += bench(arch, graph, args.quick)
    summary = summarise(rows)
    print(f"\n{'network/kernel':36s} {'layers':>6s} {'MACs':>10s} {'fast':>10s} {'GFLOP/s':>8s} "
          f"{'oracle/fast':>12s} {'(worst layer)':>13s} {'torch/fast':>10s}")
    for key, s in summary.items():
        print(f"{key:36s} {s['layers']:6d} {s['macs'] / 1e6:9.1f}M {s['fast_s'] * 1e3:8.2f}ms {s['gflops']:8.2f} "
              f"{s['oracle_over_fast']:11.1f}x {s['min_oracle_over_fast']:12.1f}x {s['torch_over_fast']:9.2f}x")
    env = dict(threads=threads, numpy=np.__version__, torch=torch.__version__,
               machine=platform.processor() or platform.machine(), quick=args.quick)
    out = args.out or (RESULTS / "kernels.json" if args.save else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(env=env, summary=summary, layers=rows), indent=1))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
