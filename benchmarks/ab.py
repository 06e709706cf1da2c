"""A/B: two commits of npmobile timed in one process, on the same weights and inputs, interleaved.

    python benchmarks/ab.py [--base 7dad714] [--head HEAD] [--threads 1 2] [--rounds 9] [--save]

Each commit's package is extracted (`git archive`) to a temporary folder and imported under its
own name (npmobile_base, npmobile_head: the package imports itself only relatively), so both run
in one process on one set of thread pools. For MobileNetV1/V2-1.0-224 at batch 1 and 8, the two
engines are timed in turns, `--rounds` rounds of about 0.3 s each; a moment of load on the
machine slows the base and the head alike. Printed per row: the median time of each, the median
of the per-round ratios head/base and their range (the noise). Each thread count runs in its own
process, pinned before numpy loads (npmobile.measure.thread_env: NUMBA_NUM_THREADS, OMP, MKL =
t, OpenBLAS 1 thread per call). The outputs of the two are checked against each other first.
--save writes benchmarks/results/ab.md (never overwritten unless asked).
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = [("mobilenet_v1", 1), ("mobilenet_v1", 8), ("mobilenet_v2", 1), ("mobilenet_v2", 8)]


def extract(rev, folder):
    """The package `npmobile/` of commit `rev`, written below `folder`; returns its path."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "npmobile"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return Path(folder) / "npmobile"


def import_as(name, package_dir):
    """Import the package in package_dir under `name` (its relative imports follow)."""
    spec = importlib.util.spec_from_file_location(name, package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build(pkg, arch, seed=1):
    """Model of `arch` (1.0, 224, torch convention) with random weights drawn by the package."""
    try:  # architectures.py since 2026-11-30; models.py before
        random_params = importlib.import_module(f"{pkg.__name__}.architectures").random_params
    except ModuleNotFoundError:
        random_params = importlib.import_module(f"{pkg.__name__}.models").random_params
    graph = getattr(pkg, arch)(1.0, 224, convention="torch")
    return pkg.Model(graph, random_params(graph, seed=seed))


def worker(threads, base_dir, head_dir, rounds):
    import numpy as np

    pkgs = {"base": import_as("npmobile_base", Path(base_dir)), "head": import_as("npmobile_head", Path(head_dir))}
    for pkg in pkgs.values():
        pkg.set_num_threads(threads)
    for arch, batch in CASES:
        models = {k: build(pkg, arch) for k, pkg in pkgs.items()}
        x = np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype(np.float32)
        outs = {k: m(x) for k, m in models.items()}
        scale = max(1.0, float(np.abs(outs["base"]).max()))
        assert np.abs(outs["head"] - outs["base"]).max() <= 1e-4 * scale, f"{arch}: the two commits disagree"
        times = {"base": [], "head": []}
        for _ in range(rounds):
            for k, m in models.items():
                m(x)
                n, t0 = 0, time.perf_counter()
                while n < 3 or time.perf_counter() - t0 < 0.3:
                    m(x)
                    n += 1
                times[k].append((time.perf_counter() - t0) / n)
        ratios = [h / b for h, b in zip(times["head"], times["base"])]
        print(json.dumps(dict(arch=arch, batch=batch, threads=threads,
                              base_ms=1e3 * statistics.median(times["base"]),
                              head_ms=1e3 * statistics.median(times["head"]),
                              ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))),
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="7dad714")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("THREADS", "BASE_DIR", "HEAD_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(int(args.worker[0]), args.worker[1], args.worker[2], args.rounds)
        return 0

    import os

    from npmobile.measure import thread_env

    revs = {k: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", r], check=True, capture_output=True,
                              text=True).stdout.strip() for k, r in (("base", args.base), ("head", args.head))}
    load = [os.getloadavg()[0]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: extract(rev, Path(tmp) / k) for k, rev in revs.items()}
        for t in args.threads:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(t), str(dirs["base"]),
                   str(dirs["head"]), "--rounds", str(args.rounds)]
            out = subprocess.run(cmd, env=thread_env(t, blas=1), check=True, stdout=subprocess.PIPE, text=True).stdout
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    load.append(os.getloadavg()[0])
    lines = [f"# A/B in one process per thread count: base {revs['base']}, head {revs['head']}; "
             f"{args.rounds} interleaved rounds; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end",
             f"{'model':14s} {'batch':>5s} {'thr':>3s} {'base ms':>8s} {'head ms':>8s} {'head/base':>9s} {'range':>13s}"]
    for r in rows:
        lines.append(f"{r['arch']:14s} {r['batch']:5d} {r['threads']:3d} {r['base_ms']:8.2f} {r['head_ms']:8.2f} "
                     f"{r['ratio']:9.3f} {r['ratio_min']:6.3f}-{r['ratio_max']:.3f}")
    text = "\n".join(lines)
    print(text)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ab.md").write_text("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
