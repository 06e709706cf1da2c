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
their scale and zero point, by node name. Both run through `engine.Plan`, as the float Model's
calls do: one loop, with the integer kernels bound to integer buffers.
"""

import threading
from typing import NamedTuple

import numpy as np

from . import engine, qvalidate, validate
from .graph import Graph
from .kernels.quantized import QKERNELS, dequantize, quantize
from .model import Model, as_nhwc


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


def value_dtypes(graph, input_dtype):
    """{value name: dtype}: the input's, then per node float32 for a dequantize, its `dtype`
    attribute for a quantize or rescale (QUANTIZE to another type), else its first input's."""
    dtypes = {"input": np.dtype(input_dtype)}
    for node in graph.nodes:
        dtype = np.float32 if node.op == "dequantize" else node.attrs.get("dtype", dtypes[node.inputs[0]])
        dtypes[node.name] = np.dtype(dtype)
    return dtypes


# The float op whose equation each linear integer op computes: a summary counts its MACs, weights
# and biases as that op's (zero points, multipliers and shifts are not parameters of the network).
FLOAT_OP = {"qconv2d": "conv2d", "qlinear_conv2d": "conv2d", "qdepthwise_conv2d": "depthwise_conv2d",
            "qlinear_depthwise_conv2d": "depthwise_conv2d", "qpointwise_conv2d": "pointwise_conv2d",
            "qlinear_pointwise_conv2d": "pointwise_conv2d", "qdense": "dense", "qfully_connected": "dense",
            "qlinear_matmul": "dense"}


class QuantizedModel(Model):
    """An integer graph, its integer tensors and every value's quantization, callable on a batch.
    It runs as a Model does (threads, PLAN_BATCH images at a time, one engine.Plan per thread),
    with the integer kernels (QKERNELS) and integer buffers.

    graph: a `graph.Graph` of integer ops; params: {"{node}.{param}": array} (uint8/int8
    weights, int32 biases, zero points, multipliers, shifts); quant: {value: (scale, zero_point)},
    None for a float value (the input and output of a file with float ends, which its graph
    quantizes and dequantizes); input_dtype: the type of the graph's input; rounding: how a float
    input is quantized (quantize.py: "away" for TFLite's QUANTIZE, "even" for ONNX's QuantizeLinear).
    """

    def __init__(self, graph, params, quant, input_dtype, labels=None, source="<memory>", rounding="away"):
        self.graph, self.params, self.quant, self.rounding = graph, params, quant, rounding
        self.input_dtype = np.dtype(input_dtype)
        self.labels = list(labels) if labels is not None else None
        self.source = source
        self._local = threading.local()  # per thread: {(oracle, batch size): engine.Plan}
        # Every reader of a quantized file ends here: the one validation step (qvalidate.py).
        validate.check_graph(graph, source, ops=qvalidate.QOPS)
        validate.check_config(graph, self.labels, source)
        self.dtypes = value_dtypes(graph, self.input_dtype)
        qvalidate.check_types(graph, self.dtypes, source)
        qvalidate.check_integer_params(graph, params, self.dtypes, source)

    def __repr__(self):
        c = self.config
        return (f"QuantizedModel({c.arch}, resolution={c.resolution}, classes={c.classes}, output={c.output!r}, "
                f"input {self.input_dtype}, source={self.source!r})")

    def __getstate__(self):
        """What a pickle carries (as Model's): the graph, tensors, quantization, labels; no
        thread-local plans."""
        return {"graph": self.graph, "params": self.params, "quant": self.quant, "input_dtype": self.input_dtype,
                "labels": self.labels, "source": self.source, "rounding": self.rounding}

    def summary(self, time=False, runs=20, print_fn=print):
        """As Model.summary: layer by layer, the MACs, weights and biases of the float op each
        integer op computes (FLOAT_OP). The step timings (time=True) are the float engine's: load
        the file with dequantize=True for them."""
        from . import cost

        if time:
            raise ValueError("summary(time=True): the step timings are the float engine's; "
                             "load the file with dequantize=True to time them")
        nodes = [node._replace(op=FLOAT_OP.get(node.op, node.op),
                               params={p: s for p, s in node.params.items() if p in ("w", "b")})
                 for node in self.graph.nodes]
        print_fn(cost.format_table(cost.count(Graph(nodes, self.graph.input_shape, self.graph.config)), repr(self)))

    def quantize_input(self, x, layout="NHWC"):
        """A float batch (NHWC, or NCHW with layout="NCHW") -> the graph's input: integers by the
        file's runtime's rounding, or float32 for a graph that quantizes its input itself."""
        x = engine.check_input(self.graph, as_nhwc(self.graph, x, layout))
        if self.quant["input"] is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        scale, zero = self.quant["input"]
        return quantize(x, scale=scale, zero_point=zero, dtype=self.input_dtype, rounding=self.rounding)

    def __call__(self, x, *, layout="NHWC", threads=None):
        """Float batch in, the output dequantized to float32 out (probabilities for a softmax);
        threads as in Model.__call__."""
        y = self.run(x, layout=layout, threads=threads)
        return y.dequantize() if isinstance(y, QTensor) else y

    def run_integers(self, q, *, threads=None):
        """The fast engine on the graph's input q (n, h, w, c) of input_dtype: a new array of the
        output's integers (floats for a graph that dequantizes its output)."""
        return self._run_parts(self._graph_input(q), False, False, threads)

    def run(self, x, *, oracle=False, intermediates=False, layout="NHWC", threads=None):
        """The graph on x (a float batch, or the input's own type) with the fast kernels or the
        int64 oracles; returns a QTensor (an array for a float value), or {name: QTensor} for
        "input" and every node when intermediates=True."""
        q = x if np.asarray(x).dtype == self.input_dtype else self.quantize_input(x, layout)
        out = self._run_parts(self._graph_input(q), oracle, intermediates, threads)
        if intermediates:
            return {name: self._value(name, v) for name, v in out.items()}
        return self._value(self.graph.output, out)

    def _value(self, name, v):
        """An integer value as a QTensor with its scale and zero point; a float value as it is."""
        return v if self.quant[name] is None else QTensor(v, *self.quant[name])

    def _graph_input(self, q):
        return np.ascontiguousarray(engine.check_input(self.graph, q, self.input_dtype))

    def _new_plan(self, batch, oracle):
        return engine.Plan(self.graph, self.params, batch, oracle=oracle, kernels=QKERNELS, dtypes=self.dtypes)
