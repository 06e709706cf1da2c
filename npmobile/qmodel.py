"""`QuantizedModel`: a quantized network run as integers, the way its runtime runs it.

A quantized file (TFLite uint8/int8) stores integers q that mean real = scale * (q - zero_point)
for every weight and every activation. Its graph here is a flat list of `graph.Node`s whose ops
are integer kernels (`npmobile.kernels.quantized.QKERNELS`): the requantization multipliers,
zero points and fused-activation ranges were derived from the file's scales once, at import, as
the runtime derives them, and sit in each node's attrs and params. `quant` maps every value
("input" and each node) to its (scale, zero_point).

Ends: model(x) takes the same float NHWC batch as the float engine (model.preprocess makes it),
quantizes it with the input's scale and zero point (QUANTIZE), runs the integer graph and returns
the output dequantized to float32 (DEQUANTIZE), so it drops in wherever a float Model goes.
model.run(x, intermediates=True) returns the integers themselves, as `QTensor`s that carry
their scale and zero point, by node name.
"""

import threading
from typing import NamedTuple

import numpy as np

from . import validate
from .engine import _last_use, check_input
from .kernels.quantized import QKERNELS, dequantize, quantize
from .model import PLAN_BATCH, Model, _executor, as_nhwc, get_num_threads
from .preprocess import preprocess_batch


class QuantizedImport(NamedTuple):
    """What a reader of a quantized file returns; npmobile.load makes it a QuantizedModel."""
    graph: object
    params: dict
    quant: dict
    input_dtype: object
    labels: list
    source: str
    rounding: str = "away"  # how the float input is quantized: "away" (TFLite), "even" (ONNX)


class QTensor(NamedTuple):
    """Integers and what they mean: real = scale * (values - zero_point)."""
    values: np.ndarray
    scale: float
    zero_point: int

    def dequantize(self):
        return dequantize(self.values, scale=self.scale, zero_point=self.zero_point)


