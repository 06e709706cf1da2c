"""Fuzzing weight files: seeded mutations, and a worker process that loads each mutant under a
memory cap and a timeout, so a crash, a hang or a blow-up is an outcome to count, not the end of
the run. Used by tests/test_fuzz.py and scripts/fuzz.py.

A Worker is one long-lived child (importing numba and the readers once costs seconds) that loads
the files it is sent one at a time and answers with the outcome and the peak RSS of that load
(VmHWM, reset before each load through /proc/self/clear_refs). A load that does not answer in
`timeout` seconds is a hang: the child is killed and the next load starts a new one.
"""

import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import gc, json, os, resource, sys, time, traceback
os.environ.setdefault("KERAS_BACKEND", "torch")
import numpy as np
import npmobile
for name in ("onnx", "onnx.reference", "tflite", "h5py"):
    try:
        __import__(name)
    except ImportError:
        pass
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    try:
        model = npmobile.load(req["path"])
        if req["run"]:
            model(np.zeros((1, *model.graph.input_shape), np.float32))
        kind, detail = "ok", ""
    except MemoryError:
        kind, detail = "memory", traceback.format_exc()[-1500:]
    except npmobile.WeightFileError as e:
        kind, detail = "refused", str(e)[:1500]
    except BaseException as e:
        kind, detail = "exception", traceback.format_exc()[-1500:]
    model = None
    print(json.dumps({"kind": kind, "detail": detail, "peak_rss": hwm(),
                      "seconds": time.perf_counter() - start}), flush=True)
