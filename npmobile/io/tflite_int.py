"""A quantized .tflite file -> QuantizedModel: the integer graph TFLite's runtime executes.

Every operator keeps its integers: uint8/int8 weights with their zero points (one per tensor, or
one per output channel for int8 symmetric files), int32 biases, and per output channel the
multiplier and shift of M = s_x * s_w / s_y, derived from the file's float32 scales exactly as the
runtime derives them (kernels/quantized/fixedpoint.py). A fused activation becomes an integer
clamp on the output's scale (TFLite's CalculateActivationRangeQuantized). Node names are those of
the float importer (tflite.py), so the two engines' intermediates line up by name.

Ops: CONV_2D (-> qconv2d; 1x1 stride 1 unpadded -> qpointwise_conv2d; on a pooled vector ->
qdense), DEPTHWISE_CONV_2D, AVERAGE_POOL_2D over the whole map, ADD, RESHAPE/SQUEEZE of a pooled
vector, SOFTMAX, each one function in `TRANSLATE` as in tflite.py. tflite.load_tflite calls this
for a file whose activations are all 8-bit.
"""

import numpy as np

from ..config import Config
from ..errors import WeightFileError
from ..graph import Builder, Graph, conv_out
from ..kernels.quantized import add_multipliers, softmax_params
from ..kernels.quantized.fixedpoint import activation_range, conv_multipliers
from ..qmodel import QuantizedImport
from ._common import guess_arch
from .tflite import translate_ops

_EIGHT_BIT = ("UINT8", "INT8")


def _type_name(reader, t):
    types = reader.tfl.TensorType
    return next((k for k, v in vars(types).items() if v == reader.tensor(t).Type() and not k.startswith("_")), None)


def is_integer_graph(reader, ops):
    """True when the input and every operator's first input and output are 8-bit tensors."""
    tensors = [int(reader.g.Inputs(0))] + [t for op in ops for t in (op.inputs[0], op.output)]
    return all(_type_name(reader, t) in _EIGHT_BIT and reader.quant(t) is not None for t in tensors)


class _IntegerEmitter:
    """A Builder plus the integer tensors and every value's (scale, zero_point)."""

    def __init__(self, reader, input_shape, dtype):
        self.reader, self.dtype = reader, dtype
        self.builder = Builder(input_shape)
        self.params, self.quant = {}, {}

    def shape(self, value):
        return self.builder.shapes[value]

    def tensor_quant(self, t):
        """(scale, zero_point) of a per-tensor quantized activation."""
        scale, zero, _ = self.reader.quant(t)
        if len(scale) != 1:
            raise ValueError(f"tensor {self.reader.name(t)!r}: expected one scale for an activation, "
                             f"found {len(scale)}")
        return float(scale[0]), int(zero[0])

    def add(self, op, name, inputs, attrs, params, shape, out_tensor):
        """Append a node computing tensor out_tensor; returns its (unique) name."""
        base, i = name, 1
        while name in self.builder.shapes:
            i += 1
            name = f"{base}_{i}"
        for p, a in params.items():
            self.params[f"{name}.{p}"] = np.ascontiguousarray(a)
        self.builder.add(op, name, attrs, {p: a.shape for p, a in params.items()}, shape, inputs=inputs)
        self.quant[name] = self.tensor_quant(out_tensor)
        return name

    def clamp(self, options, out_tensor):
        """The fused activation of `options` (None: none) as an integer range on the output's scale."""
        act = self.reader.tfl.ActivationFunctionType
        code = options.FusedActivationFunction() if options is not None else act.NONE
        kind = {act.NONE: None, act.RELU: "relu", act.RELU_N1_TO_1: "relu_n1_to_1", act.RELU6: "relu6"}[code]
        info = np.iinfo(self.dtype)
        return activation_range(kind, *self.tensor_quant(out_tensor), info.min, info.max)


def _weights(reader, t, c_out):
    """Raw weights, and per output channel their zero points and scales."""
    w = reader.raw(t)
    scale, zero, _ = reader.quant(t)
    scale = np.broadcast_to(np.asarray(scale, np.float32), (c_out,)) if len(scale) == 1 else np.asarray(scale)
    zero = np.broadcast_to(np.asarray(zero, np.int64), (c_out,)) if len(zero) <= 1 else np.asarray(zero)
    if scale.shape != (c_out,) or zero.shape != (c_out,):
        raise ValueError(f"weights {reader.name(t)!r}: expected 1 or {c_out} scales, found {len(scale)} scales and "
                         f"{len(zero)} zero points")
    return w, np.ascontiguousarray(zero, dtype=np.int32), scale


