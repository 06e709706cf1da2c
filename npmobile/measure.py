"""What every benchmark shares, written once: pinned threads, the median timer, the torch twin of
a graph and the check that a peer computes the same network.

Used by `npmobile bench` (npmobile/bench.py), the scripts in benchmarks/ and
scripts/train_digits.py (which trains the twin). torch is imported only by the twin.
"""

import os
import statistics
import sys
import time

import numpy as np

from .io._common import from_torch, to_torch

# Every thread pool a benchmark's peers may start: numba's, OpenBLAS's, OpenMP's (torch,
# onnxruntime), MKL's; npmobile's own batch split reads NPMOBILE_NUM_THREADS.
THREAD_VARS = ("NPMOBILE_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS")


def thread_env(n, blas=None):
    """The environment of a child process whose pools all run n threads (BLAS `blas`, if given),
    and whose OpenBLAS picks its kernels for this CPU: $OPENBLAS_CORETYPE, when set, forces other
    kernels (on an AVX-512 machine told "Haswell", the AVX2 ones, at half the speed), while ONNX
    Runtime, PyTorch and LiteRT choose theirs from the CPU. The setting found is reported
    (npmobile.bench)."""
    env = dict(os.environ, **{v: str(n) for v in THREAD_VARS})
    env.pop("OPENBLAS_CORETYPE", None)
    if blas is not None:
        env["OPENBLAS_NUM_THREADS"] = str(blas)
    return env


def pin_threads(n):
    """Run every pool of this process on n threads from now on (numba, BLAS and OpenMP through
    threadpoolctl, torch when loaded, npmobile's batch split), and its children through the
    environment. Returns the thread counts read back from each pool, for the results file."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    from .model import get_num_threads, set_num_threads

    # Not NUMBA_NUM_THREADS: numba rereads it at every compile and refuses a value other than the
    # size of the pool it has launched (RuntimeError); numba.set_num_threads below limits this
    # process, and children get it from thread_env.
    os.environ.update({v: str(n) for v in THREAD_VARS if v != "NUMBA_NUM_THREADS"})
    set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    global _limits
    _limits = threadpool_limits(limits=n)  # kept: the limits last as long as this object
    settings = {"npmobile": get_num_threads(), "numba": numba.get_num_threads()}
    settings.update({f"{pool['internal_api']} ({pool['user_api']})": pool["num_threads"] for pool in threadpool_info()})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        settings["torch"] = sys.modules["torch"].get_num_threads()
    return settings


_limits = None


def median_time(fn, repeats, min_seconds=0.0):
    """(median seconds of a call, number of timed calls): one warm-up call (it absorbs numba's
    compile), then at least `repeats` timed calls and at least `min_seconds` of them, at most
    50 * repeats."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 50 * repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def check_agrees(what, out, ours, bound=1e-4):
    """A peer's output against npmobile's, relative to the peer's largest value: a benchmark
    times the same network or nothing."""
    err = float(np.abs(out - ours).max() / max(1.0, np.abs(out).max()))
    if err > bound:
        raise AssertionError(f"{what} disagrees with npmobile: {err:.3g}")


# --- the torch twin -----------------------------------------------------------------------

def torch_twin(graph, params):
    """The graph as a torch.nn.Module with the same weights, as torchvision would run it: NCHW in
    and out, batch norm unfolded, every weight a parameter in torch's layout (so the twin can be
    trained: scripts/train_digits.py does) and `twin.export()` the params back in npmobile's.
    Each node is a submodule named after it, so an ONNX export names its nodes by layer."""
    import torch

    class Layer(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.node = node
            for p in node.params:
                a = params[f"{node.name}.{p}"]
                t = torch.from_numpy(to_torch(node.op, a) if p == "w" else np.array(a, np.float32))
                if p in ("mean", "var"):  # BN running statistics: buffers, not trained
                    self.register_buffer(p, t)
                else:
                    self.register_parameter(p, torch.nn.Parameter(t))

        def forward(self, *args):
            p = {name: getattr(self, name) for name in self.node.params}
            return _torch_op(self.node, args, p, self.training)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nodes = graph.nodes
            self.layers = torch.nn.ModuleDict({_safe(n.name): Layer(n) for n in graph.nodes})

        def forward(self, x):
            values = {"input": x}
            for node in self.nodes:
                values[node.name] = self.layers[_safe(node.name)](*[values[i] for i in node.inputs])
            return values[self.nodes[-1].name]

        def export(self):
            return {f"{n.name}.{p}": np.ascontiguousarray(
                        from_torch(n.op, getattr(self.layers[_safe(n.name)], p).detach().numpy()), dtype=np.float32)
                    for n in self.nodes for p in n.params}

    return Twin().eval()


def _safe(name):  # module names may not contain "."
    return name.replace(".", "_")


def _torch_op(node, args, p, training):
    """One node in torch.nn.functional on NCHW tensors; p: its weights in torch's layout."""
    import torch.nn.functional as F

    x, a = args[0], node.attrs
    if node.op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d"):
        top, bottom, left, right = a.get("pad", (0, 0, 0, 0))
        groups = x.shape[1] if node.op == "depthwise_conv2d" else 1
        if (top, left) != (bottom, right):  # Keras' bottom/right padding: pad, then convolve
            x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
        return F.conv2d(x, p["w"], p.get("b"), stride=a.get("stride", 1), padding=(top, left), groups=groups)
    ops = {
        "batchnorm": lambda: F.batch_norm(x, p["mean"], p["var"], p["gamma"], p["beta"], training, 0.1, a["eps"]),
        "clamp": lambda: F.hardtanh(x, a["lo"], a["hi"]) if np.isfinite(a["hi"]) else x.clamp(min=a["lo"]),
        "zero_pad": lambda: F.pad(x, (a["pad"][2], a["pad"][3], a["pad"][0], a["pad"][1])),
        "add": lambda: x + args[1],
        "global_avg_pool": lambda: F.adaptive_avg_pool2d(x, 1).flatten(1),
        "global_max_pool": lambda: F.adaptive_max_pool2d(x, 1).flatten(1),
        "dense": lambda: F.linear(x, p["w"], p.get("b")),
        "softmax": lambda: F.softmax(x, dim=-1),
    }
    if node.op not in ops:
        raise ValueError(f"{node.name}: the torch twin has no op {node.op!r}")
    return ops[node.op]()
