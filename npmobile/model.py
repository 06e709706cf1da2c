"""`Model`: a graph, its weights and its conventions, callable on a batch."""

import threading

import numpy as np

from . import engine, weights


class Model:
    """A MobileNet ready to run.

    model(x) runs the fast engine on an NHWC float batch that is already preprocessed and returns
    what the source framework returns for it (softmax probabilities for Keras and TF-slim models,
    logits for torchvision). model.preprocess turns uint8 RGB images into that input.
    """

    def __init__(self, graph, params, labels=None, source="<memory>"):
        self.graph = graph
        self.params = weights.check_params(graph, params, source)
        self.labels = list(labels) if labels is not None else None
        self.source = source
        self._fused = None
        self._lock = threading.Lock()

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

    def __call__(self, x):
        graph, params = self.fused()
        return engine.run(graph, params, x)

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


def from_native(path):
    graph, params, labels = weights.read(path)
    return Model(graph, params, labels, source=str(path))