def _conv(w, op, x):
    """CONV_2D -> qconv2d (1x1 stride 1 unpadded: qpointwise_conv2d; on a pooled vector: qdense);
    DEPTHWISE_CONV_2D -> qdepthwise_conv2d. Weights OHWI -> HWIO, (1, k, k, c * m) -> HWC."""
    from .tflite import _pads
    em, reader, o = w.em, w.reader, w.options(op)
    if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
        raise ValueError("unequal strides and dilated convolutions are not supported")
    depthwise = op.kind == "DEPTHWISE_CONV_2D"
    c_out = reader.shape(op.inputs[1])[3 if depthwise else 0]
    weight, w_zero, w_scales = _weights(reader, op.inputs[1], c_out)
    if weight.dtype != em.dtype:
        raise ValueError(f"weights of dtype {weight.dtype} on {em.dtype} activations are not supported")
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    b = reader.raw(op.inputs[2]) if has_bias else np.zeros(c_out, np.int32)
    if b is None or b.dtype != np.int32 or b.shape != (c_out,):
        raise ValueError(f"expected a constant int32 bias of shape ({c_out},), found "
                         f"{None if b is None else (b.dtype, b.shape)}")
    multiplier, shift = conv_multipliers(em.quant[x][0], w_scales, em.tensor_quant(op.output)[0])
    params = dict(b=b, w_zero=w_zero, multiplier=multiplier, shift=shift)
    attrs = dict(x_zero=em.quant[x][1], y_zero=em.tensor_quant(op.output)[1], clamp=em.clamp(o, op.output))
    s = em.shape(x)
    weight = weight[0] if depthwise else weight.transpose(1, 2, 3, 0)
    if depthwise and weight.shape[-1] != s[-1] * o.DepthMultiplier():
        raise ValueError(f"depthwise weights {weight.shape} do not fit {s[-1]} channels x multiplier "
                         f"{o.DepthMultiplier()}")
    if len(s) == 1:  # a pooled vector: a 1x1 convolution is a fully connected layer
        if depthwise or weight.shape[:2] != (1, 1):
            raise ValueError(f"only a 1x1 convolution applies to a pooled vector of {s[0]} channels")
        return em.add("qdense", op.name, (x,), attrs, dict(w=weight.reshape(s[0], c_out), **params), (c_out,),
                      op.output)
    pad = _pads(w, s, weight.shape[:2], o.StrideH(), o.Padding())
    shape = (conv_out(s[0], weight.shape[0], o.StrideH(), pad[0], pad[1]),
             conv_out(s[1], weight.shape[1], o.StrideH(), pad[2], pad[3]), c_out)
    if depthwise:
        return em.add("qdepthwise_conv2d", op.name, (x,), dict(attrs, stride=o.StrideH(), pad=pad),
                      dict(w=weight, **params), shape, op.output)
    if weight.shape[:2] == (1, 1) and o.StrideH() == 1 and not any(pad):
        return em.add("qpointwise_conv2d", op.name, (x,), attrs, dict(w=weight.reshape(s[2], c_out), **params),
                      shape, op.output)
    return em.add("qconv2d", op.name, (x,), dict(attrs, stride=o.StrideH(), pad=pad), dict(w=weight, **params),
                  shape, op.output)


def _same_quant(em, x, out, what):
    if em.quant[x] != em.tensor_quant(out):
        raise ValueError(f"{what} changes the quantization from {em.quant[x]} to {em.tensor_quant(out)}: "
                         "not supported (the runtime copies the integers unchanged)")


def _average_pool(w, op, x):
    """AVERAGE_POOL_2D over the whole map -> qglobal_avg_pool (input and output share a scale)."""
    o, s = w.options(op), w.em.shape(x)
    if len(s) != 3 or (o.FilterHeight(), o.FilterWidth()) != s[:2] or w.reader.shape(op.output)[1:3] != (1, 1):
        raise ValueError(f"only a pool over the whole map is supported: a {o.FilterHeight()}x{o.FilterWidth()} "
                         f"window on a {s[0]}x{s[1]} map")
    _same_quant(w.em, x, op.output, "the average pool")
    return w.em.add("qglobal_avg_pool", op.name, (x,), dict(clamp=w.em.clamp(o, op.output)), {}, (s[-1],), op.output)


