"""A quantized .tflite file -> QuantizedModel: the integer graph TFLite's runtime executes.

Every operator keeps its integers: uint8/int8 weights with their zero points (one per tensor, or
one per output channel for int8 symmetric files), int32 biases, and per output channel the
multiplier and shift of M = s_x * s_w / s_y, derived from the file's float32 scales exactly as the
runtime derives them (kernels/quantized/fixedpoint.py). A fused activation becomes an integer
clamp on the output's scale (TFLite's CalculateActivationRangeQuantized). Node names are those of
the float importer (tflite.py), so the two engines' intermediates line up by name.

Ops: CONV_2D (-> qconv2d; 1x1 stride 1 unpadded -> qpointwise_conv2d; on a pooled vector ->
qdense), DEPTHWISE_CONV_2D, AVERAGE_POOL_2D over the whole map, ADD, RESHAPE/SQUEEZE of a pooled
vector, SOFTMAX. tflite.load_tflite calls this for a file whose activations are all 8-bit.
"""

import numpy as np

from ..graph import Builder, conv_out
from ..kernels.quantized import add_multipliers, softmax_params
from ..kernels.quantized.fixedpoint import activation_range, conv_multipliers
from ..qmodel import QuantizedModel

_ACTIVATION = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6"}
_EIGHT_BIT = {3: np.uint8, 9: np.int8}  # TensorType UINT8, INT8


def is_integer_graph(reader):
    """True when the input and every operator's first input and output are 8-bit tensors."""
    g = reader.g
    tensors = [int(g.Inputs(0))]
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        tensors += [int(op.Inputs(0)), int(op.Outputs(0))]
    return all(reader.tensor(t).Type() in _EIGHT_BIT and reader.quant(t) is not None for t in tensors)


class _IntegerEmitter:
    """Builder plus the integer tensors and every value's (scale, zero_point)."""

    def __init__(self, reader, input_shape, dtype):
        self.reader, self.dtype = reader, dtype
        self.b = Builder(input_shape)
        self.params, self.quant = {}, {}

    def shape(self, value):
        return self.b.shapes[value]

    def tensor_quant(self, t):
        """(scale, zero_point) of a per-tensor quantized activation."""
        scale, zero, _ = self.reader.quant(t)
        if len(scale) != 1:
            raise ValueError(f"tensor {self.reader.name(t)!r}: expected one scale for an activation, found {len(scale)}")
        return float(scale[0]), int(zero[0])

    def add(self, op, name, inputs, attrs, params, shape, out_tensor):
        name, base, i = name, name, 1
        while name in self.b.shapes:
            i += 1
            name = f"{base}_{i}"
        for p, a in params.items():
            self.params[f"{name}.{p}"] = np.ascontiguousarray(a)
        self.b.add(op, name, attrs, {p: a.shape for p, a in params.items()}, shape, inputs=inputs)
        self.quant[name] = self.tensor_quant(out_tensor)
        return name

    def clamp(self, code, out_tensor):
        scale, zero = self.tensor_quant(out_tensor)
        info = np.iinfo(self.dtype)
        return activation_range(_ACTIVATION[code], scale, zero, info.min, info.max)


def _weights(reader, t, c_out, axis):
    """Raw weights, and per output channel their zero points and scales."""
    w = reader.raw(t)
    scale, zero, _ = reader.quant(t)
    scale = np.broadcast_to(np.asarray(scale, np.float32), (c_out,)) if len(scale) == 1 else np.asarray(scale)
    zero = np.broadcast_to(np.asarray(zero, np.int64), (c_out,)) if len(zero) <= 1 else np.asarray(zero)
    if scale.shape != (c_out,) or zero.shape != (c_out,):
        raise ValueError(f"weights {reader.name(t)!r}: expected 1 or {c_out} scales along axis {axis}, "
                         f"found {len(scale)} scales and {len(zero)} zero points")
    return w, np.ascontiguousarray(zero, dtype=np.int32), scale


