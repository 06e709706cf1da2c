"""A network as data: a flat list of nodes, each one kernel call.

A `Node` is `(op, name, inputs, attrs, params, shape)`:
- `op` names a kernel in `npmobile.kernels.KERNELS` ("conv2d", "depthwise_conv2d", ...);
- `inputs` name the values it reads: "input" or the names of earlier nodes;
- `attrs` are the kernel's keyword attributes (stride, pad, clamp, eps, ...), resolved when the
  graph is built: padding is explicit (top, bottom, left, right), never "same";
- `params` maps each weight tensor the node needs ("w", "b", "gamma", ...) to its shape; the
  tensor itself lives in a separate dict under the key "{name}.{param}";
- `shape` is the node's output shape for one sample, (h, w, c) or (c,).

Nodes come in execution order, so running a graph is one loop (engine.py), counting its cost is
another (cost.py), and a graph can be compared with a framework layer by layer by name.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .config import Config
from .errors import WeightFileError


# The ops with weights that are a linear map of their input (and so absorb a batch norm, a bias,
# a per-channel scale): what fusion, cost tables and importers single out.
LINEAR_OPS = ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense")


class Node(NamedTuple):
    op: str
    name: str
    inputs: tuple
    attrs: dict
    params: dict
    shape: tuple


# Integer graphs' ops that change how a value is stored, not what it means (npmobile.qmodel).
REPRESENTATION_OPS = ("quantize", "dequantize", "rescale")


@dataclass
class Graph:
    nodes: list
    input_shape: tuple  # (h, w, c) of one sample
    config: Config = None  # architecture and conventions; None for a bare graph (tests, cost tables)

    def __post_init__(self):
        # ("qsoftmax": the integer softmax that ends a quantized graph, npmobile.qmodel, which
        # may hand its output on in another type or as floats: REPRESENTATION_OPS)
        layers = [n for n in self.nodes if n.op not in REPRESENTATION_OPS]
        ends_in_softmax = bool(layers) and layers[-1].op in ("softmax", "qsoftmax")
        if self.config is not None and ends_in_softmax != (self.config.output == "probabilities"):
            raise ValueError(f"config.output is {self.config.output!r} but the graph's last node is "
                             f"{self.nodes[-1].op if self.nodes else None!r}: probabilities come from a softmax, "
                             "and only from one")

    @property
    def output(self):
        return self.nodes[-1].name

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in the graph")

    def param_shapes(self):
        """Every weight tensor the graph needs: {"{node}.{param}": shape}."""
        return {f"{n.name}.{p}": tuple(s) for n in self.nodes for p, s in n.params.items()}


def check_params(graph, params, source):
    """The weights as C-contiguous float32 arrays, after one WeightFileError naming every tensor
    that does not fit `graph`: missing, unexpected, not float, mis-shaped, not finite (or a
    negative variance, which a folded batch norm would turn into NaN)."""
    if not hasattr(params, "items"):
        raise WeightFileError(f"{source}: expected the weights as a mapping of names to arrays, "
                              f"found {type(params).__name__}")
    expected = graph.param_shapes()
    # in graph order, so the first layer at fault comes first
    missing = [k for k in expected if k not in params]
    extra = set(params) - set(expected)
    wrong = [p for p in (_tensor_problem(k, params[k], expected[k]) for k in expected if k in params) if p]
    error = tensor_error(graph, source, missing, extra, wrong)
    if error:
        raise error
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def _tensor_problem(key, a, shape):
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
        return f"{key}: expected float32, found {getattr(a, 'dtype', type(a).__name__)}"
    if tuple(a.shape) != shape:
        return f"{key}: expected shape {shape}, found {tuple(a.shape)}"
    if not np.isfinite(a).all():
        return f"{key}: expected finite values, found NaN or inf"
    if key.endswith(".var") and (a < 0).any():
        return f"{key}: expected a variance >= 0, found {float(a.min())}"
    return None


def tensor_error(graph, source, missing=(), extra=(), wrong=()):
    """One WeightFileError naming every missing, unexpected and wrong tensor (None if none)."""
    if not (missing or extra or wrong):
        return None
    arch = graph.config.arch if graph.config else "the graph"
    lines = [f"{source}: the tensors do not fit {arch} {_describe(graph.config)}:"]
    for what, names in (("missing", list(missing)), ("unexpected", sorted(extra))):
        if names:
            lines.append(f"  {what} ({len(names)}): {', '.join(names[:20])}" + (" ..." if len(names) > 20 else ""))
    lines += [f"  {w}" for w in wrong[:20]] + ([f"  ... and {len(wrong) - 20} more"] if len(wrong) > 20 else [])
    return WeightFileError("\n".join(lines))


def _describe(config):
    if config is None:
        return ""
    keys = ("alpha", "resolution", "classes", "convention")
    return "(" + ", ".join(f"{k}={getattr(config, k)}" for k in keys if getattr(config, k) is not None) + ")"


# --- padding, resolved once when a graph is built -------------------------------------------

def pad_same(size, k, stride):
    """TensorFlow's "SAME": output ceil(size / stride); the odd pixel of padding goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def pad_symmetric(size, k, stride):
    """torch's Conv2d(padding=k // 2): the same on both sides."""
    return k // 2, k // 2


