"""Validate once, at load: a weight file is untrusted input.

Every reader (the native .npz, Keras, torchvision, ONNX, TFLite) ends in `Model(...)`, which calls
`check_model` before anything is computed or any activation buffer allocated. After it, kernels
may trust their arguments (their own checks stay as a second line):

- every node's op is in `OPS`, its attributes exactly the ones that op takes, typed and in
  range (stride 1..MAX_STRIDE, pads < kernel size, kernel <= padded input, eps > 0 and finite);
- every node reads values computed before it, and every node but the last is read later (no
  dead or dangling nodes: the last node is the output);
- each node's shape is the one its op computes from its inputs (chained from the input to the
  output), and each weight tensor has the shape its node needs, float and finite;
- the activation memory one image needs (values alive at once, plus a convolution's patch
  matrix) stays under `max_activation_bytes()` ($NPMOBILE_MAX_ACTIVATION_BYTES, default 2 GiB),
  the weights under `max_weight_bytes()` ($NPMOBILE_MAX_WEIGHT_BYTES, default 512 MiB);
- the config agrees with the graph (resolution, classes), its preprocessing is finite with
  std > 0, and labels (if any) are one per class.

A new op is one entry in `OPS`: its inputs, its attributes and the function that computes its
output shape and weight shapes from its inputs. Patterns: TFLite's flatbuffer verifier, ONNX's
checker with shape inference, safetensors' header checks before any read.
"""

import json
import math
import numbers
import os
from typing import Callable, NamedTuple

import numpy as np

from .errors import WeightFileError
from .graph import check_params

MAX_STRIDE = 16
MAX_KERNEL = 64
MAX_PAD = 64  # a zero_pad node's side; a convolution's own pads are < its kernel side
MAX_DIM = 1 << 24  # any one axis of a value
MAX_JSON_DEPTH = 64
MAX_NODES = 100_000


def _env_bytes(name, default):
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"${name}: expected a number of bytes, found {text!r}") from None
    if value < 1:
        raise ValueError(f"${name}: expected a number of bytes >= 1, found {text!r}")
    return value


def max_activation_bytes():
    """The activation memory one image may need: $NPMOBILE_MAX_ACTIVATION_BYTES, default 2 GiB."""
    return _env_bytes("NPMOBILE_MAX_ACTIVATION_BYTES", 2 << 30)


def max_weight_bytes():
    """The float32 weights a model may hold: $NPMOBILE_MAX_WEIGHT_BYTES, default 512 MiB."""
    return _env_bytes("NPMOBILE_MAX_WEIGHT_BYTES", 512 << 20)


class _Bad(Exception):
    """One problem inside a node: the attribute (or "shape", "input", ...) and the message."""

    def __init__(self, attr, message):
        super().__init__(message)
        self.attr, self.message = attr, message


# --- attribute types ---------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v):
    return isinstance(v, (numbers.Real, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_))


def _stride(v):
    if not _is_int(v) or not 1 <= v <= MAX_STRIDE:
        raise _Bad("stride", f"expected an integer 1..{MAX_STRIDE}, found {v!r}")


def _pad(v):
    if not isinstance(v, (tuple, list)) or len(v) != 4 or not all(_is_int(p) for p in v):
        raise _Bad("pad", f"expected 4 integers (top, bottom, left, right), found {v!r}")
    if not all(0 <= p <= MAX_PAD for p in v):
        raise _Bad("pad", f"expected every side 0..{MAX_PAD}, found {tuple(v)}")


def _clamp(v):
    if v is None:
        return
    if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(_is_real(a) for a in v) \
            or math.isnan(v[0]) or math.isnan(v[1]) or not v[0] <= v[1]:
        raise _Bad("clamp", f"expected None or (lo, hi) with lo <= hi, found {v!r}")


def _eps(v):
    if not _is_real(v) or not math.isfinite(v) or not v > 0:
        raise _Bad("eps", f"expected a finite number > 0, found {v!r}")


def _bound(name):
    def check(v):
        if not _is_real(v) or math.isnan(v):
            raise _Bad(name, f"expected a number (inf allowed), found {v!r}")
    return check


# --- shape inference, one function per op ------------------------------------------------------
# Each takes (input shapes, attrs, param shapes) and returns (expected param shapes, output shape),
# raising _Bad for what cannot fit. Param shapes are read only to learn k and c_out.

