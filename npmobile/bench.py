"""End-to-end benchmark: whole MobileNets, npmobile against the runtimes people use.

For MobileNetV1-1.0 and MobileNetV2-1.0 at 224 (torchvision's convention), batch 1 and 8, on 1
and 2 threads, it times on the *same weights*:
- npmobile's fast engine (median of repeated calls after a warm-up),
- npmobile's oracle engine (one call),
- ONNX Runtime and PyTorch eager (medians), on a torch module built from the same graph and the
  ONNX file torch.onnx exports from it,
- the ONNX reference evaluator (onnx.reference, one call, batch 1);
- with --tflite FILE, LiteRT on that file against npmobile's float engine on the same file;
and a roofline line per row: GFLOP/s against the sgemm peak of one core measured in the same run.
Every peer's output is checked against npmobile's first; each thread count runs in its own
process whose thread settings are pinned before numpy is imported: NUMBA_NUM_THREADS,
OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads(t), ONNX Runtime
intra_op_num_threads=t, LiteRT num_threads=t. npmobile splits every layer across its t numba
threads (a single image too) and a batch across t Python threads; BLAS runs on one thread per
call. The ratio npmobile / ONNX Runtime of each row comes from that same process. OpenBLAS
picks its kernels for the CPU there ($OPENBLAS_CORETYPE cleared: measure.thread_env), as ONNX
Runtime, PyTorch and LiteRT do; the table says which it ran.

    npmobile bench [--quick] [--tflite FILE] [--out results.json] [--plot results.png]
    python benchmarks/e2e.py   (the same, writing benchmarks/results/e2e.json and .png)
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings

from .measure import check_agrees, median_time, thread_env, torch_twin

ARCHS = ("mobilenet_v1", "mobilenet_v2")


def worker(threads, quick, tflite=()):
    """One thread count, in a process whose thread settings were pinned before numpy loaded."""
    import numpy as np

    import npmobile
    from npmobile.architectures import ARCHITECTURES, random_params
    from npmobile.cost import count

    npmobile.set_num_threads(threads)
    from npmobile.kernels._blas import core

    probe = dict(probe=threads, sgemm_peak_gflops=sgemm_peak_gflops(), parallel_launch_us=parallel_launch_us(),
                 openblas_core=core())
    print(json.dumps(probe), flush=True)
    rows = []
    for arch in ARCHS:
        graph = ARCHITECTURES[arch](1.0, 224, convention="torch")
        params = random_params(graph, seed=1)
        model = npmobile.Model(graph, params)
        peers = _peers(graph, params, threads)
        macs = count(graph).macs
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype(np.float32)
            ours = model(x)
            row = dict(arch=arch, batch=batch, threads=threads)
            # npmobile splits a batch across its threads, and each layer across numba's threads
            # (a single image too); BLAS stays on one thread per call.
            with _blas_threads(1) as blas:
                t, runs = median_time(lambda: model(x), 3 if quick else 10, 0.5 if quick else 3.0)
            row["npmobile_ms"], row["npmobile_runs"], row["npmobile_blas_threads"] = 1e3 * t, runs, blas
            row.update(_roofline(macs * batch, t, threads, probe["sgemm_peak_gflops"]))
            for name, (call, max_batch, one_call) in peers.items():
                if batch > max_batch:
                    continue
                check_agrees(f"{name} on {arch}", call(x), ours)
                t0 = time.perf_counter()
                if one_call:
                    call(x)
                    row[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0)
                else:
                    t, runs = median_time(lambda: call(x), 3 if quick else 10, 0.5 if quick else 3.0)
                    row[f"{name}_ms"], row[f"{name}_runs"] = 1e3 * t, runs
            if not quick or batch == 1:
                t0 = time.perf_counter()
                model.run(x, oracle=True)
                row["oracle_ms"] = 1e3 * (time.perf_counter() - t0)
            if "onnxruntime_ms" in row:
                row["npmobile_over_onnxruntime"] = row["npmobile_ms"] / row["onnxruntime_ms"]
            if "onnx_reference_ms" in row:
                row["onnx_reference_over_npmobile"] = row["onnx_reference_ms"] / row["npmobile_ms"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    for path in tflite:
        row = litert_row(path, threads, quick)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _roofline(macs, seconds, threads, peak_gflops):
    """GFLOP/s (2 FLOPs per MAC) and its fraction of the sgemm peak of `threads` cores."""
    gflops = 2 * macs / seconds / 1e9
    return dict(npmobile_gflops=gflops, npmobile_fraction_of_peak=gflops / (peak_gflops * threads))


def sgemm_peak_gflops(side=1024):
    """This core's practical FMA peak: OpenBLAS sgemm on large square matrices, one thread, the
    best of a few runs (the roofline every row is measured against)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
    c = np.empty_like(a)
    best = float("inf")
    with _blas_threads(1):
        for _ in range(5):
            t = time.perf_counter()
            np.matmul(a, a, out=c)
            best = min(best, time.perf_counter() - t)
    return 2 * side**3 / best / 1e9


