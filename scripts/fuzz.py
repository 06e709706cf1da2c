"""The fuzz campaign of the README's "Reliability" section: seeded mutants of every weight format,
each loaded by npmobile.load in a child process under a memory cap and a timeout.

    python scripts/fuzz.py                      # 2,000 byte mutants per format + 500 structural edits
    python scripts/fuzz.py --mutants 200 --edits 50 --workers 2 --json out.json
    python scripts/fuzz.py --workers 2 --run --formats .tflite   # one row of a full run, rerun

Seeds: the real files in ../shared/assets/models (TFLite, ONNX, Keras .h5) when present, the
generated corpus's torch.export archive (.pt2) when it is built, plus small files made here: a
tiny native .npz and the native conversion of a Keras file, a tiny ONNX graph, a MobileNet(alpha=
0.25, 32x32) written by Keras itself (.h5), and a torchvision MobileNetV2 0.35 archive (.pt2).
Byte mutants flip 1-8 bytes or truncate; structural edits change one attribute, shape, weight
shape, input, op or config field of a native file's metadata, one integer attribute /
initializer dim of an ONNX graph, or one tensor's dtype, sizes, strides, offset, member or pickle
flag in a .pt2 archive.

With --run each model that loads is also run once on a zero batch, so that its kernels are
bound and run (a crash or an error deferred to the first call would count as a failure).

An outcome is "ok" (it loads, and runs with --run), "refused" (a WeightFileError), or a
failure: "exception" (any other exception), "memory" (MemoryError under the cap), "signal" (the
child died), "hang" (no answer in --timeout seconds). The script prints, per format: mutants,
each outcome, the largest peak RSS of one load (VmHWM of the child, imports included) and the
slowest load; it exits 1 on any failure, or on a peak RSS of 1 GiB or more for a mutant under
10 MB.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("KERAS_BACKEND", "torch")

import fuzzing  # noqa: E402
from crafted import (tiny_meta, tiny_onnx, tiny_params, tiny_graph, tiny_torchvision_state_dict,  # noqa: E402
                     npz_bytes, pt2_bytes)

ASSETS = ROOT.parent / "shared" / "assets" / "models"
GiB = 1 << 30


def keras_h5(folder):
    """A small MobileNet written by Keras itself (random weights)."""
    import keras
    path = Path(folder) / "keras_v1_0.25_32.h5"
    keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None, classes=10).save(path)
    return path


def corpus_pt2():
    """The generated corpus's torch.export archive (torch.export.save's own layout), when it has
    been built (tests/conftest.py's corpus fixture, scripts/make_corpus.py)."""
    from make_corpus import CACHE
    folder = Path(os.environ.get("NPMOBILE_CORPUS_DIR") or CACHE / "corpus")
    return sorted(folder.glob("*.pt2"))


def seeds(folder):
    """({suffix: {name: bytes}}, {name: (meta, params)}, {name: ModelProto} and {name:
    state_dict} for structural edits)."""
    import npmobile
    from npmobile.weights import META_KEY
    files = {".npz": {}, ".onnx": {}, ".tflite": {}, ".h5": {}, ".pt2": {}}
    if ASSETS.is_dir():
        for p in sorted(ASSETS.iterdir()):
            if p.suffix in files:
                files[p.suffix][p.name] = p.read_bytes()
    h5 = keras_h5(folder)
    files[".h5"][h5.name] = h5.read_bytes()
    files[".npz"]["tiny.npz"] = npz_bytes(tiny_meta(), tiny_params(tiny_graph()))
    native = {"tiny.npz": (tiny_meta(), tiny_params(tiny_graph()))}
    converted = Path(folder) / "keras_v1_0.25_32.npz"
    npmobile.save(converted, npmobile.load(h5))
    files[".npz"][converted.name] = converted.read_bytes()
    with np.load(converted, allow_pickle=False) as data:  # our own file, just written
        native[converted.name] = (json.loads(data[META_KEY].tobytes()), {k: data[k] for k in data.files if k != META_KEY})
    import onnx
    models = {"tiny.onnx": tiny_onnx()}
    for p in sorted(ASSETS.glob("*.onnx")) if ASSETS.is_dir() else []:
        models[p.name] = onnx.load(str(p))
    files[".onnx"]["tiny.onnx"] = models["tiny.onnx"].SerializeToString()
    pt2 = {"tiny.pt2": tiny_torchvision_state_dict()}
    files[".pt2"]["tiny.pt2"] = pt2_bytes(pt2["tiny.pt2"])
    for p in corpus_pt2():
        files[".pt2"][p.name] = p.read_bytes()
    return files, native, models, pt2


def report(results, sizes):
    """One row per format: counts by outcome, largest peak RSS, slowest load."""
    rows, failures, fat = {}, [], []
    for m, o in results:
        row = rows.setdefault(m.fmt, {"mutants": 0, "ok": 0, "refused": 0, "exception": 0, "memory": 0,
                                      "signal": 0, "hang": 0, "max_rss_mib": 0.0, "max_seconds": 0.0})
        row["mutants"] += 1
        row[o.kind] += 1
        row["max_rss_mib"] = max(row["max_rss_mib"], round(o.peak_rss / 2**20, 1))
        row["max_seconds"] = max(row["max_seconds"], round(o.seconds, 2))
        if o.failed:
            failures.append((m, o))
        if o.peak_rss >= GiB and sizes.get(m.seed, 0) < 10 << 20:
            fat.append((m, o))
    return rows, failures, fat


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutants", type=int, default=2000, help="byte mutants per format (default 2000)")
    p.add_argument("--edits", type=int, default=500, help="structural edits (default 500)")
    p.add_argument("--workers", type=int, default=1, help="child processes loading at once (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a load counts as a hang (default 30)")
    p.add_argument("--mem-limit", type=float, default=4.0, help="each child's address-space cap in GiB (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", metavar="FMT", help="load only these rows (.npz .onnx .tflite .h5 .pt2 "
                                                                "edit); the mutants are drawn as in a full run, so a "
                                                                "row's mutants are the same as there")
    p.add_argument("--run", action="store_true", help="also run each model that loads once, on a zero batch "
                                                      "(binds and runs every kernel: the integer engine too)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        files, native, models, pt2 = seeds(folder)
        sizes = {name: len(data) for group in files.values() for name, data in group.items()}
        mutants = [fuzzing.byte_mutants(files, args.mutants, rng),
                   fuzzing.edit_mutants(native, models, args.edits, rng, pt2)]
        done = [0]

        def progress(i, m, o):
            done[0] += 1
            if o.failed or done[0] % 500 == 0:
                print(f"[{done[0]}] {m.fmt} {m.seed} {m.how}: {o.kind} {o.detail[:200]!r}", flush=True)

        chosen = (m for gen in mutants for m in gen if not args.formats or m.fmt in args.formats)
        results = fuzzing.run(chosen, folder, args.workers,
                              int(args.mem_limit * GiB), args.timeout, progress, call=args.run)
    rows, failures, fat = report(results, sizes)
    print(f"\n{len(results)} loads{' and runs' if args.run else ''} in {time.time() - start:.0f} s, "
          f"{args.workers} worker(s), seed {args.seed}, timeout {args.timeout:.0f} s, cap {args.mem_limit} GiB")
    print(f"{'format':8} {'mutants':>7} {'ok':>6} {'refused':>7} {'exception':>9} {'memory':>6} {'signal':>6} "
          f"{'hang':>4} {'max RSS MiB':>11} {'max s':>6}")
    for fmt, r in rows.items():
        print(f"{fmt:8} {r['mutants']:7} {r['ok']:6} {r['refused']:7} {r['exception']:9} {r['memory']:6} "
              f"{r['signal']:6} {r['hang']:4} {r['max_rss_mib']:11} {r['max_seconds']:6}")
    for m, o in failures[:20]:
        print(f"FAILED {m.fmt} {m.seed} {m.how}: {o.kind}: {o.detail}")
    for m, o in fat[:20]:
        print(f"OVER 1 GiB {m.fmt} {m.seed} {m.how}: {o.peak_rss:,} bytes")
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "workers": args.workers, "run": args.run,
                                               "rows": rows,
                                               "failures": len(failures), "over_1_gib": len(fat)}, indent=1))
    return 1 if failures or fat else 0


if __name__ == "__main__":
    sys.exit(main())
