"""`Model`: a graph, its weights and its labels, callable on a batch.

    model(x)                                             the fast engine: what the graph outputs
    model.run(x, oracle=True, intermediates=True)        the float64 oracles, every layer by name

Both go through `engine.Plan`. Reading and writing files is not the model's business: see
`npmobile.load` and `npmobile.weights.save`.
"""

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import engine, validate
from .preprocess import preprocess_batch

_num_threads = int(os.environ.get("NPMOBILE_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS") or 1)
_pool, _pool_size = None, 0
_pool_lock = threading.Lock()

# A batch runs through a Plan at most PLAN_BATCH images at a time. Two images keep the activations
# of MobileNet-224's large layers closer to the cache than eight do: measured 2.5-6% faster per
# image than whole batches of 8 or 32 on V1/V2-224. And a Plan's buffers stay the size of two
# images however large the batch (8.4 MB per image for V2-224: 270 MB at Keras' predict batch of 32).
PLAN_BATCH = 2


def set_num_threads(n):
    """How many threads a model call may use: a batch of several images is split into that many
    parts that run at once (the kernels release the GIL). Default: $NPMOBILE_NUM_THREADS, else
    $NUMBA_NUM_THREADS, else 1. Splitting the batch costs nothing per layer, unlike splitting
    each layer; a batch of one runs on one thread. Keep BLAS to one thread per part
    (OPENBLAS_NUM_THREADS=1), or the two thread pools fight over the cores."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, found {n!r}")
    _num_threads = n


def get_num_threads():
    return _num_threads


def _executor():
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < _num_threads:  # grown, never shrunk: extra idle workers cost nothing
            if _pool is not None:
                _pool.shutdown(wait=False)  # its running parts finish; no new work goes to it
            _pool, _pool_size = ThreadPoolExecutor(max_workers=_num_threads, thread_name_prefix="npmobile"), _num_threads
        return _pool


LAYOUTS = ("NHWC", "NCHW")


def softmax(z):
    """exp(z) / sum(exp(z)) along the last axis, computed on z - max(z) so that exp cannot overflow."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def as_nhwc(graph, x, layout):
    """A batch given in `layout` ("NHWC", the default, or "NCHW" as torch and ONNX hold images) as
    the NHWC batch the engine runs, with one error naming the expected and the found shape."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, found {layout!r}")
    x = np.asarray(x)
    h, w, c = graph.input_shape
    expected = (h, w, c) if layout == "NHWC" else (c, h, w)
    if x.ndim == 4 and x.shape[1:] == expected:
        return x if layout == "NHWC" else x.transpose(0, 2, 3, 1)
    hint = ""
    if x.ndim == 3 and x.shape == expected:
        hint = ": that is one image; add the batch axis, x[None] (a batch of one), as Keras' predict requires"
    elif x.ndim == 4 and layout == "NHWC" and x.shape[1:] == (c, h, w):
        hint = ": that is an NCHW batch (torch, ONNX); pass layout=\"NCHW\""
    elif x.ndim == 4 and layout == "NCHW" and x.shape[1:] == (h, w, c):
        hint = ": that is an NHWC batch; drop layout=\"NCHW\""
    raise ValueError(f"input: expected shape (n, {', '.join(map(str, expected))}), found {x.shape} "
                     f"(layout={layout!r}){hint}")


class Model:
    """A MobileNet ready to run.

    The output contract:
    - model.outputs (= model.config.output) says what model(x) returns: "probabilities" when the
      graph ends in a softmax (Keras, TF-slim and TFLite files), "logits" when it does not
      (torchvision, most ONNX files), "features" for a graph without its classifier;
    - model(x) returns what the graph computes (model.outputs), nothing added;
    - model.predict(x) always returns probabilities (a softmax applied to logits), as does
      `npmobile classify` (features stay features: there is no classifier to make them
      probabilities).
    Input: a preprocessed float batch, NHWC by default; model(x, layout="NCHW"),
    model.run(x, layout="NCHW") and model.predict(x, layout="NCHW") take the (n, 3, h, w)
    batches torch and ONNX users hold. model.preprocess turns uint8 RGB images into NHWC input.
    """

    def __init__(self, graph, params, labels=None, source="<memory>"):
        self.graph = graph
        # Every reader ends here: the one validation step, before anything runs or is allocated.
        self.params = validate.check_model(graph, params, labels, source)
        # The file's class names; else ImageNet's for a 1000/1001-class classifier (data.default_labels).
        self.labels = list(labels) if labels is not None else _default_labels(graph.config)
        self.source = source
        self._fused = None
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: {(oracle, batch size): engine.Plan}

    def __getstate__(self):
        """What a pickle carries: the graph, its tensors, labels and source. Not the fused graph,
        plans, lock or thread-local state: the receiving process rebuilds them on first use."""
        return {"graph": self.graph, "params": self.params, "labels": self.labels, "source": self.source}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def config(self):
        return self.graph.config

    def __repr__(self):
        c = self.config
        return (f"Model({c.arch}, alpha={c.alpha}, resolution={c.resolution}, classes={c.classes}, "
                f"output={c.output!r}, convention={c.convention!r}, source={self.source!r})")

    @property
    def outputs(self):
        """What model(x) returns: "probabilities", "logits" or "features" (model.config.output)."""
        return self.config.output

    def __call__(self, x, *, layout="NHWC", threads=None):
        """The fast engine on a float batch (NHWC, or NCHW with layout="NCHW"); returns a new
        float32 array of what the graph computes: see model.outputs."""
        return self.run(x, layout=layout, threads=threads)

    def run(self, x, *, oracle=False, intermediates=False, layout="NHWC", threads=None):
        """Run on a float batch (NHWC, or NCHW with layout="NCHW") with the fast kernels on the
        fused graph, or (oracle=True) the float64 oracles on the graph as built. Returns the
        output (model.outputs says what it is), or with intermediates {name: value} for "input"
        and every node (of the fused graph on the fast engine: a value folded into the step after
        it, such as a convolution before its BN or a depthwise output inside a separable step, is
        returned by the oracle only). A batch is split across `threads` threads (default: set_num_threads;
        threads=1 keeps it on the calling thread, as a pipeline that runs one batch per core
        does); each thread runs its part PLAN_BATCH images at a time."""
        x = engine.check_input(self.graph, as_nhwc(self.graph, x, layout))
        if not oracle:
            x = np.ascontiguousarray(x, dtype=np.float32)
        return self._run_parts(x, oracle, intermediates, threads)

    def _run_parts(self, x, oracle, intermediates, threads):
        """x (checked) split into `threads` parts run at once, each part PLAN_BATCH images at a
        time through this thread's plan; the outputs (or intermediates) joined."""
        parts = min(threads or _num_threads, len(x))

        def run_part(part, share=None):
            if share is not None:
                numba.set_num_threads(share)
            return _concat([self._plan(len(c), oracle).run(c, intermediates=intermediates)
                            for c in (part[i:i + PLAN_BATCH] for i in range(0, len(part), PLAN_BATCH))])
        if parts == 1:  # (the common case, first: the split below costs ~5 us, a tenth of a small model's run)
            return run_part(x)
        bounds = np.linspace(0, len(x), parts + 1).astype(int)
        chunks = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # The parts share the caller's numba threads: each part's layers split over its share
        # (numba's thread count is per calling thread). Two parts that each split every layer
        # over both cores would pay a parallel loop's launch and barrier per layer for nothing.
        share = max(1, numba.get_num_threads() // parts)
        return _concat(list(_executor().map(functools.partial(run_part, share=share), chunks)))

    def _plan(self, batch, oracle):
        """This thread's Plan for this batch size (its buffers are reused call after call).
        At most two batch sizes are kept per thread and engine: a stream of full batches and its last."""
        plans = self._local.__dict__.setdefault(oracle, {})
        if batch not in plans:
            if len(plans) >= 2:
                plans.pop(next(iter(plans)))
            plans[batch] = self._new_plan(batch, oracle)
        return plans[batch]

    def _new_plan(self, batch, oracle):
        graph, params = (self.graph, self.params) if oracle else self._fused_graph()
        return engine.Plan(graph, params, batch, oracle=oracle)

    def _fused_graph(self):
        """engine.fuse of this model, computed once and shared by every thread's plans."""
        with self._lock:
            if self._fused is None:
                self._fused = engine.fuse(self.graph, self.params)
        return self._fused

    def predict(self, x, batch_size=32, *, layout="NHWC"):
        """Probabilities (n, classes), always: model(x) in batches of batch_size, with a softmax
        when the graph ends in logits (a graph without its classifier returns its features). As
        Keras' predict, x is a batch: one (h, w, 3) image is refused with a message saying to add
        the batch axis, rather than guessed at (a 3-d array would otherwise be read as a batch of
        (w, 3) rows)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, found {batch_size!r}")
        x = engine.check_input(self.graph, as_nhwc(self.graph, x, layout))
        out = np.concatenate([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return softmax(out) if self.outputs == "logits" else out

    def preprocess(self, images):
        """uint8 RGB images -> the float32 NHWC batch this model expects.

        images: one (h, w, 3) array, an (n, h, w, 3) array, or a list of arrays or PIL images.
        Each is centre-cropped to the convention's fraction and resized (Pillow, bilinear) when it
        is not already resolution x resolution, then normalised: (pixel - mean) / std.
        """
        pre = self.config.preprocess
        return preprocess_batch(images, self.config.resolution, pre.mean, pre.std, pre.crop)

    def summary(self, time=False, runs=20, print_fn=print):
        """Print the model layer by layer, as Keras' model.summary() does, with MACs beside the
        parameters (npmobile.cost). time=True: one row per step of the fast engine (the nodes it
        fuses named), with its measured ms and GFLOP/s beside its MACs (npmobile.timing)."""
        from . import cost, timing

        if time:
            print_fn(timing.format_table(timing.timed_rows(self, runs=runs), repr(self)))
        else:
            print_fn(cost.format_table(cost.count(self.graph), repr(self)))


def _default_labels(config):
    from .data import default_labels
    return default_labels(config.classes) if config.include_top else None


def _concat(outs):
    """Outputs of consecutive parts of a batch, joined: arrays, or dicts of arrays (intermediates)."""
    if len(outs) == 1:
        return outs[0]
    if isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)