"""


class Outcome(NamedTuple):
    kind: str  # ok | refused (a WeightFileError) | exception | memory | signal | hang
    detail: str
    peak_rss: int  # bytes, the child's peak during this load (0 when it died)
    seconds: float

    @property
    def failed(self):
        return self.kind not in ("ok", "refused")


class Worker:
    """Loads files in a child process capped at `mem_limit` bytes of address space."""

    def __init__(self, mem_limit=2 << 30, timeout=30.0):
        self.mem_limit, self.timeout, self.proc = mem_limit, timeout, None

    def _start(self):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("NUMBA_NUM_THREADS", "1")  # one core per worker: a campaign runs several
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(self.mem_limit)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        if self._answer(300.0) is None:
            raise RuntimeError("the fuzz worker did not start")

    def _answer(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        return json.loads(line) if line else None

    def load(self, path, run=False):
        """The Outcome of npmobile.load(path) (and one call of the model when run=True)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        start = time.perf_counter()
        try:
            self.proc.stdin.write((json.dumps({"path": str(path), "run": run}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self._answer(self.timeout)
        if answer is not None:
            return Outcome(answer["kind"], answer["detail"], answer["peak_rss"], answer["seconds"])
        elapsed = time.perf_counter() - start
        code = self.proc.poll()
        if code is None:  # still running: a hang
            self.close()
            return Outcome("hang", f"no answer after {self.timeout:.0f} s", 0, elapsed)
        self.proc = None
        kind = "signal" if code < 0 else "exception"
        return Outcome(kind, f"the worker died with {'signal ' + str(-code) if code < 0 else 'exit ' + str(code)}",
                       0, elapsed)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --- mutations -----------------------------------------------------------------------------------

def flip_bytes(data, rng):
    """1..8 bytes xor-ed with a random non-zero value, anywhere in the file."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(out)))
        out[i] ^= int(rng.integers(1, 256))
    return bytes(out)


def truncate(data, rng):
    return data[:int(rng.integers(0, len(data)))]


def mutate_bytes(data, rng):
    """A byte-level mutant: flips (three times in four) or a truncation."""
    return truncate(data, rng) if rng.random() < 0.25 else flip_bytes(data, rng)


INTERESTING = [0, 1, -1, 2, 3, 7, 64, 65, 255, 2**31 - 1, 2**31, 2**62 - 1, 2**63 - 1, -2**63, 10**12, 0.5, -0.0,
               1e-30, math.nan, math.inf, -math.inf, None, "x", [], [1], [0, 0, 0, 0], [2**63 - 3, 0, 0, 0],
               [-1, 0, 0, 0], [1, 1, 1, 1], True, {}]


def interesting(rng):
    return INTERESTING[int(rng.integers(len(INTERESTING)))]


def edit_meta(meta, rng):
    """One structural edit of a native file's metadata: a node's attribute, shape, weight shape,
    input or op, or a config field. Returns a description."""
    nodes = meta["graph"]["nodes"]
    n = nodes[int(rng.integers(len(nodes)))]
    choice = int(rng.integers(8))
    if choice <= 2:
        key = ["stride", "pad", "eps", "lo", "hi", "clamp"][int(rng.integers(6))] if choice == 0 or not n["attrs"] \
            else list(n["attrs"])[int(rng.integers(len(n["attrs"])))]
        n["attrs"][key] = interesting(rng)
        return f"{n['name']}.attrs.{key}"
    if choice == 3 and n["shape"]:
        n["shape"][int(rng.integers(len(n["shape"])))] = interesting(rng)
        return f"{n['name']}.shape"
    if choice == 4 and n["params"]:
        p = list(n["params"])[int(rng.integers(len(n["params"])))]
        n["params"][p][int(rng.integers(len(n["params"][p])))] = interesting(rng)
        return f"{n['name']}.params.{p}"
    if choice == 5:
        other = nodes[int(rng.integers(len(nodes)))]["name"]
        n["inputs"] = [other] if rng.random() < 0.5 else [other, "input"]
        return f"{n['name']}.inputs"
    if choice == 6:
        n["op"] = ["conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense", "add", "softmax", "zero_pad",
                   "clamp", "batchnorm", "global_avg_pool", "nope"][int(rng.integers(11))]
        return f"{n['name']}.op"
    key = ["resolution", "classes", "preprocess", "output"][int(rng.integers(4))]
    if key == "preprocess":
        field = ["mean", "std", "crop"][int(rng.integers(3))]
        meta["config"]["preprocess"][field] = interesting(rng)
        return f"config.preprocess.{field}"
    if rng.random() < 0.5:
        meta["graph"]["input_shape"][int(rng.integers(3))] = interesting(rng)
        return "graph.input_shape"
    meta["config"][key] = interesting(rng)
    return f"config.{key}"


def edit_onnx(model, rng):
    """One structural edit of an ONNX model (an onnx.ModelProto, edited in place): an integer
    attribute of a node, or the dims of an initializer. Returns a description."""
    from onnx import AttributeProto
    nodes = [n for n in model.graph.node if any(a.type in (AttributeProto.INT, AttributeProto.INTS)
                                                 for a in n.attribute)]
    values = [0, 1, -1, 2, 3, 65, 2**31, 2**62 - 1, 2**63 - 1, -2**63]
    if nodes and rng.random() < 0.8:
        n = nodes[int(rng.integers(len(nodes)))]
        attrs = [a for a in n.attribute if a.type in (AttributeProto.INT, AttributeProto.INTS)]
        a = attrs[int(rng.integers(len(attrs)))]
        if a.type == AttributeProto.INT:
            a.i = values[int(rng.integers(len(values)))]
        elif len(a.ints):
            a.ints[int(rng.integers(len(a.ints)))] = values[int(rng.integers(len(values)))]
        return f"{n.name or n.op_type}.{a.name}"
    inits = list(model.graph.initializer)
    t = inits[int(rng.integers(len(inits)))]
    if len(t.dims):
        t.dims[int(rng.integers(len(t.dims)))] = values[int(rng.integers(len(values)))] % (2**40)
    return f"initializer {t.name}.dims"


def edit_pt2(doc, rng):
    """One structural edit of a torch.export archive's model_weights_config.json (a dict, edited
    in place): a tensor's dtype, sizes, strides, offset, member name or pickle flag. Returns a
    description."""
    config = doc["config"]
    key = sorted(config)[int(rng.integers(len(config)))]
    entry, meta = config[key], config[key]["tensor_meta"]
    field = ["dtype", "sizes", "strides", "storage_offset", "path_name", "use_pickle"][int(rng.integers(6))]
    value = interesting(rng)
    if field in ("sizes", "strides") and meta[field] and rng.random() < 0.7:
        meta[field][int(rng.integers(len(meta[field])))] = {"as_int": value}
    elif field == "storage_offset" and rng.random() < 0.7:
        meta[field] = {"as_int": value}
    else:
        (meta if field in meta else entry)[field] = value
    return f"{key}.{field}"


def summarize(outcomes):
    """Counts by kind, the largest peak RSS, the slowest load."""
    kinds = {}
    for o in outcomes:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    return {"mutants": len(outcomes), "kinds": kinds, "max_peak_rss": max((o.peak_rss for o in outcomes), default=0),
            "max_seconds": max((o.seconds for o in outcomes), default=0.0)}


# --- a campaign: many mutants of many seeds, loaded by a few workers ---------------------------------

class Mutant(NamedTuple):
    fmt: str  # ".npz", ".onnx", ".tflite", ".h5", ".pt2", or "edit" for structural edits
    seed: str  # the seed file's name
    how: str  # "bytes" or the edit's description
    data: bytes


def byte_mutants(seeds, count, rng):
    """`count` byte-level mutants of each format's seeds ({suffix: {name: bytes}}), round-robin."""
    for fmt, files in seeds.items():
        names = sorted(files)
        for i in range(count):
            name = names[i % len(names)]
            yield Mutant(fmt, name, "bytes", mutate_bytes(files[name], rng))


def edit_mutants(native, onnx_models, count, rng, pt2=None):
    """`count` structural edits: native metadata ({name: (meta, params)}), ONNX attributes
    ({name: ModelProto}) and, when given, a torch.export archive's tensor metadata ({name:
    state_dict}), in turn: two native edits for each of the others."""
    import copy

    from crafted import npz_bytes, pt2_bytes
    kinds = ["native", "native", "onnx"] + (["pt2"] if pt2 else [])
    for i in range(count):
        kind = kinds[i % len(kinds)] if onnx_models or kinds[i % len(kinds)] != "onnx" else "native"
        group = {"native": native, "onnx": onnx_models, "pt2": pt2}[kind]
        name = sorted(group)[i % len(group)]
        if kind == "native":
            meta, params = group[name]
            meta = copy.deepcopy(meta)
            how = edit_meta(meta, rng)
            yield Mutant("edit", name, how, npz_bytes(meta, params))
        elif kind == "onnx":
            model = copy.deepcopy(group[name])
            how = edit_onnx(model, rng)
            yield Mutant("edit", name, how, model.SerializeToString())
        else:
            how = []
            data = pt2_bytes(group[name], lambda doc, members: how.append(edit_pt2(doc, rng)))
            yield Mutant("edit", name, how[0], data)


def run(mutants, folder, workers=1, mem_limit=2 << 30, timeout=30.0, progress=None, call=False):
    """Load every mutant in `workers` child processes (and, with call=True, run each model that
    loads once on a zero batch); returns [(Mutant without its bytes, Outcome)] in order. Mutants
    are drawn a few at a time (a campaign's bytes would not fit)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local, pool = threading.local(), []

    def one(job):
        i, m = job
        if not hasattr(local, "worker"):
            local.worker = Worker(mem_limit, timeout)
            pool.append(local.worker)
        suffix = Path(m.seed).suffix if m.fmt == "edit" else m.fmt
        path = Path(folder) / f"mutant_{i}{suffix}"
        path.write_bytes(m.data)
        try:
            outcome = local.worker.load(path, run=call)
        finally:
            path.unlink()
        if progress:
            progress(i, m, outcome)
        return m._replace(data=b""), outcome

    results, batch = [], []
    try:
        with ThreadPoolExecutor(workers) as ex:
            for job in enumerate(mutants):
                batch.append(job)
                if len(batch) == 4 * workers:
                    results += ex.map(one, batch)
                    batch = []
            results += ex.map(one, batch)
        return results
    finally:
        for w in pool:
            w.close()