def parallel_launch_us():
    """The cost of one parallel loop on numba's threads (the kernels' threading layer) with
    next to no work in it: what splitting one layer across the threads costs per layer."""
    import numpy as np

    from npmobile.kernels import KERNELS

    kernel = KERNELS["depthwise_conv2d"]  # a 3x3 layer of two output rows, one pixel, one channel
    args = kernel.check(np.zeros((1, 4, 3, 1), np.float32), np.zeros((3, 3, 1), np.float32))
    return 1e6 * median_time(lambda: kernel.run(*args), 2000, 0.0)[0]


def litert_row(path, threads, quick):
    """npmobile against LiteRT on one .tflite file, batch 1. LiteRT runs the file as written
    (int8 for a quantized file, XNNPACK, num_threads=threads); npmobile runs it twice: as
    `npmobile.load` gives it (the integer engine for a quantized file) and dequantized to its float
    graph (`dequantize=True`). The float engine's probabilities differ from LiteRT's by the
    quantization, so the row records the top-1 agreement of each rather than asserting it."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    import npmobile
    from npmobile.qmodel import QuantizedModel

    engines = {"int": npmobile.load(path), "float": npmobile.load(path, dequantize=True)}
    if not isinstance(engines["int"], QuantizedModel):
        del engines["int"]  # a float file: one engine
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    side = engines["float"].config.resolution
    image = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)

    def litert():
        interpreter.set_tensor(inp["index"], image.astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])
    scale, zero = out["quantization"]
    theirs = (litert().astype(np.float32) - zero) * (scale or 1.0)
    repeats, seconds = (3, 0.5) if quick else (10, 3.0)
    row = dict(arch=os.path.basename(path), batch=1, threads=threads, litert_input=str(np.dtype(inp["dtype"])))
    with _blas_threads(1) as blas:
        for name, model in engines.items():
            x = model.preprocess(image)
            row[f"{name}_top1_agrees"] = bool(model(x).argmax() == theirs.argmax())
            row[f"npmobile_{name}_ms"] = 1e3 * median_time(lambda: model(x), repeats, seconds)[0]
    row["npmobile_blas_threads"] = blas
    row["litert_ms"] = 1e3 * median_time(litert, repeats, seconds)[0]
    for name in engines:
        row[f"npmobile_{name}_over_litert"] = row[f"npmobile_{name}_ms"] / row["litert_ms"]
    return row


@contextlib.contextmanager
def _blas_threads(n):
    """Run the block with BLAS on n threads (threadpoolctl, a benchmark dependency), yielding
    the count in force: the process's own setting when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield int(os.environ.get("OPENBLAS_NUM_THREADS", "0")) or None
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield n


def _peers(graph, params, threads):
    """name -> (call on an NHWC batch returning NHWC-comparable output, max batch, timed once)."""
    import tempfile

    import numpy as np

    peers = {}
    try:
        import torch
    except ImportError:  # run_all says so, once
        return peers
    torch.set_num_threads(threads)
    net = torch_twin(graph, params)

    def torch_call(x):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    peers["pytorch"] = (torch_call, 8, False)

    path = export_onnx(net, graph, tempfile.mkdtemp(prefix="npmobile-bench-"))
    try:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        peers["onnxruntime"] = (lambda x: session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0],
                                8, False)
    except ImportError:
        pass
    try:
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(path)
        peers["onnx_reference"] = (lambda x: evaluator.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0],
                                   1, True)
    except ImportError:
        pass
    return peers


