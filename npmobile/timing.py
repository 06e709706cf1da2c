"""Count beside clock: per layer of the graph that runs, its MACs and parameters (npmobile.cost)
next to its measured time and the GFLOP/s that makes (`npmobile summary --time`,
`model.summary(time=True)`).

The fast engine runs the fused graph (engine.fuse): a zero padding, a batch norm and a ReLU6 are
folded into the convolution they pad or follow, so one timed step computes several nodes of the
graph as built. Each row is one such step, named by the graph's own nodes: the linear node first
(`conv_pw_1 (pointwise_conv2d)`), then the nodes it absorbs (`+ conv_pw_1_bn, conv_pw_1_relu`);
a depthwise convolution and the pointwise one after it run as one step (`conv_dw_1
(separable_conv2d) + conv_dw_1_bn, conv_dw_1_relu, conv_pw_1, ...`).
Its MACs and parameters are those of its nodes as built (cost.count: a folded BN's gamma, beta,
mean and variance are still counted as Keras counts them), so the totals equal `npmobile summary`.

    GFLOP/s = 2 * MACs / seconds / 1e9          (one multiply-accumulate = two floating-point ops)

Each step is timed on its own, at batch 1 on the calling thread with BLAS on one thread (through
threadpoolctl when it is installed), median of `runs` calls after a warm-up, with the plan's
buffers already bound (benchmarks/layers.py uses these times): the sum of the rows is close to,
and a little under, a whole call of the model.
"""

import statistics
import time
from dataclasses import dataclass

import numpy as np

from . import cost, engine
from .graph import LINEAR_OPS
from .bench import _blas_threads


@dataclass
class Row:
    name: str       # the linear (or only) node of the step, as named in the graph as built
    op: str
    fuses: list     # the other nodes of the graph as built that this step computes
    output_shape: tuple
    macs: int
    params: int
    ms: float = float("nan")

    @property
    def gflops(self):
        return 2 * self.macs / (self.ms * 1e-3) / 1e9 if self.macs and self.ms > 0 else float("nan")


def steps(graph, fused):
    """[[node names of `graph`] per node of `fused`], in order: each fused node computes the nodes
    of the graph as built that lead up to it and were folded away (MobileNet graphs are chains, so
    those come right before it)."""
    kept = {n.name for n in fused.nodes}
    groups, pending = [], []
    for node in graph.nodes:
        pending.append(node.name)
        if node.name in kept:
            groups.append(pending)
            pending = []
    if pending or len(groups) != len(fused.nodes):
        raise ValueError(f"the fused graph does not partition the graph as built: left over {pending}")
    return groups


def rows(model):
    """One Row per step of the fast engine, with the counts of the nodes it computes (untimed)."""
    fused, _ = engine.fuse(model.graph, model.params)
    layers = {layer.name: layer for layer in cost.count(model.graph).layers}
    out = []
    for node, names in zip(fused.nodes, steps(model.graph, fused)):
        # the first convolution (a separable step's depthwise), not its pad or BN
        head = next((n for n in names if layers[n].op in LINEAR_OPS), names[-1])
        out.append(Row(head, node.op, [n for n in names if n != head], tuple(node.shape),
                       sum(layers[n].macs for n in names), sum(layers[n].n_params for n in names)))
    return out


def time_steps(model, runs=20, warmup=3, x=None):
    """Median seconds of each step of the batch-1 plan (one per node of the fused graph), each
    timed on its own, on x (1, h, w, c) or a seeded random input."""
    plan = engine.Plan(*engine.fuse(model.graph, model.params), 1)
    if x is None:
        x = np.random.default_rng(0).standard_normal((1, *model.graph.input_shape)).astype(np.float32)
    times = [[] for _ in plan.steps]
    with _blas_threads(1):  # one thread: OpenBLAS's spinning threads make single steps erratic
        for _ in range(warmup):
            plan.run(x)
        for _ in range(runs):
            plan.run(x)  # fresh inputs for every step, as a real call leaves them
            for k, step in enumerate(plan.steps):
                t = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def timed_rows(model, runs=20, warmup=3):
    """rows(model) with each step's measured ms."""
    out = rows(model)
    for row, seconds in zip(out, time_steps(model, runs, warmup)):
        row.ms = 1e3 * seconds
    return out


def format_table(table, title=None):
    """The rows as a Keras-like summary with MACs, parameters, ms and GFLOP/s on each line."""
    labels = [f"{r.name} ({r.op})" + (f" + {', '.join(r.fuses)}" if r.fuses else "") for r in table]
    width = max(len("Layer (op) + fused nodes"), *map(len, labels))
    header = (f"{'Layer (op) + fused nodes':<{width}}  {'Output':>15}  {'MACs':>12}  {'Params':>10}  "
              f"{'ms':>7}  {'GFLOP/s':>7}")
    rule = "=" * len(header)
    lines = ([title] if title else []) + [rule, header, rule]
    for label, r in zip(labels, table):
        lines.append(f"{label:<{width}}  {str(r.output_shape):>15}  {r.macs:>12,}  {r.params:>10,}  "
                     f"{r.ms:>7.3f}  {r.gflops:>7.1f}")
    macs, ms = sum(r.macs for r in table), sum(r.ms for r in table)
    lines += [rule, f"Total: {macs:,} MACs, {sum(r.params for r in table):,} params, {ms:.2f} ms "
                    f"(sum of the steps, batch 1), {2 * macs / (ms * 1e-3) / 1e9:.1f} GFLOP/s", rule]
    return "\n".join(lines)


def to_json(table):
    return [{"name": r.name, "op": r.op, "fuses": r.fuses, "output_shape": list(r.output_shape), "macs": r.macs,
             "params": r.params, "ms": r.ms, "gflops": r.gflops} for r in table]
