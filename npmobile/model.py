"""`Model`: a graph, its weights and its conventions, callable on a batch."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import engine, weights

_num_threads = int(os.environ.get("NPMOBILE_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS") or 1)
_pool, _pool_size = None, 0
_pool_lock = threading.Lock()

# A batch runs through a Plan at most CHUNK images at a time. Two images keep the activations of
# MobileNet-224's large layers closer to the cache than eight do: measured 2.5-6% faster per image
# than whole batches of 8 or 32 on V1/V2-224. And a Plan's buffers stay the size of two images
# however large the batch (8.4 MB per image for V2-224: 270 MB at Keras' predict batch of 32).
CHUNK = 2


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


class Model:
    """A MobileNet ready to run.

    model(x) runs the fast engine on an NHWC float batch that is already preprocessed and returns
    what the source framework returns for it (softmax probabilities for Keras and TF-slim models,
    logits for torchvision). model.preprocess turns uint8 RGB images into that input.
    """

    def __init__(self, graph, params, labels=None, source="<memory>"):
        self.graph = graph
        self.params = weights.check_params(graph, params, source)
        # The file's class names; else ImageNet's for a 1000/1001-class output (data.default_labels).
        self.labels = list(labels) if labels is not None else _default_labels(graph)
        self.source = source
        self._fused = None
        self._lock = threading.Lock()
        self._local = threading.local()  # per thread: {batch size: engine.Plan}

    @property
    def config(self):
        return self.graph.config

    def __repr__(self):
        c = self.config
        return (f"Model({c.get('arch')}, alpha={c.get('alpha')}, resolution={c.get('resolution')}, "
                f"classes={c.get('classes')}, convention={c.get('convention')!r}, source={self.source!r})")

    def fused(self):
        """The fast engine's graph and parameters, computed once (thread-safe)."""
        with self._lock:
            if self._fused is None:
                self._fused = engine.fuse(self.graph, self.params)
        return self._fused

    def _plan(self, batch):
        """This thread's Plan for this batch size (its buffers are reused call after call).
        At most two batch sizes are kept per thread: a stream of full batches and its last one."""
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        if batch not in plans:
            if len(plans) >= 2:
                plans.pop(next(iter(plans)))
            plans[batch] = engine.Plan(*self.fused(), batch)
        return plans[batch]

    def __call__(self, x):
        """The fast engine on an NHWC float batch; returns a new float32 array."""
        x = np.ascontiguousarray(engine.check_input(self.graph, x), dtype=np.float32)
        n = len(x)
        parts = min(_num_threads, n)
        if parts <= 1:
            return self._run_part(x)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        chunks = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return np.concatenate(list(_executor().map(self._run_part, chunks)))

    def _run_part(self, x):
        """One thread's images, through this thread's Plan, CHUNK images at a time."""
        outs = [self._plan(len(c)).run(c) for c in (x[i:i + CHUNK] for i in range(0, len(x), CHUNK))]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def run(self, x, *, engine_name="fast", intermediates=False):
        """Run with the "fast" engine (fused graph, numba kernels) or the "oracle" engine
        (the graph as built, float64 NumPy oracles); optionally return every intermediate."""
        if engine_name == "fast":
            graph, params = self.fused()
            return engine.run(graph, params, x, intermediates=intermediates)
        if engine_name == "oracle":
            return engine.run(self.graph, self.params, x, oracle=True, intermediates=intermediates)
        raise ValueError(f"engine_name: expected 'fast' or 'oracle', found {engine_name!r}")

    def predict(self, x, batch_size=32):
        """model(x) in batches of batch_size, concatenated (Keras' predict)."""
        x = np.asarray(x)
        return np.concatenate([self(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def preprocess(self, images):
        """uint8 RGB images -> the float32 NHWC batch this model expects.

        images: one (h, w, 3) array, an (n, h, w, 3) array, or a list of arrays or PIL images.
        Each is centre-cropped to the convention's fraction and resized (Pillow, bilinear) when it
        is not already resolution x resolution, then normalised: (pixel - mean) / std.
        """
        from .preprocess import preprocess_batch
        pre = self.config["preprocess"]
        return preprocess_batch(images, self.config["resolution"], pre["mean"], pre["std"], pre["crop"])

    def save(self, path):
        weights.save(path, self.graph, self.params, self.labels)


def _default_labels(graph):
    from .data import default_labels
    out = graph.nodes[-1].shape
    return default_labels(out[0]) if len(out) == 1 else None


def from_native(path):
    graph, params, labels = weights.read(path)
    return Model(graph, params, labels, source=str(path))
