"""Throughput of `npmobile classify` on a folder of 1,000+ photos, against two separate processes.

    python benchmarks/pipeline.py [--files 1150] [--repeat 3] [--weights FILE] [--dask] [--save]

The 115 photos of ../shared/assets (imagenet-dev-100 and photos) are linked (symlinks in a
temporary folder, never in the repository) over and over up to --files names. Each peer is a
fresh process (or two), timed from launch to exit (model loading included: once per process),
all in one run, interleaved, best of --repeat:

- serial loop: what `classify` did before the pipeline: read one image after the other, run each
  full batch on the same thread (OPENBLAS_NUM_THREADS=1, the setting it needed, and
  NUMBA_NUM_THREADS=1: the kernels' parallel loops would otherwise use every core);
- classify --threads 1 and --threads 2: the pipeline, with no thread variable set (its defaults);
- 2 processes: two `classify --threads 1` processes at once, each on half the files.

With --dask, the same files through `npmobile.distributed.classify(engine="dask", workers=2)`
(a local cluster started for it): seconds from starting the cluster to the first batch's rows,
and images/s including the cluster's start.

The model is MobileNetV2-1.0-224 from the uint8 TFLite file in the assets, run as every peer
loads it by default: on the integer engine. Results go to stdout; --save writes
benchmarks/results/pipeline.json and pipeline.md as well.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
RESULTS = ROOT / "benchmarks" / "results"
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "NPMOBILE_NUM_THREADS")


def link_photos(folder, count):
    """count symlinks to the asset photos, split into folder/a and folder/b (half each)."""
    photos = sorted(p for d in ("imagenet-dev-100", "photos") for p in (ASSETS / d).iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    for i in range(count):
        half = folder / ("a" if i < count // 2 else "b")
        half.mkdir(exist_ok=True)
        src = photos[i % len(photos)]
        (half / f"{i:05d}_{src.name}").symlink_to(src)
    return len(photos)


def serial_loop(weights, folder, batch_size):
    """The loop `classify` ran before the pipeline: decode, then infer, on one thread."""
    import npmobile
    from npmobile.classify import iter_paths, predictor, reader

    model = npmobile.load(weights)
    read, infer, batch = reader(model), predictor(model, 1), []
    for path, _ in iter_paths([folder]):
        image, reason = read(path)
        if reason is None:
            batch.append(image)
        if len(batch) == batch_size:
            infer(batch)
            batch = []
    if batch:
        infer(batch)


def timed(commands, env):
    """Run the commands at once; seconds from the first launch to the last exit."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError(f"a peer failed: {commands}")
    return time.perf_counter() - start


def peers(weights, folder, batch_size):
    """name -> (commands run at once, extra environment)."""
    classify = [sys.executable, "-m", "npmobile", "classify", "--weights", str(weights), "--top", "1", "--csv",
                "--batch-size", str(batch_size)]
    serial = [sys.executable, __file__, "--serial-loop", str(folder), "--weights", str(weights),
              "--batch-size", str(batch_size)]
    return {
        # One thread for everything: BLAS, and numba's parallel loops (the kernels split each layer
        # across numba's threads, which default to every core).
        "serial loop, 1 thread (before the pipeline)": ([serial], {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}),
        "classify --threads 1": ([classify + ["--threads", "1", str(folder)]], {}),
        "classify --threads 2": ([classify + ["--threads", "2", str(folder)]], {}),
        "2 processes, --threads 1 each, half the files each": (
            [classify + ["--threads", "1", str(folder / h)] for h in "ab"], {}),
    }


def run_dask(weights, folder, batch_size, tmp):
    """The files on a 2-worker local Dask cluster: first-result latency and throughput."""
    from npmobile.classify import iter_paths
    from npmobile.distributed import classify

    paths = [p for p, _ in iter_paths([str(folder)])]
    start = time.perf_counter()
    counts = classify(paths, weights, f"{tmp}/dask-out", engine="dask", workers=2, batch_size=batch_size)
    return {"first_result_s": counts["first_result_s"], "images_per_s": len(paths) / (time.perf_counter() - start)}


def measure(args):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory(prefix="npmobile-pipeline-") as tmp:
        folder = Path(tmp)
        distinct = link_photos(folder, args.files)
        table = peers(args.weights, folder, args.batch_size)
        best = {}
        load_before = os.getloadavg()
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every peer alike
            for name, (commands, extra) in table.items():
                seconds = timed(commands, {**env, **extra})
                best[name] = min(best.get(name, float("inf")), seconds)
        dask = run_dask(args.weights, folder, args.batch_size, tmp) if args.dask else None
    return {"dask": dask, "files": args.files, "distinct_photos": distinct, "batch_size": args.batch_size,
            "weights": Path(args.weights).name, "repeat": args.repeat, "cores": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "images_per_s": {name: args.files / s for name, s in best.items()}}


def markdown(r):
    rates = r["images_per_s"]
    two_proc = rates["2 processes, --threads 1 each, half the files each"]
    lines = [f"{r['files']} files ({r['distinct_photos']} distinct photos), {r['weights']} on the integer engine, "
             f"batch {r['batch_size']}, best of {r['repeat']}, {r['cores']} cores, load average "
             f"{r['loadavg_before'][0]:.2f} before / {r['loadavg_after'][0]:.2f} after", "",
             "| run | images/s | vs 2 processes |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:.1f} | {rate / two_proc:.2f} |" for name, rate in rates.items()]
    if r["dask"]:
        d = r["dask"]
        lines.append(f"| Dask, 2 workers (cluster start included; first rows after {d['first_result_s']:.1f} s) "
                     f"| {d['images_per_s']:.1f} | {d['images_per_s'] / two_proc:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=str(ASSETS / "models" / "mobilenet_v2_1.0_224_quant.tflite"))
    p.add_argument("--files", type=int, default=1150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dask", action="store_true", help="also time a 2-worker local Dask cluster")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/pipeline.{json,md}")
    p.add_argument("--serial-loop", metavar="FOLDER", help=argparse.SUPPRESS)  # one peer, run as its own process
    args = p.parse_args(argv)
    if args.serial_loop:
        return serial_loop(args.weights, args.serial_loop, args.batch_size)
    result = measure(args)
    text = markdown(result)
    print(text, end="")
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "pipeline.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
