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


@dataclass
class Graph:
    nodes: list
    input_shape: tuple  # (h, w, c) of one sample
    config: Config = None  # architecture and conventions; None for a bare graph (tests, cost tables)

    def __post_init__(self):
        # ("qsoftmax": the integer softmax that ends a quantized graph, npmobile.qmodel)
        ends_in_softmax = bool(self.nodes) and self.nodes[-1].op in ("softmax", "qsoftmax")
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
    """Raise one WeightFileError naming every tensor that does not fit `graph`."""
    expected = graph.param_shapes()
    # in graph order, so the first layer at fault comes first
    missing = [k for k in expected if k not in params]
    extra = sorted(set(params) - set(expected))
    wrong = []
    for key in (k for k in expected if k in params):
        a = params[key]
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            wrong.append(f"{key}: expected float32, found {getattr(a, 'dtype', type(a).__name__)}")
        elif tuple(a.shape) != expected[key]:
            wrong.append(f"{key}: expected shape {expected[key]}, found {tuple(a.shape)}")
        elif not np.isfinite(a).all():
            wrong.append(f"{key}: expected finite values, found NaN or inf")
    if missing or extra or wrong:
        arch = graph.config.arch if graph.config else "the graph"
        lines = [f"{source}: the tensors do not fit {arch} {_describe(graph.config)}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if extra:
            lines.append(f"  unexpected ({len(extra)}): {', '.join(extra[:20])}" + (" ..." if len(extra) > 20 else ""))
        lines += [f"  {w}" for w in wrong[:20]] + ([f"  ... and {len(wrong) - 20} more"] if len(wrong) > 20 else [])
        raise WeightFileError("\n".join(lines))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


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

_ATTRS = {"stride": int, "pad": list, "clamp": list, "eps": float, "lo": float, "hi": float}


def graph_to_json(graph):
    return {"input_shape": list(graph.input_shape),
            "nodes": [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "attrs": n.attrs,
                       "params": {p: list(s) for p, s in n.params.items()}, "shape": list(n.shape)}
                      for n in graph.nodes]}


def graph_from_json(data, config, ops):
    """Rebuild a graph from graph_to_json's output, refusing anything that is not a plain chain
    of known ops over earlier values (`ops` is the set of kernel names)."""
    try:
        nodes, seen = [], {"input"}
        for i, d in enumerate(data["nodes"]):
            where = f"node {i} ({d.get('name')!r})"
            if d["op"] not in ops:
                raise ValueError(f"{where}: unknown op {d['op']!r}")
            if d["name"] in seen or not isinstance(d["name"], str):
                raise ValueError(f"{where}: name repeated or not a string")
            for name in d["inputs"]:
                if name not in seen:
                    raise ValueError(f"{where}: reads {name!r}, which no earlier node produces")
            attrs = {}
            for k, v in d["attrs"].items():
                if k not in _ATTRS:
                    raise ValueError(f"{where}: unknown attribute {k!r}")
                attrs[k] = tuple(float(a) for a in v) if k == "clamp" else (
                    tuple(int(a) for a in v) if k == "pad" else _ATTRS[k](v))
            params = {p: tuple(int(a) for a in s) for p, s in d["params"].items()}
            nodes.append(Node(d["op"], d["name"], tuple(d["inputs"]), attrs, params,
                              tuple(int(a) for a in d["shape"])))
            seen.add(d["name"])
        if not nodes:
            raise ValueError("no nodes")
        return Graph(nodes, tuple(int(a) for a in data["input_shape"]), config)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed graph description: {e!r}") from None


class Imported(NamedTuple):
    """What every reader returns (the native one and each importer); `Model(*imported)` is the model."""
    graph: Graph
    params: dict
    labels: list = None
    source: str = "<memory>"