def _image(shape, what="input"):
    if len(shape) != 3:
        raise _Bad("input", f"expected an (h, w, c) {what}, found shape {shape}")
    return shape


def _param(params, name, ndim):
    s = params.get(name)
    if s is None or len(s) != ndim or not all(_is_int(d) and d >= 1 for d in s):
        raise _Bad(name, f"expected a {ndim}-d weight shape of positive sides, found {s!r}")
    return tuple(s)


def _window(h, w, k, attrs):
    """Output side of a k x k window with the node's stride and pads; pads < k <= padded input."""
    stride, pad = attrs.get("stride", 1), tuple(attrs.get("pad", (0, 0, 0, 0)))
    if not 1 <= k <= MAX_KERNEL:
        raise _Bad("w", f"expected a kernel side 1..{MAX_KERNEL}, found {k}")
    if max(pad) >= k:
        raise _Bad("pad", f"expected every side < the kernel side {k}, found {pad}")
    if k > h + pad[0] + pad[1] or k > w + pad[2] + pad[3]:
        raise _Bad("w", f"expected a kernel no larger than the padded input, found kernel {k} on a "
                        f"{h}x{w} map with pads {pad}")
    return (h + pad[0] + pad[1] - k) // stride + 1, (w + pad[2] + pad[3] - k) // stride + 1


def _bias(params, c_out):
    return {"b": (c_out,)} if "b" in params else {}


def _conv2d(ins, attrs, params):
    h, w, c = _image(ins[0])
    k, k2, c_in, c_out = _param(params, "w", 4)
    if k != k2 or c_in != c:
        raise _Bad("w", f"expected shape (k, k, {c}, c_out), found {(k, k2, c_in, c_out)}")
    return {"w": (k, k, c, c_out), **_bias(params, c_out)}, (*_window(h, w, k, attrs), c_out)


def _depthwise(ins, attrs, params):
    h, w, c = _image(ins[0])
    k, k2, c_out = _param(params, "w", 3)
    if k != k2 or c_out % c:
        raise _Bad("w", f"expected shape (k, k, {c} x depth multiplier), found {(k, k2, c_out)}")
    return {"w": (k, k, c_out), **_bias(params, c_out)}, (*_window(h, w, k, attrs), c_out)


def _pointwise(ins, attrs, params):
    h, w, c = _image(ins[0])
    c_out = _param(params, "w", 2)[1]
    return {"w": (c, c_out), **_bias(params, c_out)}, (h, w, c_out)


def _dense(ins, attrs, params):
    if len(ins[0]) != 1:
        raise _Bad("input", f"expected a vector (c,), found shape {ins[0]}")
    c_out = _param(params, "w", 2)[1]
    return {"w": (ins[0][0], c_out), **_bias(params, c_out)}, (c_out,)


def _batchnorm(ins, attrs, params):
    c = ins[0][-1]
    return {p: (c,) for p in ("gamma", "beta", "mean", "var")}, ins[0]


def _clamp_shape(ins, attrs, params):
    if not attrs["lo"] <= attrs["hi"]:
        raise _Bad("lo", f"expected lo <= hi, found ({attrs['lo']}, {attrs['hi']})")
    return {}, ins[0]


def _zero_pad(ins, attrs, params):
    h, w, c = _image(ins[0])
    top, bottom, left, right = attrs["pad"]
    return {}, (h + top + bottom, w + left + right, c)


def _add(ins, attrs, params):
    if ins[0] != ins[1]:
        raise _Bad("input", f"expected two values of one shape, found {ins[0]} and {ins[1]}")
    return {}, ins[0]


def _pool(ins, attrs, params):
    return {}, (_image(ins[0])[-1],)


def _softmax(ins, attrs, params):
    if len(ins[0]) != 1:
        raise _Bad("input", f"expected a vector (c,), found shape {ins[0]}")
    return {}, ins[0]


class Op(NamedTuple):
    inputs: int  # or a tuple of the counts allowed
    attrs: dict  # attribute -> (check, required)
    infer: Callable