def _add(w, op, x):
    """ADD of two computed values -> qadd, with TFLite's rescaling (left shift 20)."""
    em, other = w.em, w.values.get(op.inputs[1])
    if other is None:
        raise ValueError("adds a constant: not supported")
    if em.shape(x) != em.shape(other):
        raise ValueError(f"adds values of shapes {em.shape(x)} and {em.shape(other)}")
    (s_a, z_a), (s_b, z_b), (s_y, z_y) = em.quant[x], em.quant[other], em.tensor_quant(op.output)
    attrs = dict(a_zero=z_a, b_zero=z_b, y_zero=z_y, **add_multipliers(s_a, s_b, s_y), left_shift=20,
                 clamp=em.clamp(w.options(op), op.output))
    return em.add("qadd", op.name, (x, other), attrs, {}, em.shape(x), op.output)


def _reshape(w, op, x):
    """RESHAPE and SQUEEZE that only drop 1-axes of a pooled vector: the same integers."""
    shape, new = w.em.shape(x), w.reader.shape(op.output)[1:]
    if not (len(shape) == 1 and [d for d in new if d != 1] == list(shape)):
        raise ValueError(f"only reshapes that drop 1-axes of a pooled vector are supported: {shape} -> {new}")
    _same_quant(w.em, x, op.output, "the reshape")
    return x


def _softmax(w, op, x):
    """SOFTMAX -> qsoftmax; its output must be scale 1/256 (zero point 0 for uint8, -128 for int8)."""
    em, o = w.em, w.options(op)
    if len(em.shape(x)) != 1:
        raise ValueError(f"softmax over a {em.shape(x)} value: only a vector is supported")
    expected = (1 / 256, 0 if em.dtype == np.uint8 else -128)
    if em.tensor_quant(op.output) != expected:
        raise ValueError(f"a quantized softmax output must have scale 1/256 and zero point {expected[1]}, "
                         f"found {em.tensor_quant(op.output)}")
    params = softmax_params(em.quant[x][0], o.Beta() if o is not None else 1.0)
    return em.add("qsoftmax", op.name, (x,), params, {}, em.shape(x), op.output)


TRANSLATE = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "AVERAGE_POOL_2D": _average_pool, "ADD": _add,
             "RESHAPE": _reshape, "SQUEEZE": _reshape, "SOFTMAX": _softmax}


def build_integer(walk, ops, shape, preprocess, labels_for):
    """The QuantizedImport of a file whose every activation is 8-bit (is_integer_graph). `walk`
    is tflite.py's _Walk (its options() reads an operator's options); its emitter is replaced."""
    reader, path = walk.reader, walk.reader.path
    inp = int(reader.g.Inputs(0))
    dtype = np.uint8 if _type_name(reader, inp) == "UINT8" else np.int8
    em = _IntegerEmitter(reader, shape[1:], dtype)
    em.quant["input"] = em.tensor_quant(inp)
    w = walk._replace(em=em, values={inp: "input"})
    translate_ops(w, ops, TRANSLATE)
    nodes = em.builder.nodes
    output = w.values.get(int(reader.g.Outputs(0)))
    if output is None or not nodes or nodes[-1].name != output:
        raise WeightFileError(f"{path}: the output tensor {reader.name(reader.g.Outputs(0))!r} is not the last "
                              "value computed")
    read = {i for n in nodes for i in n.inputs}
    dead = [n.name for n in nodes[:-1] if n.name not in read]
    if dead:
        raise WeightFileError(f"{path}: node(s) {', '.join(dead[:5])} compute values that neither the output nor "
                              "any later node reads: a second output or branch npmobile cannot run")
    classes = em.shape(output)[-1]
    # guess_arch and the output kind read the float op names: "qdepthwise_conv2d" -> "depthwise_conv2d".
    float_ops = [n._replace(op=n.op[1:]) for n in nodes]
    config = Config(arch=guess_arch(float_ops), resolution=shape[1], classes=classes,
                    output={"softmax": "probabilities", "dense": "logits"}.get(float_ops[-1].op, "features"),
                    convention="tfslim", preprocess=preprocess, input_layout="NHWC", source_format="tflite")
    graph = Graph(list(nodes), tuple(shape[1:]), config)
    return QuantizedImport(graph, em.params, em.quant, dtype, labels_for(classes), str(path))