def pad_bottom_right(size, k, stride):
    """Keras MobileNet's ZeroPadding2D(((0, 1), (0, 1))) before a stride-2 3x3 convolution."""
    return 0, 1


def pad_correct(size, k, stride):
    """Keras' imagenet_utils.correct_pad: one less before the image when its side is even."""
    return k // 2 - (1 - size % 2), k // 2


def conv_out(size, k, stride, before, after):
    return (size + before + after - k) // stride + 1


class Builder:
    """Appends nodes while tracking every value's per-sample shape, so builders stay short."""

    def __init__(self, input_shape):
        self.nodes = []
        self.shapes = {"input": tuple(input_shape)}
        self.last = "input"

    def add(self, op, name, attrs, params, shape, inputs=None):
        if name in self.shapes:
            raise ValueError(f"node name {name!r} used twice")
        inputs = tuple(inputs) if inputs is not None else (self.last,)
        self.nodes.append(Node(op, name, inputs, dict(attrs), dict(params), tuple(shape)))
        self.shapes[name] = tuple(shape)
        self.last = name
        return name

    def _spatial(self, k, stride, pad_rule):
        h, w, c = self.shapes[self.last]
        top, bottom = pad_rule(h, k, stride)
        left, right = pad_rule(w, k, stride)
        return (top, bottom, left, right), conv_out(h, k, stride, top, bottom), conv_out(w, k, stride, left, right), c

    def conv2d(self, name, c_out, k, stride, pad_rule, bias=False):
        pad, h, w, c = self._spatial(k, stride, pad_rule)
        params = {"w": (k, k, c, c_out), **({"b": (c_out,)} if bias else {})}
        return self.add("conv2d", name, {"stride": stride, "pad": pad}, params, (h, w, c_out))

    def depthwise(self, name, k, stride, pad_rule, multiplier=1):
        pad, h, w, c = self._spatial(k, stride, pad_rule)
        return self.add("depthwise_conv2d", name, {"stride": stride, "pad": pad},
                        {"w": (k, k, c * multiplier)}, (h, w, c * multiplier))

    def pointwise(self, name, c_out, bias=False):
        h, w, c = self.shapes[self.last]
        params = {"w": (c, c_out), **({"b": (c_out,)} if bias else {})}
        return self.add("pointwise_conv2d", name, {}, params, (h, w, c_out))

    def batchnorm(self, name, eps):
        c = self.shapes[self.last][-1]
        return self.add("batchnorm", name, {"eps": eps},
                        {p: (c,) for p in ("gamma", "beta", "mean", "var")}, self.shapes[self.last])

    def relu6(self, name):
        return self.add("clamp", name, {"lo": 0.0, "hi": 6.0}, {}, self.shapes[self.last])

    def residual(self, name, a, b):
        return self.add("add", name, {}, {}, self.shapes[b], inputs=(a, b))

    def pool(self, name, kind):
        c = self.shapes[self.last][-1]
        return self.add(f"global_{kind}_pool", name, {}, {}, (c,))

    def dense(self, name, c_out):
        c = self.shapes[self.last][-1]
        return self.add("dense", name, {}, {"w": (c, c_out), "b": (c_out,)}, (c_out,))

    def softmax(self, name):
        return self.add("softmax", name, {}, {}, self.shapes[self.last])


# --- the graph as JSON, for the native weight file ------------------------------------------

def graph_to_json(graph):
    return {"input_shape": list(graph.input_shape),
            "nodes": [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "attrs": n.attrs,
                       "params": {p: list(s) for p, s in n.params.items()}, "shape": list(n.shape)}
                      for n in graph.nodes]}


def _fields(d, i):
    """One node's JSON fields, each of the JSON type graph_to_json writes (ValueError if not)."""
    types = {"op": str, "name": str, "inputs": list, "attrs": dict, "params": dict, "shape": list}
    if not isinstance(d, dict):
        raise ValueError(f"node {i}: expected a JSON object, found {type(d).__name__}")
    for key, kind in types.items():
        if not isinstance(d.get(key), kind):
            raise ValueError(f"node {i} ({d.get('name')!r}): {key}: expected {kind.__name__}, "
                             f"found {type(d.get(key)).__name__}")
    if not all(isinstance(s, str) for s in d["inputs"]):
        raise ValueError(f"node {i} ({d['name']!r}): inputs: expected the names of values (strings)")
    if not all(isinstance(s, list) for s in d["params"].values()):
        raise ValueError(f"node {i} ({d['name']!r}): params: expected a list (a shape) per weight")
    return d


def graph_from_json(data, config):
    """Rebuild a graph from graph_to_json's output. Only the JSON types are checked here (lists
    become tuples, nothing is converted); validate.check_graph judges what the values mean."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or \
            not isinstance(data.get("input_shape"), list):
        raise ValueError("expected an object with a list of nodes and an input_shape list")
    nodes = []
    for i, d in enumerate(data["nodes"]):
        d = _fields(d, i)
        attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in d["attrs"].items()}
        nodes.append(Node(d["op"], d["name"], tuple(d["inputs"]), attrs,
                          {p: tuple(s) for p, s in d["params"].items()}, tuple(d["shape"])))
    return Graph(nodes, tuple(data["input_shape"]), config)


class Imported(NamedTuple):
    """What every reader returns (the native one and each importer); `Model(*imported)` is the model."""
    graph: Graph
    params: dict
    labels: list = None
    source: str = "<memory>"