_CONV = {"stride": (_stride, False), "pad": (_pad, False), "clamp": (_clamp, False)}
OPS = {
    "conv2d": Op(1, _CONV, _conv2d),
    "depthwise_conv2d": Op(1, _CONV, _depthwise),
    "pointwise_conv2d": Op(1, {"clamp": (_clamp, False)}, _pointwise),
    "dense": Op(1, {"clamp": (_clamp, False)}, _dense),
    "batchnorm": Op(1, {"eps": (_eps, True)}, _batchnorm),
    "clamp": Op(1, {"lo": (_bound("lo"), True), "hi": (_bound("hi"), True)}, _clamp_shape),
    "zero_pad": Op(1, {"pad": (_pad, True)}, _zero_pad),
    "add": Op(2, {}, _add),
    "global_avg_pool": Op(1, {}, _pool),
    "global_max_pool": Op(1, {}, _pool),
    "softmax": Op(1, {}, _softmax),
}


# --- the graph -----------------------------------------------------------------------------------

def _check_shape(shape, what):
    if not isinstance(shape, (tuple, list)) or len(shape) not in (1, 3) or \
            not all(_is_int(d) and 1 <= d <= MAX_DIM for d in shape):
        raise _Bad("shape", f"expected {what} as 1 or 3 integers 1..{MAX_DIM}, found {shape!r}")
    return tuple(int(d) for d in shape)


def _check_node(node, shapes, ops):
    """The node's output shape, after checking its op (one of `ops`), inputs, attributes, shape
    and params."""
    spec = ops.get(node.op)
    if spec is None:
        raise _Bad("op", f"unknown op {node.op!r}; known: {', '.join(ops)}")
    counts = spec.inputs if isinstance(spec.inputs, tuple) else (spec.inputs,)
    if len(node.inputs) not in counts:
        raise _Bad("inputs", f"expected {' or '.join(map(str, counts))} input(s), found {len(node.inputs)}")
    for name in node.inputs:
        if name not in shapes:
            raise _Bad("inputs", f"reads {name!r}, which no earlier node computes")
    for attr in node.attrs:
        if attr not in spec.attrs:
            raise _Bad(attr, f"not an attribute of {node.op} (it takes: {', '.join(spec.attrs) or 'none'})")
    for attr, (check, required) in spec.attrs.items():
        if attr in node.attrs:
            check(node.attrs[attr])
        elif required:
            raise _Bad(attr, "missing")
    expected, out = spec.infer([shapes[i] for i in node.inputs], node.attrs, dict(node.params))
    if set(node.params) != set(expected) or any(tuple(node.params[p]) != s for p, s in expected.items()):
        found = {p: tuple(s) for p, s in node.params.items()}
        raise _Bad("params", f"expected weight shapes {expected}, found {found}")
    declared = _check_shape(node.shape, "the node's shape")
    if declared != tuple(out):
        raise _Bad("shape", f"expected {tuple(out)} from its inputs, found {declared}")
    return declared


def _fail(source, node, bad):
    raise WeightFileError(f"{source}: node {node.name!r} ({node.op}): {bad.attr}: {bad.message}")


def check_graph(graph, source="<memory>", ops=None):
    """Raise one WeightFileError (naming the source, the node and the attribute) unless the graph
    is one the engine can run within the memory limits; returns None. `ops`: the op table (OPS,
    or the integer ops' qvalidate.QOPS)."""
    try:
        shapes = {"input": _check_shape(graph.input_shape, "the input shape")}
    except _Bad as bad:
        raise WeightFileError(f"{source}: the graph's input_shape: {bad.message}") from None
    if len(shapes["input"]) != 3 or not 1 <= len(graph.nodes) <= MAX_NODES:
        raise WeightFileError(f"{source}: expected an (h, w, c) input and 1..{MAX_NODES} nodes, found "
                              f"input {shapes['input']} and {len(graph.nodes)} nodes")
    for node in graph.nodes:
        if not isinstance(node.name, str) or not node.name or node.name in shapes:
            raise WeightFileError(f"{source}: node name {node.name!r}: empty, not a string, or used twice")
        try:
            shapes[node.name] = _check_node(node, shapes, OPS if ops is None else ops)
        except _Bad as bad:
            _fail(source, node, bad)
    _check_dead(graph, source)
    _check_memory(graph, source)