def _conv(reader, em, op, kind, x, name, ins, out):
    from .tflite import _options, _pads
    tfl = reader.tfl
    o = _options(reader, op, tfl.Conv2DOptions if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions)
    if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
        raise ValueError("unequal strides and dilated convolutions are not supported")
    w_shape = reader.shape(ins[1])
    c_out = w_shape[0] if kind == "CONV_2D" else w_shape[3]
    w, w_zero, w_scales = _weights(reader, ins[1], c_out, 0 if kind == "CONV_2D" else 3)
    if w.dtype != em.dtype:
        raise ValueError(f"weights of dtype {w.dtype} on {em.dtype} activations are not supported")
    b = reader.raw(ins[2]) if len(ins) > 2 and ins[2] >= 0 else np.zeros(c_out, np.int32)
    if b.dtype != np.int32 or b.shape != (c_out,):
        raise ValueError(f"expected an int32 bias of shape ({c_out},), found {b.dtype} {b.shape}")
    x_scale, x_zero = em.quant[x]
    y_scale, y_zero = em.tensor_quant(out)
    multiplier, shift = conv_multipliers(x_scale, w_scales, y_scale)
    params = dict(b=b, w_zero=w_zero, multiplier=multiplier, shift=shift)
    attrs = dict(x_zero=x_zero, y_zero=y_zero, clamp=em.clamp(o.FusedActivationFunction(), out))
    s = em.shape(x)
    if kind == "DEPTHWISE_CONV_2D":
        w = w[0]  # (1, k, k, c * m) -> HWC
        if w.shape[-1] != s[-1] * o.DepthMultiplier():
            raise ValueError(f"depthwise weights {w.shape} do not fit {s[-1]} channels x multiplier {o.DepthMultiplier()}")
    else:
        w = w.transpose(1, 2, 3, 0)  # OHWI -> HWIO
    k = w.shape[0]
    if len(s) == 1:  # a pooled vector: a 1x1 convolution is a fully connected layer
        if kind != "CONV_2D" or w.shape[:2] != (1, 1):
            raise ValueError(f"only a 1x1 convolution applies to a pooled vector of {s[0]} channels")
        return em.add("qdense", name, (x,), attrs, dict(w=w.reshape(s[0], c_out), **params), (c_out,), out)
    pad = _pads(s, w.shape[:2], o.StrideH(), o.Padding())
    h, wo = conv_out(s[0], k, o.StrideH(), pad[0], pad[1]), conv_out(s[1], w.shape[1], o.StrideH(), pad[2], pad[3])
    if kind == "DEPTHWISE_CONV_2D":
        attrs.update(stride=o.StrideH(), pad=pad)
        return em.add("qdepthwise_conv2d", name, (x,), attrs, dict(w=w, **params), (h, wo, c_out), out)
    if w.shape[:2] == (1, 1) and o.StrideH() == 1 and not any(pad):
        return em.add("qpointwise_conv2d", name, (x,), attrs, dict(w=w.reshape(s[2], c_out), **params),
                      (h, wo, c_out), out)
    attrs.update(stride=o.StrideH(), pad=pad)
    return em.add("qconv2d", name, (x,), attrs, dict(w=w, **params), (h, wo, c_out), out)


def _same_quant(em, x, out, what):
    if em.quant[x] != em.tensor_quant(out):
        raise ValueError(f"{what} changes the quantization from {em.quant[x]} to {em.tensor_quant(out)}: "
                         "not supported (the runtime copies the integers unchanged)")


