"""Validate once, at load, for integer graphs (npmobile.qmodel): a quantized file is untrusted
input too.

validate.check_graph runs on an integer graph with `QOPS`, the integer ops' table (one entry per
op, as validate.OPS: its inputs, its attributes, each typed and in range, and the shape
inference, which is the float op's: a quantized convolution has the float one's shapes, plus one
bias, weight zero point, multiplier and shift per output channel). Then `check_integer_params`
checks every integer tensor: the shape the graph declares, the weights of their input's 8-bit
type, biases and requantization arrays int32 with zero points in the type's range, multipliers
>= 0 and shifts in [-31, 30]. Anything else is one WeightFileError naming the file, the node and
the attribute or tensor, before a buffer is allocated; the kernels' own checks stay as a second
line when a plan binds them.
"""

import math

import numpy as np

from .graph import tensor_error
from .validate import (Op, _Bad, _conv2d, _dense, _depthwise, _fail, _is_int, _is_real, _pad, _pointwise, _pool,
                       _softmax, _stride)
from .validate import _add as _same_shapes

EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))


def _int_in(name, lo, hi):
    def check(v):
        if not _is_int(v) or not lo <= v <= hi:
            raise _Bad(name, f"expected an integer {lo}..{hi}, found {v!r}")
    return check


def _zero(name):
    return _int_in(name, -128, 255)  # the type's own range is checked with the tensors' types


def _int_clamp(v):
    if v is not None and (not isinstance(v, (tuple, list)) or len(v) != 2 or not all(_is_int(a) for a in v)
                          or not -128 <= v[0] <= v[1] <= 255):
        raise _Bad("clamp", f"expected None or integers (lo, hi) with -128 <= lo <= hi <= 255, found {v!r}")


def _scale(v):
    if not _is_real(v) or not math.isfinite(v) or not v > 0:
        raise _Bad("scale", f"expected a finite number > 0, found {v!r}")


def _one_of(name, allowed):
    def check(v):
        if v not in allowed:
            raise _Bad(name, f"expected one of {allowed}, found {v!r}")
    return check


def _rescaling(prefix=""):
    """The attributes of one fixed-point rescaling: {prefix}multiplier, {prefix}shift."""
    return {f"{prefix}multiplier": (_int_in(f"{prefix}multiplier", 0, (1 << 31) - 1), True),
            f"{prefix}shift": (_int_in(f"{prefix}shift", -31, 30), True)}


def _requantized(infer):
    """The float op's shape inference, plus the per-channel integer tensors of the epilogue."""
    def infer_q(ins, attrs, params):
        expected, out = infer(ins, attrs, params)
        return {**expected, **{p: (out[-1],) for p in ("w_zero", "multiplier", "shift")}}, out
    return infer_q


def _double_requantized(infer):
    """The float op's shape inference, plus the weight zero points and the double multipliers of
    an int8 FULLY_CONNECTED (qfully_connected.py)."""
    def infer_q(ins, attrs, params):
        expected, out = infer(ins, attrs, params)
        return {**expected, "w_zero": (out[-1],), "real_multiplier": (out[-1],)}, out
    return infer_q


def _same_shape(ins, attrs, params):
    return {}, ins[0]


def _float_requantized(infer):
    """The float op's shape inference, plus ONNX's per-channel weight zero point and float32
    output scale s_x s_w / s_y (qlinear.py)."""
    def infer_q(ins, attrs, params):
        expected, out = infer(ins, attrs, params)
        return {**expected, "w_zero": (out[-1],), "scale": (out[-1],)}, out
    return infer_q


def _qlinear_add(ins, attrs, params):
    """Two values of one shape, or a value plus a constant per channel ("b")."""
    if len(ins) == 2:
        return _same_shapes(ins, attrs, params)
    return {"b": (ins[0][-1],)}, ins[0]


_REQUANT = {"x_zero": (_zero("x_zero"), True), "y_zero": (_zero("y_zero"), True), "clamp": (_int_clamp, False)}
_WINDOW = {**_REQUANT, "stride": (_stride, False), "pad": (_pad, False)}
_TYPE = ("uint8", "int8")
_ONNX = {"x_zero": (_zero("x_zero"), True), "y_zero": (_zero("y_zero"), True)}
_ONNX_WINDOW = {**_ONNX, "stride": (_stride, False), "pad": (_pad, False)}