class QuantizedModel:
    """An integer graph, its integer tensors and every value's quantization, callable on a batch.

    graph: a `graph.Graph` of integer ops; params: {"{node}.{param}": array} (uint8/int8
    weights, int32 biases, zero points, multipliers, shifts); quant: {value: (scale, zero_point)};
    input_dtype: the integer type of the graph's input; rounding: how the float input is quantized
    (quantize.py: "away" for TFLite's QUANTIZE, "even" for ONNX's QuantizeLinear).
    """

    def __init__(self, graph, params, quant, input_dtype, labels=None, source="<memory>", rounding="away"):
        self.graph, self.params, self.quant, self.rounding = graph, params, quant, rounding
        self.input_dtype = np.dtype(input_dtype)
        self.labels = list(labels) if labels is not None else None
        self.source = source
        self._local = threading.local()  # per thread: {batch size: list of bound steps}
        for node in graph.nodes:
            if node.op not in QKERNELS:
                raise ValueError(f"{source}: node {node.name!r}: {node.op!r} is not an integer kernel")
        validate.check_structure(graph, source)  # the checks at load that do not depend on the op

    @property
    def config(self):
        return self.graph.config

    def __repr__(self):
        c = self.config
        return (f"QuantizedModel({c.arch}, resolution={c.resolution}, classes={c.classes}, output={c.output!r}, "
                f"input {self.input_dtype}, source={self.source!r})")

    def preprocess(self, images):
        """uint8 RGB images -> the float32 NHWC batch model(x) takes (as Model.preprocess):
        (pixel - mean) / std, mean and std being the input's zero point and 1 / scale."""
        pre = self.config.preprocess
        return preprocess_batch(images, self.config.resolution, pre.mean, pre.std, pre.crop)

    def quantize_input(self, x):
        """A float NHWC batch -> the graph's integer input (the file's runtime's rounding)."""
        x = check_input(self.graph, x)
        scale, zero = self.quant["input"]
        return quantize(x, scale=scale, zero_point=zero, dtype=self.input_dtype, rounding=self.rounding)

    @property
    def outputs(self):
        """What model(x) returns, as for the float Model: model.config.output."""
        return self.config.output

    def __getstate__(self):
        """What a pickle carries (as Model's): the graph, tensors, quantization, labels; no
        thread-local plans."""
        return {"graph": self.graph, "params": self.params, "quant": self.quant, "input_dtype": self.input_dtype,
                "labels": self.labels, "source": self.source, "rounding": self.rounding}

    def __setstate__(self, state):
        self.__init__(**state)

    def __call__(self, x, *, layout="NHWC", threads=None):
        """Float batch in (NHWC, or NCHW with layout="NCHW"), the output dequantized to float32 out
        (probabilities for a softmax); threads as in Model.__call__."""
        q = self.run_integers(self.quantize_input(as_nhwc(self.graph, x, layout)), threads=threads)
        scale, zero = self.quant[self.graph.output]
        return dequantize(q, scale=scale, zero_point=zero)

    predict = Model.predict  # probabilities, always (a softmax on logits), as for a float Model

    def run_integers(self, q, *, threads=None):
        """The fast engine on the integer input q (n, h, w, c): a new array of output integers.
        As in the float Model, a batch is split across the threads of npmobile.set_num_threads,
        and each thread runs its part PLAN_BATCH images at a time (the float32 scratch of the
        exact kernels grows with the batch: about 30 MB per image for V2-224)."""
        q = self._check_integer_input(q)
        parts = min(threads or get_num_threads(), len(q))
        bounds = np.linspace(0, len(q), parts + 1).astype(int)
        chunks = [q[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        outs = [self._run_part(chunks[0])] if parts == 1 else list(_executor().map(self._run_part, chunks))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _run_part(self, q):
        outs = []
        for i in range(0, len(q), PLAN_BATCH):
            part = q[i:i + PLAN_BATCH]
            buffers, steps = self._bound(len(part))
            np.copyto(buffers["input"], part)
            for run, args in steps:
                run(*args)
            outs.append(buffers[self.graph.output].copy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def run(self, x, *, oracle=False, intermediates=False):
        """The graph on x (a float batch, or integers of the input's dtype) with the fast
        kernels or the int64 oracles; returns a QTensor, or {name: QTensor} for "input" and
        every node when intermediates=True."""
        q = x if np.asarray(x).dtype == self.input_dtype else self.quantize_input(x)
        q = self._check_integer_input(q)
        values = {"input": q}
        last_use = _last_use(self.graph.nodes)
        for i, node in enumerate(self.graph.nodes):
            kernel = QKERNELS[node.op]
            fn = kernel.ref if oracle else kernel.fast
            values[node.name] = np.asarray(fn(*[values[name] for name in node.inputs], **self._tensors(node),
                                              **node.attrs))
            if not intermediates:
                for name in node.inputs:
                    if last_use[name] == i:
                        del values[name]
        if intermediates:
            return {name: QTensor(v, *self.quant[name]) for name, v in values.items()}
        return QTensor(values[self.graph.output], *self.quant[self.graph.output])

    def _tensors(self, node):
        """A node's tensors by parameter name (w, b, w_zero, multiplier, shift), passed by keyword."""
        return {p: self.params[f"{node.name}.{p}"] for p in node.params}

    def _check_integer_input(self, q):
        q = np.asarray(q)
        expected = tuple(self.graph.input_shape)
        if q.dtype != self.input_dtype or q.ndim != 4 or q.shape[1:] != expected or len(q) < 1:
            raise ValueError(f"input: expected a {self.input_dtype} batch of shape (n, {', '.join(map(str, expected))}), "
                             f"found {q.dtype} {q.shape}")
        return np.ascontiguousarray(q)

    def _bound(self, batch):
        """This thread's (buffers, steps) for this batch size: every kernel bound once to its
        inputs and its own output buffer (a few MB for MobileNet at batch 1), so a call only runs
        loops. At most two batch sizes are kept per thread."""
        cache = getattr(self._local, "bound", None)
        if cache is None:
            cache = self._local.bound = {}
        if batch not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            buffers = {"input": np.empty((batch, *self.graph.input_shape), dtype=self.input_dtype)}
            steps = []
            for node in self.graph.nodes:
                buffers[node.name] = np.empty((batch, *node.shape), dtype=self.input_dtype)
                kernel = QKERNELS[node.op]
                args = kernel.check(*[buffers[name] for name in node.inputs], **self._tensors(node), **node.attrs,
                                    out=buffers[node.name])
                steps.append((kernel.run, args))
            cache[batch] = buffers, steps
        return cache[batch]
