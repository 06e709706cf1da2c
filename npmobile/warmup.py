"""`npmobile warmup`: compile every kernel loop into numba's cache ahead of time.

Each numba loop is compiled the first time it runs, for the types it meets, and written to the
cache (`cache=True`, kernels/_jit.py): into `__pycache__` beside the source, or NUMBA_CACHE_DIR
when that is set or the source folder is read-only. A container image or a cluster node that runs
`npmobile warmup` once at build time starts every later process without compiling: the first
inference then takes milliseconds instead of seconds, on every worker.

Warm-up runs small float models that between them reach every float loop (MobileNetV1 and V2 in
each convention, with and without their classifier, batches of one and two, with and without
intermediates, and the layers an imported graph may keep unfused), then every weight file given
with --weights (a quantized .tflite reaches the integer loops), and names the loops none of
these reached: they compile on first use. A loop called only from other loops (the 3x3
depthwise's parts, the fixed-point helpers) is compiled into its callers and is never "reached"
on its own.

A cache is only valid for the CPU it was compiled on: numba compiles for the host's instruction
set and records it, and a process on another CPU model recompiles (or, sharing a writable cache,
rewrites it). A shared NUMBA_CACHE_DIR is therefore safe between machines of the same CPU model
and the same numba and npmobile versions, e.g. the nodes of one homogeneous cluster; give each
CPU model a cache of its own otherwise.
"""

import sys

import numpy as np


def dispatchers():
    """Every numba loop in the kernel modules imported so far, each once (under the module that
    defines it, however many import it): {"module.function": dispatcher}."""
    from numba.core.registry import CPUDispatcher

    from . import kernels
    prefix = kernels.__name__ + "."
    found = {f"{f.py_func.__module__[len(prefix):]}.{f.__name__}": f
             for name, module in list(sys.modules.items()) if name.startswith(prefix)
             for f in vars(module).values() if isinstance(f, CPUDispatcher)}
    return dict(sorted(found.items()))


def compiled_here():
    """How many loop signatures this process compiled (cache misses) rather than loaded."""
    return sum(sum(d.stats.cache_misses.values()) for d in dispatchers().values())


def _models():
    from .model import Model
    from .architectures import mobilenet_v1, mobilenet_v2
    rng = np.random.default_rng(0)
    for build in (mobilenet_v1, mobilenet_v2):
        for convention in ("keras", "torch", "tfslim"):
            for head in ({}, {"include_top": False, "pooling": "avg"}, {"include_top": False, "pooling": "max"}):
                graph = build(0.35, 32, convention=convention, **head)
                params = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in graph.param_shapes().items()}
                for k in params:
                    if k.endswith(".var"):
                        params[k] = np.abs(params[k]) + 1
                yield Model(graph, params)


def _unfused_layers():
    """The layers an imported graph may keep on their own (the fast engine fuses them into the
    convolution before them in the built models), a convolution with many input channels and a
    depthwise window other than MobileNet's 3x3."""
    from .kernels import KERNELS
    x = np.ones((1, 6, 6, 16), dtype=np.float32)
    c = np.ones(16, dtype=np.float32)
    KERNELS["zero_pad"].fast(x, pad=(1, 1, 1, 1))
    KERNELS["batchnorm"].fast(x, c, c, c, c, eps=1e-3)
    KERNELS["clamp"].fast(x, lo=0.0, hi=6.0)
    KERNELS["conv2d"].fast(x, np.ones((3, 3, 16, 8), dtype=np.float32), c[:8], stride=1, pad=(1, 1, 1, 1))
    KERNELS["depthwise_conv2d"].fast(x, np.ones((5, 5, 16), dtype=np.float32), c, stride=1, pad=(2, 2, 2, 2))


def warmup(weights=()):
    """Run every float loop once, then each weight file's model on batches of one and two;
    returns (loops, names of those not reached). Compiled code goes to the cache."""
    from .io import load
    x = np.zeros((2, 32, 32, 3), dtype=np.float32)
    for model in _models():
        for batch in (x[:1], x):
            model(batch, threads=1)
            model.run(batch, intermediates=True)
    _unfused_layers()
    for path in weights:
        model = load(path)
        h, w, c = model.graph.input_shape
        model(np.zeros((2, h, w, c), dtype=np.float32), threads=1)
        model(np.zeros((1, h, w, c), dtype=np.float32), threads=1)
    loops = dispatchers()
    return len(loops), sorted(name for name, d in loops.items() if not d.signatures)


def add_parser(sub):
    p = sub.add_parser("warmup", help="compile every kernel into numba's cache (for images and cluster nodes)",
                       description=__doc__.split("\n\n")[1] + " NUMBA_CACHE_DIR chooses where the cache goes; "
                       "sharing it is safe only between machines of the same CPU model.")
    p.add_argument("--weights", nargs="*", default=[], metavar="FILE",
                   help="weight files to run once as well (a quantized .tflite reaches the integer loops)")
    p.set_defaults(func=cmd_warmup)


def cmd_warmup(args):
    loops, missed = warmup(args.weights)
    print(f"npmobile warmup: {loops - len(missed)} of {loops} kernel loops ready in numba's cache "
          f"({compiled_here()} signatures compiled now, the rest were cached already)")
    if missed:
        print(f"not reached (compiled on first use, or only inside other loops): {', '.join(missed)}")
    return 0