def export_onnx(net, graph, folder):
    """Write the torch module `net` (torch_twin(graph, ...)) as folder/{arch}.onnx with a free
    batch axis; returns the path. The input is NCHW and named "input"."""
    import torch

    path = os.path.join(folder, f"{graph.config.arch}.onnx")
    with warnings.catch_warnings():  # torch deprecates this (TorchScript) exporter; it is the one without onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 3, *graph.input_shape[:2]), path, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                          opset_version=17, dynamo=False)
    return path


def first_inference_seconds():
    """Seconds from `import npmobile` returning to the first inference finishing, in a new process
    (after a first run that fills numba's cache)."""
    code = ("import time, numpy as np\n"
            "import npmobile\n"
            "t = time.perf_counter()\n"
            "g = npmobile.mobilenet_v2()\n"
            "from npmobile.architectures import random_params\n"
            "m = npmobile.Model(g, random_params(g))\n"
            "m(np.zeros((1, 224, 224, 3), np.float32))\n"
            "print(time.perf_counter() - t)\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # fills the cache
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def missing_peers():
    """One line naming the peers that will not run because their package is missing, or None."""
    gone = []
    try:
        import torch  # noqa: F401 -- every peer runs a module torch builds (or its ONNX export)
    except ImportError:
        gone = ["PyTorch", "ONNX Runtime", "the ONNX reference evaluator"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        gone += [] if "ONNX Runtime" in gone else ["ONNX Runtime"]
    try:
        import onnx  # noqa: F401
    except ImportError:
        gone += [] if "the ONNX reference evaluator" in gone else ["the ONNX reference evaluator"]
    return f"# not timed (package missing; pip install 'npmobile[bench]'): {', '.join(gone)}" if gone else None


def run_all(thread_counts=(1, 2), quick=False, tflite=()):
    note = missing_peers()
    if note:
        print(note, file=sys.stderr)
    rows, probes, load_start = [], [], os.getloadavg()[0]
    for t in thread_counts:
        env = thread_env(t, blas=1)
        cmd = ([sys.executable, "-m", "npmobile.bench", "--worker", str(t)] + (["--quick"] if quick else [])
               + [arg for path in tflite for arg in ("--tflite", path)])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        probes += [r for r in lines if "probe" in r]
        rows += [r for r in lines if "probe" not in r]
    add_speedups(rows)
    return dict(rows=rows, probes=probes, first_inference_s=first_inference_seconds(),
                load_average=[load_start, os.getloadavg()[0]],
                environment_openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"),
                threads=("npmobile: NUMBA_NUM_THREADS=NPMOBILE_NUM_THREADS=t; the kernels' parallel loops on t "
                         "numba threads (TBB), each block of a product one single-threaded OpenBLAS call; a batch is "
                         "also split across t Python threads; torch.set_num_threads(t); "
                         "onnxruntime intra_op_num_threads=t, inter_op_num_threads=1; LiteRT num_threads=t"),
                machine=_machine())


def add_speedups(rows):
    """Each network row on t > 1 threads gets speedup_vs_1_thread: its 1-thread row's time over
    its own (the LiteRT rows, timed per engine, have none)."""
    nets = [r for r in rows if "npmobile_ms" in r]
    by_key = {(r["arch"], r["batch"], r["threads"]): r for r in nets}
    for r in nets:
        one = by_key.get((r["arch"], r["batch"], 1))
        if r["threads"] > 1 and one:
            r["speedup_vs_1_thread"] = one["npmobile_ms"] / r["npmobile_ms"]


def _machine():
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor()} ({os.cpu_count()} cores), Python {platform.python_version()}"


def format_table(result):
    lines = [f"# {result['machine']}", f"# threads: {result['threads']}",
             f"# first inference in a new process: {result['first_inference_s']:.2f} s after import",
             "# load average (1 min, all cores): {:.1f} at the start, {:.1f} at the end".format(*result["load_average"]),
             "# OpenBLAS chooses its kernels for this CPU in every timed process"
             + (f" ($OPENBLAS_CORETYPE={result['environment_openblas_coretype']} of this environment cleared there)"
                if result.get("environment_openblas_coretype") else ""),
             f"{'model':14s} {'batch':>5s} {'thr':>3s} {'npmobile':>9s} {'onnxrt':>8s} {'pytorch':>8s} "
             f"{'oracle':>9s} {'onnx-ref':>9s} {'npm/ort':>8s} {'ref/npm':>8s} {'x1thr':>6s}"]
    for r in [r for r in result["rows"] if "litert_ms" not in r]:
        def ms(k):
            return f"{r[k]:.1f}" if k in r else "-"
        lines.append(f"{r['arch']:14s} {r['batch']:5d} {r['threads']:3d} {ms('npmobile_ms'):>9s} "
                     f"{ms('onnxruntime_ms'):>8s} {ms('pytorch_ms'):>8s} {ms('oracle_ms'):>9s} "
                     f"{ms('onnx_reference_ms'):>9s} "
                     f"{r.get('npmobile_over_onnxruntime', float('nan')):8.2f} "
                     f"{r.get('onnx_reference_over_npmobile', float('nan')):8.0f} "
                     f"{r.get('speedup_vs_1_thread', float('nan')):6.2f}")
    lines.append("(times in ms per batch; npm/ort = npmobile / ONNX Runtime; ref/npm = ONNX reference "
                 "evaluator / npmobile; x1thr = throughput over 1 thread)")
    lines += _roofline_lines(result) + _litert_lines(result)
    return "\n".join(lines)


def _roofline_lines(result):
    lines = ["", "roofline: npmobile's GFLOP/s (2 x MACs / time) against the sgemm peak of its threads"]
    for p in result.get("probes", []):
        lines.append(f"# {p['probe']} thread(s): sgemm peak {p['sgemm_peak_gflops']:.0f} GFLOP/s per core "
                     f"(OpenBLAS's {p.get('openblas_core')} kernels); "
                     f"one parallel loop costs {p['parallel_launch_us']:.1f} us")
    for r in result["rows"]:
        if "npmobile_gflops" in r:
            lines.append(f"{r['arch']:14s} {r['batch']:5d} {r['threads']:3d} {r['npmobile_gflops']:7.1f} GFLOP/s "
                         f"{100 * r['npmobile_fraction_of_peak']:5.1f}% of peak")
    return lines


def _litert_lines(result):
    rows = [r for r in result["rows"] if "litert_ms" in r]
    if not rows:
        return []
    lines = ["", "LiteRT on the same .tflite file, batch 1 (LiteRT runs it as written: int8 for a quantized file; "
                 "npmobile on its integer engine, and dequantized on its float engine):",
             f"{'file':36s} {'thr':>3s} {'litert':>7s} {'npm int':>8s} {'int/lrt':>8s} {'npm float':>9s} "
             f"{'float/lrt':>9s} {'top-1 same (int, float)':>24s}"]

    def ms(r, name, width):
        return f"{r[name]:{width}.{1 if name.endswith('ms') else 2}f}" if name in r else f"{'-':>{width}s}"
    for r in rows:
        lines.append(f"{r['arch']:36s} {r['threads']:3d} {r['litert_ms']:7.1f} {ms(r, 'npmobile_int_ms', 8)} "
                     f"{ms(r, 'npmobile_int_over_litert', 8)} {ms(r, 'npmobile_float_ms', 9)} "
                     f"{ms(r, 'npmobile_float_over_litert', 9)} "
                     f"{str((r.get('int_top1_agrees'), r.get('float_top1_agrees'))):>24s}")
    return lines


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "litert_ms" not in r]
    peers = [("npmobile_ms", "npmobile"), ("onnxruntime_ms", "ONNX Runtime"), ("pytorch_ms", "PyTorch")]
    labels = [f"{r['arch'].replace('mobilenet_', '')}\nb{r['batch']} t{r['threads']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.27
    for j, (key, name) in enumerate(peers):
        ax.bar([i + (j - 1) * width for i in range(len(rows))],
               [1e3 * r["batch"] / r[key] if key in r else 0 for r in rows], width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("images per second")
    ax.set_title("MobileNet 1.0-224 inference on the CPU, same weights, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="npmobile bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke test")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--plot", help="write a PNG plot to this file (needs matplotlib)")
    parser.add_argument("--markdown", help="write the table as a markdown code block to this file")
    parser.add_argument("--tflite", action="append", default=[], metavar="FILE",
                        help="also time LiteRT against npmobile on this .tflite file (repeatable)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick, args.tflite)
        return 0
    result = run_all(tuple(args.threads), args.quick, args.tflite)
    print(format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```\n" + format_table(result) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