def _translate(reader, em, values, op, kind):
    """Append the integer node(s) of one operator; returns the value name of its output."""
    from .tflite import _node_name, _options
    tfl = reader.tfl
    ins = [int(j) for j in op.InputsAsNumpy()]
    out = int(op.OutputsAsNumpy()[0])
    name = _node_name(reader, out)
    x = values[ins[0]]
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return _conv(reader, em, op, kind, x, name, ins, out)
    if kind == "AVERAGE_POOL_2D":
        o = _options(reader, op, tfl.Pool2DOptions)
        s = em.shape(x)
        if len(s) != 3 or (o.FilterHeight(), o.FilterWidth()) != s[:2] or reader.shape(out)[1:3] != (1, 1):
            raise ValueError(f"only a pool over the whole map is supported: a {o.FilterHeight()}x{o.FilterWidth()} "
                             f"window on a {s[0]}x{s[1]} map")
        _same_quant(em, x, out, "the average pool")
        return em.add("qglobal_avg_pool", name, (x,), dict(clamp=em.clamp(o.FusedActivationFunction(), out)), {},
                      (s[-1],), out)
    if kind == "ADD":
        o = _options(reader, op, tfl.AddOptions)
        a, b = x, values[ins[1]]
        if em.shape(a) != em.shape(b):
            raise ValueError(f"adds values of shapes {em.shape(a)} and {em.shape(b)}")
        (sa, za), (sb, zb), (sy, zy) = em.quant[a], em.quant[b], em.tensor_quant(out)
        attrs = dict(a_zero=za, b_zero=zb, y_zero=zy, **add_multipliers(sa, sb, sy), left_shift=20,
                     clamp=em.clamp(o.FusedActivationFunction() if o else 0, out))
        return em.add("qadd", name, (a, b), attrs, {}, em.shape(b), out)
    if kind in ("RESHAPE", "SQUEEZE"):
        kept = [d for d in reader.shape(out)[1:] if d != 1]
        if not (len(em.shape(x)) == 1 and kept == list(em.shape(x))):
            raise ValueError(f"only reshapes that drop 1-axes of a pooled vector are supported: "
                             f"{em.shape(x)} -> {reader.shape(out)[1:]}")
        _same_quant(em, x, out, "the reshape")
        return x
    if kind == "SOFTMAX":
        o = _options(reader, op, tfl.SoftmaxOptions)
        if len(em.shape(x)) != 1:
            raise ValueError(f"softmax over a {em.shape(x)} value: only a vector is supported")
        expected = (1 / 256, 0 if em.dtype == np.uint8 else -128)
        if em.tensor_quant(out) != expected:
            raise ValueError(f"a quantized softmax output must have scale 1/256 and zero point {expected[1]}, "
                             f"found {em.tensor_quant(out)}")
        params = softmax_params(em.quant[x][0], o.Beta() if o is not None else 1.0)
        return em.add("qsoftmax", name, (x,), params, {}, em.shape(x), out)
    raise AssertionError(kind)


def build_integer(reader, path, inp, shape, config_for, labels_for):
    """The QuantizedModel of a file whose every activation is 8-bit (is_integer_graph)."""
    from .tflite import _node_name
    from ..weights import WeightFileError
    g = reader.g
    dtype = _EIGHT_BIT[reader.tensor(inp).Type()]
    em = _IntegerEmitter(reader, shape[1:], dtype)
    em.quant["input"] = em.tensor_quant(inp)
    values = {inp: "input"}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        kind = reader.op_name(op)
        out = int(op.OutputsAsNumpy()[0])
        for j in op.InputsAsNumpy()[:2 if kind == "ADD" else 1]:
            if int(j) not in values:
                raise WeightFileError(f"{path}: node {_node_name(reader, out)!r} ({kind}) reads tensor "
                                      f"{reader.name(j)!r}, which no earlier node computes")
        try:
            values[out] = _translate(reader, em, values, op, kind)
        except ValueError as e:
            raise WeightFileError(f"{path}: node {_node_name(reader, out)!r} ({kind}): {e}") from None
    output = values.get(int(g.Outputs(0)))
    if output is None or not em.b.nodes or em.b.nodes[-1].name != output:
        raise WeightFileError(f"{path}: the output tensor {reader.name(g.Outputs(0))!r} is not the last value computed")
    read = {i for n in em.b.nodes for i in n.inputs}
    dead = [n.name for n in em.b.nodes[:-1] if n.name not in read]
    if dead:
        raise WeightFileError(f"{path}: node(s) {', '.join(dead[:5])} compute values that neither the output nor "
                              "any later node reads: a second output or branch npmobile cannot run")
    from ..graph import Graph
    from ._common import guess_arch
    classes = em.shape(output)[-1]
    config = config_for(classes, em.b.nodes[-1].op == "qsoftmax")
    # guess_arch reads the float op names: "qdepthwise_conv2d" -> "depthwise_conv2d", "qadd" -> "add".
    config = dict(config, arch=config.get("arch") or guess_arch([n._replace(op=n.op[1:]) for n in em.b.nodes]))
    graph = Graph(list(em.b.nodes), tuple(shape[1:]), config)
    return QuantizedModel(graph, em.params, em.quant, dtype, labels_for(classes), source=str(path))
