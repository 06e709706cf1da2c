"""End-to-end speed of the integer engine against LiteRT and ONNX Runtime on quantized files.

    python benchmarks/quantized_e2e.py [--quick] [--threads 1 2] [--save]

For each uint8 TFLite MobileNet in ../shared/assets/models, batch 1, it times on the same file
and the same pixels (a photo, centre-cropped and resized):
- npmobile's integer engine, model.run_integers (median of repeated calls after a warm-up),
- LiteRT's default interpreter (its optimized kernels and the XNNPACK delegate), num_threads=t,
and for the ONNX zoo's int8 MobileNetV2 (a different file of the same network): npmobile's integer
engine (model(x): the float input quantized, the QLinear graph, the output dequantized) against
ONNX Runtime, intra_op_num_threads=t, on the same float input. npmobile's output is first checked
byte for byte against LiteRT's reference kernels (one call each), and against ONNX Runtime's
(within one quantum, the same top-1), so the times are of the same integers.

Each thread count runs in its own process whose settings are pinned before numpy loads:
NUMBA_NUM_THREADS=NPMOBILE_NUM_THREADS=t, OPENBLAS_NUM_THREADS=1: npmobile's convolutions split
each layer over numba's t threads (on VNNI: blocks of rows; on sgemm, each block's call on one
OpenBLAS thread); its additions and conversions run on one. The ratio npmobile / LiteRT of each
row comes from that same process.
Prints a table; --save writes benchmarks/results/quantized-e2e.json and .md (the README quotes
the .md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
RESULTS = ROOT / "benchmarks" / "results"
TFLITE = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"]
ONNX_INT8 = "mobilenetv2-12-int8.onnx"


def _median_ms(fn, quick):
    """Medians of repeated calls after a warm-up, at least 5 (3 quick) over about 2 s (0.3 s
    quick): (wall ms, CPU ms of the whole process, runs). On a shared, loaded machine the wall
    time counts the time other processes held the core; the CPU time counts only this work (all
    of it: every thread of the process), so with one thread it is the fairer figure."""
    fn()
    walls, cpus, start = [], [], time.perf_counter()
    while len(walls) < (3 if quick else 5) or time.perf_counter() - start < (0.3 if quick else 2.0):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return 1e3 * statistics.median(walls), 1e3 * statistics.median(cpus), len(walls)


def _pixels(assets, resolution):
    import numpy as np
    from PIL import Image

    from npmobile.preprocess import center_crop_resize
    rgb = np.asarray(Image.open(assets / "photos" / "chelsea.png").convert("RGB"))
    return center_crop_resize(rgb, resolution, 0.875)[None]


def _tflite_row(path, threads, quick):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from npmobile.io import load
    model = load(path)
    pixels = _pixels(path.parent.parent, model.config.resolution)
    ours = model.run_integers(pixels)
    interpreters = {}
    for kind in ("reference", "default"):
        resolver = OpResolverType.BUILTIN_REF if kind == "reference" else OpResolverType.AUTO
        it = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], pixels)
        it.invoke()
        interpreters[kind] = it
    ref = interpreters["reference"].get_tensor(interpreters["reference"].get_output_details()[0]["index"])
    if not (ours == ref).all():
        raise AssertionError(f"{path.name}: npmobile's output differs from LiteRT's reference kernels")
    row = dict(model=path.name, batch=1, threads=threads)
    row["npmobile_ms"], row["npmobile_cpu_ms"], row["npmobile_runs"] = _median_ms(
        lambda: model.run_integers(pixels), quick)
    row["litert_ms"], row["litert_cpu_ms"], row["litert_runs"] = _median_ms(interpreters["default"].invoke, quick)
    row["npmobile_over_litert"] = row["npmobile_ms"] / row["litert_ms"]
    row["npmobile_over_litert_cpu"] = row["npmobile_cpu_ms"] / row["litert_cpu_ms"]
    return row


def _onnx_row(path, threads, quick):
    import numpy as np
    import onnxruntime as ort

    from npmobile.io import load
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = load(path)  # the integer engine
    x = model.preprocess(_pixels(path.parent.parent, 224))
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    name = session.get_inputs()[0].name
    ours, theirs = model(x), session.run(None, {name: x_nchw})[0]
    quanta = np.abs(ours.astype(np.float64) - theirs) / model.quant[model.graph.output][0]
    if quanta.max() > 1.5 or ours.argmax() != theirs.argmax():
        raise AssertionError(f"{path.name}: npmobile's output is {quanta.max():.0f} quanta from ONNX Runtime's")
    row = dict(model=path.name, batch=1, threads=threads)
    row["npmobile_ms"], row["npmobile_cpu_ms"], row["npmobile_runs"] = _median_ms(lambda: model(x), quick)
    row["onnxruntime_ms"], row["onnxruntime_cpu_ms"], row["onnxruntime_runs"] = _median_ms(
        lambda: session.run(None, {name: x_nchw}), quick)
    row["npmobile_over_onnxruntime"] = row["npmobile_ms"] / row["onnxruntime_ms"]
    row["npmobile_over_onnxruntime_cpu"] = row["npmobile_cpu_ms"] / row["onnxruntime_cpu_ms"]
    return row


def worker(threads, quick, assets):
    for name in TFLITE:
        print(json.dumps(_tflite_row(assets / "models" / name, threads, quick)), flush=True)
    if (assets / "models" / ONNX_INT8).is_file():
        print(json.dumps(_onnx_row(assets / "models" / ONNX_INT8, threads, quick)), flush=True)


def run_all(thread_counts, quick, assets):
    rows = []
    for t in thread_counts:
        env = dict(os.environ, NUMBA_NUM_THREADS=str(t), NPMOBILE_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
        cmd = [sys.executable, __file__, "--worker", str(t), "--assets", str(assets)] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        rows += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return dict(rows=rows, load=os.getloadavg(), threads=(
        "per process: NUMBA_NUM_THREADS=NPMOBILE_NUM_THREADS=t, OPENBLAS_NUM_THREADS=1; LiteRT num_threads=t; "
        "ONNX Runtime intra_op_num_threads=t, inter_op_num_threads=1"))


def format_table(result):
    lines = [f"# threads: {result['threads']}",
             f"# load average during the run (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in result['load'])}",
             f"{'model':36s} {'thr':>3s} {'npmobile':>15s} {'litert':>13s} {'onnxrt':>13s} {'npm/peer':>11s}"]
    for r in result["rows"]:
        def ms(k):
            return f"{r[k + '_ms']:.2f} ({r[k + '_cpu_ms']:.2f})" if k + "_ms" in r else "-"

        def ratio(k):
            return f"{r[k]:.2f}" if k in r else "-"
        peer = "litert" if "npmobile_over_litert" in r else "onnxruntime"
        lines.append(f"{r['model']:36s} {r['threads']:3d} {ms('npmobile'):>15s} {ms('litert'):>13s} "
                     f"{ms('onnxruntime'):>13s} {ratio('npmobile_over_' + peer):>5s} "
                     f"({ratio(f'npmobile_over_{peer}_cpu')})")
    lines.append("(ms per image, batch 1, wall (CPU of the process); npm/peer = npmobile's integer engine / the "
                 "file's runtime on the same file, wall (CPU): LiteRT's default interpreter for .tflite, ONNX "
                 "Runtime for the ONNX zoo's int8 MobileNetV2)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke test")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--assets", type=Path, default=ASSETS)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/quantized-e2e.json and .md")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.quick, args.assets)
        return 0
    result = run_all(args.threads, args.quick, args.assets)
    table = format_table(result)
    print(table)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "quantized-e2e.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "quantized-e2e.md").write_text("```\n" + table + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
