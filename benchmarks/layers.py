"""Where the time goes: MobileNet-1.0-224 at batch 1, layer by layer, npmobile against ONNX Runtime.

npmobile's side times each step of the fast engine's plan on its own (the fused graph: BN folded,
bias and ReLU6 in the kernel); ONNX Runtime's side comes from its own profiler, on the ONNX file
torch.onnx exports from the same weights (npmobile.measure.torch_twin). Both on t threads
(--threads, default 1: npmobile.measure.pin_threads(t), ONNX Runtime's intra_op_num_threads = t),
medians over repeated runs. The layers are summed by kind: first conv, depthwise, pointwise, the
rest; then listed one by one, each with ONNX Runtime's time for the same layer (its nodes whose
names carry the layer's name; a batch norm or clamp counts with the convolution before it).
Both fold each residual add into the pointwise convolution before it, so the adds are counted
under pointwise (and under that layer). npmobile runs a depthwise convolution and the pointwise
one after it as one step (kernels/separable.py): such a step is one line, of kind "separable",
beside ONNX Runtime's time for both layers.

    python benchmarks/layers.py [--arch mobilenet_v2] [--threads 1] [--runs 200] [--save | --out FILE]

prints the table; --out FILE writes it as markdown, --save to benchmarks/results/layers-{arch}.md
(the committed results the README quotes: never overwritten unless asked). Needs torch (to export
the ONNX file) and onnxruntime: pip install 'npmobile[bench]'.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from npmobile import Model, timing
from npmobile.bench import export_onnx
from npmobile.measure import check_agrees, pin_threads, torch_twin
from npmobile.architectures import ARCHITECTURES, random_params

RESULTS = Path(__file__).resolve().parent / "results"
KIND = {"conv2d": "first conv", "depthwise_conv2d": "depthwise", "pointwise_conv2d": "pointwise",
        "separable_conv2d": "separable"}


def layer_groups(graph):
    """Every node name of the unfused graph -> the name of the layer it belongs to: a BN or clamp
    belongs to the convolution before it, any other node is a layer of its own."""
    groups, current = {}, None
    for node in graph.nodes:
        if node.op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense") or node.op not in ("batchnorm", "clamp"):
            current = node.name
        groups[node.name] = current
    return groups


def npmobile_layers(model, x, runs):
    """(name, op, ms, layers) for every step of the batch-1 plan, each timed on its own, named by
    its first linear node as built (timing.rows: a fused node carries the name of the last node it
    absorbed, which after a projection is the residual add); `layers` are the layers
    (layer_groups) the step computes: two for a separable step."""
    seconds = timing.time_steps(model, runs, warmup=10, x=x)  # one bound step per fused node, in order
    groups = layer_groups(model.graph)
    return [(row.name, row.op, 1e3 * s, {groups[n] for n in (row.name, *row.fuses)})
            for row, s in zip(timing.rows(model), seconds)]


def onnxruntime_layers(graph, params, x, runs, expected, threads=1):
    """(ONNX node name, ms) from ONNX Runtime's profiler on `threads` threads, after checking that
    its output matches npmobile's (`expected`): the two time the same network."""
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="npmobile-layers-")
    path = export_onnx(torch_twin(graph, params), graph, folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, "profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    check_agrees("ONNX Runtime", session.run(None, {"input": nchw})[0], expected)
    for _ in range(runs + 9):
        session.run(None, {"input": nchw})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    per_node = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node.setdefault(e["name"][:-len("_kernel_time")], []).append(e["dur"])
    return [(name, 1e-3 * statistics.median(d[10:])) for name, d in per_node.items()]  # past warm-up


def ort_layer(name, groups):
    """An ONNX node's layer: the one whose node name appears in its path ("/block_1_expand/Conv"),
    or None."""
    matches = [n for n in groups if f"/{n}/" in name]
    return groups[max(matches, key=len)] if matches else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2", choices=sorted(ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", help="write the table as markdown to this file")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/layers-ARCH.md")
    args = parser.parse_args(argv)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        sys.exit(f"benchmarks/layers.py needs torch, onnx and onnxruntime; {e.name} is not installed: "
                 "pip install 'npmobile[bench]'")
    pin_threads(args.threads)
    graph = ARCHITECTURES[args.arch](1.0, 224, convention="torch")
    params = random_params(graph, seed=1)
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    model = Model(graph, params)
    ours = npmobile_layers(model, x, args.runs)
    theirs = onnxruntime_layers(graph, params, x, args.runs, model(x), args.threads)
    groups = layer_groups(graph)
    step_of = {layer: name for name, _, _, layers in ours for layer in layers}  # layer -> npmobile's step
    per_step = {name: [ms, 0.0] for name, _, ms, _ in ours}  # step name -> [npmobile ms, ONNX Runtime ms]
    for name, ms in theirs:
        per_step.setdefault(step_of.get(ort_layer(name, groups)), [0.0, 0.0])[1] += ms
    kinds = {name: KIND.get(op, "other") for name, op, _, _ in ours}
    totals = {}
    for step, (a, b) in per_step.items():
        total = totals.setdefault(kinds.get(step, "other"), [0.0, 0.0])
        total[0] += a
        total[1] += b
    lines = [f"# {args.arch}-1.0-224, batch 1, {args.threads} thread(s); ms per layer kind (median of {args.runs} runs)",
             f"{'kind':12s} {'npmobile':>9s} {'onnxrt':>8s} {'ratio':>6s}"]
    for kind in [k for k in ("first conv", "separable", "depthwise", "pointwise", "other") if k in totals]:
        a, b = totals[kind]
        lines.append(f"{kind:12s} {a:9.2f} {b:8.2f} {a / b if b else float('nan'):6.2f}")
    a, b = (sum(t[i] for t in totals.values()) for i in (0, 1))
    lines.append(f"{'total':12s} {a:9.2f} {b:8.2f} {a / b:6.2f}")
    lines += ["", f"{'npmobile layer':36s} {'op':18s} {'ms':>6s} {'onnxrt':>7s}"]
    lines += [f"{name:36s} {op:18s} {ms:6.3f} {per_step[name][1]:7.3f}" for name, op, ms, _ in ours]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else (RESULTS / f"layers-{args.arch}.md" if args.save else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
