"""The integer engine's two routes on one quantized file, per layer kind, one thread.

    python benchmarks/quantized_routes.py [--model mobilenet_v2_1.0_224_quant.tflite] [--runs 30] [--save]

Both plans are bound from the same file in one process: one with the VNNI loops (`vnni.py`,
the depthwise loop of `qdepthwise.py`; where this CPU has AVX-512 VNNI), one with
`npmobile.kernels._simd.USE_VNNI` off (the float32 route: exact sums on sgemm and the float
depthwise kernel, then the requantizing epilogue). Their steps are timed in turns, each step's
median over --runs, and summed per layer kind (ms). Threads are pinned before numpy loads:
NUMBA_NUM_THREADS=NPMOBILE_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1. --save writes
benchmarks/results/quantized-routes.md (docs/quantized.md quotes it).
"""

import os

for _name in ("NUMBA_NUM_THREADS", "NPMOBILE_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT.parent / "shared" / "assets" / "models"
RESULTS = ROOT / "benchmarks" / "results"


def bound_plans(path):
    """{route: (plan, integer input)} for the VNNI route (where this CPU has it) and the float one."""
    import npmobile
    from npmobile.kernels import _simd

    plans, saved = {}, _simd.USE_VNNI
    try:
        for route, use in (("vnni", _simd.HAVE_VNNI), ("float32", False)):
            if route == "vnni" and not use:
                continue
            _simd.USE_VNNI = use  # read when a plan's layers are checked, below
            model = npmobile.load(path)
            x = np.random.default_rng(0).uniform(-1, 1, (1, *model.graph.input_shape)).astype(np.float32)
            plan = model._new_plan(1, False)
            q = model.quantize_input(x)
            plan.run(q)
            plans[route] = (plan, q)
    finally:
        _simd.USE_VNNI = saved
    return plans


def time_by_kind(plans, runs):
    """{route: {layer kind: ms}}: each step's median over runs, the routes' steps in turns."""
    times = {route: [[] for _ in plan.steps] for route, (plan, _) in plans.items()}
    for _ in range(runs):
        for route, (plan, _) in plans.items():
            for k, step in enumerate(plan.steps):
                start = time.perf_counter()
                step()
                times[route][k].append(time.perf_counter() - start)
    kinds = {}
    for route, (plan, _) in plans.items():
        by = collections.defaultdict(float)
        for node, samples in zip(plan.graph.nodes, times[route]):
            by[node.op] += 1e3 * statistics.median(samples)
        kinds[route] = dict(by)
    return kinds


def format_table(name, kinds):
    routes = list(kinds)
    ops = sorted(kinds[routes[0]], key=lambda op: -kinds[routes[0]][op])
    lines = [f"# {name}, batch 1, one thread, ms per layer kind (each step's median); load average "
             f"{os.getloadavg()[0]:.2f}", "kind".ljust(28) + "".join(r.rjust(10) for r in routes)]
    for op in ops + ["total"]:
        cells = [sum(kinds[r].values()) if op == "total" else kinds[r].get(op, 0.0) for r in routes]
        lines.append(op.ljust(28) + "".join(f"{c:10.3f}" for c in cells))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2_1.0_224_quant.tflite")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    table = format_table(args.model, time_by_kind(bound_plans(str(MODELS / args.model)), args.runs))
    print(table)
    if args.save:
        (RESULTS / "quantized-routes.md").write_text("```\n" + table + "\n```\n")


if __name__ == "__main__":
    main()