def _check_dead(graph, source):
    read = {name for n in graph.nodes for name in n.inputs}
    dead = [n.name for n in graph.nodes[:-1] if n.name not in read]
    if dead:
        raise WeightFileError(f"{source}: node(s) {', '.join(map(repr, dead[:5]))} compute values that no later "
                              f"node reads (the output is the last node, {graph.output!r})")


def _node_bytes(node):
    """float32 bytes a node needs for one image beyond its inputs: its output, plus the patch
    matrix (h_out * w_out x k * k * c_in) a standard convolution gathers."""
    size = math.prod(node.shape)
    if node.op == "conv2d":
        k, _, c_in, _ = node.params["w"]
        size += node.shape[0] * node.shape[1] * k * k * c_in
    return 4 * size


def _check_memory(graph, source):
    """Peak activation bytes for one image (values alive at once), and the weights' bytes."""
    last_use = {name: i for i, n in enumerate(graph.nodes) for name in n.inputs}
    live = {"input": 4 * math.prod(graph.input_shape)}
    limit = max_activation_bytes()
    for i, node in enumerate(graph.nodes):
        need = sum(live.values()) + _node_bytes(node)
        if need > limit:
            raise WeightFileError(f"{source}: node {node.name!r} ({node.op}): shape: one image needs {need:,} bytes "
                                  f"of activations here, above the limit of {limit:,} "
                                  "($NPMOBILE_MAX_ACTIVATION_BYTES)")
        for name in set(node.inputs):
            if last_use[name] == i:
                del live[name]
        live[node.name] = 4 * math.prod(node.shape)
    total = 4 * sum(math.prod(s) for n in graph.nodes for s in n.params.values())
    if total > max_weight_bytes():
        raise WeightFileError(f"{source}: the graph declares {total:,} bytes of weights, above the limit of "
                              f"{max_weight_bytes():,} ($NPMOBILE_MAX_WEIGHT_BYTES)")


# --- tensors, config and labels --------------------------------------------------------------------

def _finite(values, positive):
    return all(_is_real(v) and math.isfinite(v) and (v > 0 or not positive) for v in values)


def check_config(graph, labels, source="<memory>"):
    """The config (when there is one) agrees with the graph: the input's side, the classes, a
    finite preprocessing with std > 0; labels (when given) one string per output class."""
    config, out = graph.config, graph.nodes[-1].shape
    if config is not None:
        pre = config.preprocess
        if not _finite(pre.mean, False) or not _finite(pre.std, True):
            raise WeightFileError(f"{source}: config preprocess: expected a finite mean and a finite std > 0, "
                                  f"found mean {pre.mean}, std {pre.std}")
        if config.resolution != graph.input_shape[0]:
            raise WeightFileError(f"{source}: config resolution: expected {graph.input_shape[0]} (the input's side), "
                                  f"found {config.resolution!r}")
        if config.include_top and len(out) == 1 and config.classes != out[0]:
            raise WeightFileError(f"{source}: config classes: expected {out[0]} (the output's size), "
                                  f"found {config.classes!r}")
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or not all(isinstance(s, str) for s in labels):
            raise WeightFileError(f"{source}: expected the labels as a list of strings")
        if len(out) != 1 or len(labels) != out[0]:
            raise WeightFileError(f"{source}: {len(labels)} labels for an output of shape {out}: "
                                  "expected one label per class")


def check_model(graph, params, labels=None, source="<memory>"):
    """Everything above, in order; returns the weights as float32 (see check_params)."""
    check_graph(graph, source)
    check_config(graph, labels, source)
    return check_params(graph, params, source)


# --- JSON metadata -----------------------------------------------------------------------------------

def load_json(data, source, what):
    """Parse untrusted JSON (bytes or str): too deep, not UTF-8 or not JSON -> WeightFileError."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text)
    except RecursionError:
        raise WeightFileError(f"{source}: {what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise WeightFileError(f"{source}: {what}: not valid JSON: {e}") from None
    depth = _json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise WeightFileError(f"{source}: {what}: JSON nested {depth} deep (at most {MAX_JSON_DEPTH})")
    return value


def _json_depth(value):
    """How deeply lists and dicts nest (iterative: no recursion on untrusted input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def expect(value, kind, source, what):
    """value if it is a `kind` (dict, list, str, int...), else WeightFileError naming `what`."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise WeightFileError(f"{source}: {what}: expected {names}, found {type(value).__name__}")
    return value