def _scaled(*names):
    """ONNX's attributes: a (float) scale and a zero point per name."""
    return {f"{n}_{kind}": ((_scale if kind == "scale" else _zero(f"{n}_zero")), True) for n in names
            for kind in ("scale", "zero")}



QOPS = {
    "qconv2d": Op(1, _WINDOW, _requantized(_conv2d)),
    "qdepthwise_conv2d": Op(1, _WINDOW, _requantized(_depthwise)),
    "qpointwise_conv2d": Op(1, _REQUANT, _requantized(_pointwise)),
    "qdense": Op(1, _REQUANT, _requantized(_dense)),
    "qfully_connected": Op(1, _REQUANT, _double_requantized(_dense)),
    "qadd": Op(2, {**{z: (_zero(z), True) for z in ("a_zero", "b_zero", "y_zero")}, **_rescaling("a_"),
                   **_rescaling("b_"), **_rescaling("y_"), "left_shift": (_int_in("left_shift", 0, 30), False),
                   "clamp": (_int_clamp, False)}, _same_shapes),
    "qglobal_avg_pool": Op(1, {"clamp": (_int_clamp, False)}, _pool),
    "qmean": Op(1, {"x_zero": (_zero("x_zero"), True), "y_zero": (_zero("y_zero"), True), **_rescaling()}, _pool),
    "qsoftmax": Op(1, {"multiplier": (_int_in("multiplier", 0, (1 << 31) - 1), True),
                       "left_shift": (_int_in("left_shift", 0, 31), True),
                       "diff_min": (_int_in("diff_min", -(1 << 31), 0), True)}, _softmax),
    "quantize": Op(1, {"scale": (_scale, True), "zero_point": (_zero("zero_point"), True),
                       "dtype": (_one_of("dtype", _TYPE), True),
                       "rounding": (_one_of("rounding", ("away", "even")), False)}, _same_shape),
    "dequantize": Op(1, {"scale": (_scale, True), "zero_point": (_zero("zero_point"), True)}, _same_shape),
    "rescale": Op(1, {"x_zero": (_zero("x_zero"), True), "y_zero": (_zero("y_zero"), True), **_rescaling(),
                      "dtype": (_one_of("dtype", _TYPE), True)}, _same_shape),
    # ONNX's QLinear ops, requantized in float32 (qlinear*.py)
    "qlinear_conv2d": Op(1, _ONNX_WINDOW, _float_requantized(_conv2d)),
    "qlinear_depthwise_conv2d": Op(1, _ONNX_WINDOW, _float_requantized(_depthwise)),
    "qlinear_pointwise_conv2d": Op(1, _ONNX, _float_requantized(_pointwise)),
    "qlinear_matmul": Op(1, _ONNX, _float_requantized(_dense)),
    "qlinear_add": Op((1, 2), _scaled("a", "b", "y"), _qlinear_add),
    "qlinear_global_avg_pool": Op(1, _scaled("x", "y"), _pool),
}


def _tensor_types(graph, dtypes):
    """{tensor key: the dtypes it may have}: TFLite's weights of their input's 8-bit type, ONNX's
    weights and a QLinearAdd's constant either 8-bit type (an ONNX file pairs uint8 activations
    with int8 weights), ONNX's output scales float32, an int8 FULLY_CONNECTED's multipliers
    float64, the rest int32."""
    types = {}
    for node in graph.nodes:
        onnx = node.op.startswith("qlinear")
        for p in node.params:
            if p == "w" or (p == "b" and node.op == "qlinear_add"):
                types[f"{node.name}.{p}"] = EIGHT_BIT if onnx else (dtypes[node.inputs[0]],)
            else:
                float_type = {"scale": np.float32, "real_multiplier": np.float64}.get(p, np.int32)
                types[f"{node.name}.{p}"] = (np.dtype(float_type),)
    return types


def _tensor_problem(key, a, shape, dtypes):
    """What is wrong with one integer tensor (None: nothing)."""
    if not isinstance(a, np.ndarray) or a.dtype not in dtypes:
        return f"{key}: expected {' or '.join(map(str, dtypes))}, found {getattr(a, 'dtype', type(a).__name__)}"
    if tuple(a.shape) != shape:
        return f"{key}: expected shape {shape}, found {tuple(a.shape)}"
    if a.dtype.kind == "f":
        return None if np.isfinite(a).all() and (a >= 0).all() else f"{key}: expected finite values >= 0"
    name = key.rsplit(".", 1)[1]
    lo, hi = {"w_zero": (-128, 255), "multiplier": (0, (1 << 31) - 1), "shift": (-31, 30)}.get(name, (None, None))
    if lo is not None and a.size and (a.min() < lo or a.max() > hi):
        return f"{key}: expected values {lo}..{hi}, found {a.min()}..{a.max()}"
    return None


def _zero_problem(key, params):
    """A weight zero point outside its weights' type (a uint8 tensor's below 0, an int8's above
    127): what the kernels would refuse at the first call, refused at load."""
    w, zero = params.get(key[:-len("_zero")]), params.get(key)
    if not isinstance(w, np.ndarray) or w.dtype not in EIGHT_BIT or not isinstance(zero, np.ndarray) \
            or zero.dtype.kind not in "iu" or not zero.size:
        return None  # reported by _tensor_problem
    info = np.iinfo(w.dtype)
    if zero.min() < info.min or zero.max() > info.max:
        return f"{key}: expected values {info.min}..{info.max} for {w.dtype} weights, found {zero.min()}..{zero.max()}"
    return None


def check_integer_params(graph, params, dtypes, source="<memory>"):
    """One WeightFileError naming every missing, unexpected and wrong integer tensor; `dtypes` is
    each value's type (qmodel.value_dtypes), which the weights of the node reading it share."""
    if not hasattr(params, "items"):
        raise tensor_error(graph, source, wrong=[f"expected a mapping of names to arrays, found "
                                                 f"{type(params).__name__}"])
    expected, types = graph.param_shapes(), _tensor_types(graph, dtypes)
    missing = [k for k in expected if k not in params]
    wrong = [p for p in (_tensor_problem(k, params[k], expected[k], types[k]) for k in expected if k in params) if p]
    wrong += [p for p in (_zero_problem(k, params) for k in expected if k.endswith(".w_zero")) if p]
    error = tensor_error(graph, source, missing, set(params) - set(expected), wrong)
    if error:
        raise error


def _zero_type(node, attr, dtypes):
    """The type whose range a zero point or clamp attribute must fit: the input's (x, a, b, a
    dequantize's zero point) or the output's (y, a quantize's, the fused clamp)."""
    if attr in ("x_zero", "a_zero", "b_zero") or (attr == "zero_point" and node.op == "dequantize"):
        return dtypes[node.inputs[0]]
    return dtypes[node.name]


def check_types(graph, dtypes, source="<memory>"):
    """Every integer op reads 8-bit values of one type (quantize: float32), and its zero points
    and clamp fit the range of the type they belong to."""
    for node in graph.nodes:
        wanted = (np.dtype(np.float32),) if node.op == "quantize" else EIGHT_BIT
        found = [dtypes[name] for name in node.inputs]
        try:
            if any(d not in wanted for d in found) or len(set(found)) > 1:
                raise _Bad("inputs", f"expected {' or '.join(map(str, wanted))} values of one type, found "
                                     f"{', '.join(map(str, found))}")
            for attr in ("x_zero", "a_zero", "b_zero", "y_zero", "zero_point", "clamp"):
                if node.attrs.get(attr) is None:
                    continue
                value, info = node.attrs[attr], np.iinfo(_zero_type(node, attr, dtypes))
                if not all(info.min <= v <= info.max for v in np.ravel(value)):
                    raise _Bad(attr, f"expected integers {info.min}..{info.max} for {info.dtype}, found {value}")
        except _Bad as bad:
            _fail(source, node, bad)
