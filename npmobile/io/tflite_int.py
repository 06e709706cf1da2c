"""A quantized .tflite file -> QuantizedModel: the integer graph TFLite's runtime executes.

Every operator keeps its integers: uint8/int8 weights with their zero points (one per tensor, or
one per output channel for int8 symmetric files), int32 biases, and per output channel the
multiplier and shift of M = s_x * s_w / s_y, derived from the file's float32 scales exactly as the
runtime derives them (kernels/quantized/fixedpoint.py). A fused activation becomes an integer
clamp on the output's scale (TFLite's CalculateActivationRangeQuantized). Node names are those of
the float importer (tflite.py), so the two engines' intermediates line up by name.

Ops: CONV_2D (-> qconv2d; 1x1 stride 1 unpadded -> qpointwise_conv2d; on a pooled vector ->
qdense), DEPTHWISE_CONV_2D, AVERAGE_POOL_2D over the whole map, MEAN over H and W (-> qmean),
ADD, FULLY_CONNECTED (-> qfully_connected; uint8: qdense), RESHAPE/SQUEEZE of a pooled vector, SOFTMAX, QUANTIZE (float
-> 8-bit at the input: quantize; 8-bit -> 8-bit: rescale) and DEQUANTIZE at the output, each one
function in `TRANSLATE` as in tflite.py. tflite.load_tflite calls this for a file whose operators
all compute on 8-bit tensors (is_integer_graph).
"""

import numpy as np

from ..config import Config
from ..errors import WeightFileError
from ..graph import REPRESENTATION_OPS, Graph, conv_out
from ..kernels.quantized import add_multipliers, softmax_params
from ..kernels.quantized.fixedpoint import activation_range, conv_multipliers, rescale_multiplier
from ..kernels.quantized.qfully_connected import real_multipliers
from ..qmodel import QuantizedImport
from ._common import IntegerEmitter, guess_arch
from .tflite import translate_ops

_DTYPES = {"UINT8": np.dtype(np.uint8), "INT8": np.dtype(np.int8), "FLOAT32": np.dtype(np.float32)}


def _type_name(reader, t):
    types = reader.tfl.TensorType
    return next((k for k, v in vars(types).items() if v == reader.tensor(t).Type() and not k.startswith("_")), None)


def _eight_bit(reader, t):
    return _type_name(reader, t) in ("UINT8", "INT8") and reader.quant(t) is not None


def is_integer_graph(reader, ops, skip):
    """True when every operator but the shape arithmetic (kinds in `skip`) reads and writes 8-bit
    tensors (its first input and its output), a QUANTIZE reading and a DEQUANTIZE writing the
    float ends of a file with float input or output aside."""
    return all((_eight_bit(reader, op.inputs[0]) or op.kind == "QUANTIZE")
               and (_eight_bit(reader, op.output) or op.kind == "DEQUANTIZE") for op in ops if op.kind not in skip)


class _IntegerEmitter(IntegerEmitter):
    """The quantized importers' emitter, with every value's dtype, reading each value's
    quantization and type from the tensor it computes."""

    def __init__(self, reader, input_shape):
        super().__init__(input_shape)
        self.reader, self.dtypes = reader, {}

    def tensor_quant(self, t):
        """(scale, zero_point) of a per-tensor quantized activation; None for a float one."""
        if _type_name(self.reader, t) == "FLOAT32":
            return None
        scale, zero, _ = self.reader.quant(t)
        if len(scale) != 1:
            raise ValueError(f"tensor {self.reader.name(t)!r}: expected one scale for an activation, "
                             f"found {len(scale)}")
        return float(scale[0]), int(zero[0])

    def tensor_dtype(self, t):
        name = _type_name(self.reader, t)
        if name not in _DTYPES:
            raise ValueError(f"tensor {self.reader.name(t)!r}: expected a uint8, int8 or float32 activation, "
                             f"found {name}")
        return _DTYPES[name]

    def add(self, op, name, inputs, attrs, params, shape, out_tensor):
        """Append a node computing tensor out_tensor; returns its (unique) name."""
        name = super().add(op, name, inputs, attrs, params, shape, self.tensor_quant(out_tensor))
        self.dtypes[name] = self.tensor_dtype(out_tensor)
        return name

    def clamp(self, options, out_tensor):
        """The fused activation of `options` (None: none) as an integer range on the output's scale."""
        act = self.reader.tfl.ActivationFunctionType
        code = options.FusedActivationFunction() if options is not None else act.NONE
        kind = {act.NONE: None, act.RELU: "relu", act.RELU_N1_TO_1: "relu_n1_to_1", act.RELU6: "relu6"}[code]
        info = np.iinfo(self.tensor_dtype(out_tensor))
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


def _requantized(w, op, x, c_out):
    """What every layer with weights shares: the raw weights with their per-channel zero
    points, the int32 bias, the multipliers and shifts of M = s_x * s_w / s_y, and the attrs
    (zero points, fused activation): (weight, params, attrs)."""
    em, reader = w.em, w.reader
    weight, w_zero, w_scales = _weights(reader, op.inputs[1], c_out)
    if weight.dtype != em.dtypes[x]:
        raise ValueError(f"weights of dtype {weight.dtype} on {em.dtypes[x]} activations are not supported")
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    b = reader.raw(op.inputs[2]) if has_bias else np.zeros(c_out, np.int32)
    if b is None or b.dtype != np.int32 or b.shape != (c_out,):
        raise ValueError(f"expected a constant int32 bias of shape ({c_out},), found "
                         f"{None if b is None else (b.dtype, b.shape)}")
    (s_x, z_x), (s_y, z_y) = em.quant[x], em.tensor_quant(op.output)
    # LiteRT takes s_x * s_w in double for int8 layers, in float32 on the legacy uint8 path
    multiplier, shift = conv_multipliers(s_x, w_scales, s_y, double_product=weight.dtype == np.int8)
    params = dict(b=b, w_zero=w_zero, multiplier=multiplier, shift=shift)
    return weight, params, dict(x_zero=z_x, y_zero=z_y, clamp=em.clamp(w.options(op), op.output))


def _conv(w, op, x):
    """CONV_2D -> qconv2d (1x1 stride 1 unpadded: qpointwise_conv2d; on a pooled vector: qdense);
    DEPTHWISE_CONV_2D -> qdepthwise_conv2d. Weights OHWI -> HWIO, (1, k, k, c * m) -> HWC."""
    from .tflite import _pads
    em, reader, o = w.em, w.reader, w.options(op)
    if o.StrideH() != o.StrideW() or o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
        raise ValueError("unequal strides and dilated convolutions are not supported")
    depthwise = op.kind == "DEPTHWISE_CONV_2D"
    c_out = reader.shape(op.inputs[1])[3 if depthwise else 0]
    weight, params, attrs = _requantized(w, op, x, c_out)
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
    expected = (1 / 256, 0 if em.dtypes[x] == np.uint8 else -128)
    if em.tensor_quant(op.output) != expected:
        raise ValueError(f"a quantized softmax output must have scale 1/256 and zero point {expected[1]}, "
                         f"found {em.tensor_quant(op.output)}")
    params = softmax_params(em.quant[x][0], o.Beta() if o is not None else 1.0)
    return em.add("qsoftmax", op.name, (x,), params, {}, em.shape(x), op.output)


def _fully_connected(w, op, x):
    """FULLY_CONNECTED (weights (out, in), one scale or one per output) on a vector ->
    qfully_connected (int8) or qdense (uint8)."""
    o, shape = w.options(op), w.em.shape(x)
    if o is not None and o.WeightsFormat() != 0:
        raise ValueError(f"weights format {o.WeightsFormat()} (only DEFAULT)")
    w_shape = w.reader.shape(op.inputs[1])
    if len(shape) != 1 or len(w_shape) != 2 or w_shape[1] != shape[0]:
        raise ValueError(f"only a fully-connected layer on a vector is supported: weights {w_shape} on a value "
                         f"of shape {shape}")
    weight, params, attrs = _requantized(w, op, x, w_shape[0])
    if weight.dtype == np.uint8:  # the legacy path: fixed-point multipliers, as CONV_2D
        return w.em.add("qdense", op.name, (x,), attrs, dict(w=weight.T, **params), (w_shape[0],), op.output)
    # int8: LiteRT's reference kernel rescales in double (qfully_connected.py)
    _, _, w_scales = _weights(w.reader, op.inputs[1], w_shape[0])
    real = real_multipliers(w.em.quant[x][0], w_scales, w.em.tensor_quant(op.output)[0])
    params = dict(b=params["b"], w_zero=params["w_zero"], real_multiplier=real)
    return w.em.add("qfully_connected", op.name, (x,), attrs, dict(w=weight.T, **params), (w_shape[0],), op.output)


def _mean(w, op, x):
    """MEAN over H and W (Keras' GlobalAveragePooling2D) -> qmean, with its own output scale."""
    em, axes = w.em, w.reader.raw(op.inputs[1])
    axes = None if axes is None else sorted(int(a) % 4 for a in np.ravel(axes))
    if len(em.shape(x)) != 3 or axes != [1, 2]:
        raise ValueError(f"only a mean over H and W of a map is supported: axes {axes} of {em.shape(x)}")
    (s_x, z_x), (s_y, z_y) = em.quant[x], em.tensor_quant(op.output)
    multiplier, shift = rescale_multiplier(s_x, s_y)
    return em.add("qmean", op.name, (x,), dict(x_zero=z_x, y_zero=z_y, multiplier=multiplier, shift=shift), {},
                  (em.shape(x)[-1],), op.output)


def _quantize(w, op, x):
    """QUANTIZE: float -> 8-bit (a file with float input) -> quantize, TFLite's rounding; 8-bit ->
    8-bit (uint8 <-> int8 ends, or a new scale) -> rescale; the same quantization: nothing."""
    em = w.em
    out_quant, out_dtype = em.tensor_quant(op.output), em.tensor_dtype(op.output)
    if em.quant[x] is None:
        scale, zero = out_quant
        return em.add("quantize", op.name, (x,), dict(scale=scale, zero_point=zero, dtype=out_dtype.name), {},
                      em.shape(x), op.output)
    if (em.quant[x], em.dtypes[x]) == (out_quant, out_dtype):
        return x
    multiplier, shift = rescale_multiplier(em.quant[x][0], out_quant[0])
    attrs = dict(x_zero=em.quant[x][1], y_zero=out_quant[1], multiplier=multiplier, shift=shift, dtype=out_dtype.name)
    return em.add("rescale", op.name, (x,), attrs, {}, em.shape(x), op.output)


def _dequantize(w, op, x):
    """DEQUANTIZE of 8-bit integers to the float output of a file with float output."""
    if w.em.quant[x] is None or w.em.tensor_dtype(op.output) != np.float32:
        raise ValueError("expected 8-bit integers in and float32 out")
    scale, zero = w.em.quant[x]
    return w.em.add("dequantize", op.name, (x,), dict(scale=scale, zero_point=zero), {}, w.em.shape(x), op.output)


TRANSLATE = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "AVERAGE_POOL_2D": _average_pool, "MEAN": _mean,
             "ADD": _add, "FULLY_CONNECTED": _fully_connected, "RESHAPE": _reshape, "SQUEEZE": _reshape,
             "SOFTMAX": _softmax, "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize}


def build_integer(walk, ops, shape, preprocess, labels_for):
    """The QuantizedImport of a file whose operators compute on 8-bit tensors (is_integer_graph).
    `walk` is tflite.py's _Walk (its options() reads an operator's options); its emitter is
    replaced."""
    reader, path = walk.reader, walk.reader.path
    inp = int(reader.g.Inputs(0))
    em = _IntegerEmitter(reader, shape[1:])
    em.quant["input"], em.dtypes["input"] = em.tensor_quant(inp), em.tensor_dtype(inp)
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
    # guess_arch and the output kind read the float op names ("qdepthwise_conv2d" ->
    # "depthwise_conv2d") of the layers (the ends aside).
    float_ops = [n._replace(op={"qfully_connected": "dense"}.get(n.op, n.op[1:])) for n in nodes
                 if n.op not in REPRESENTATION_OPS]
    config = Config(arch=guess_arch(float_ops), resolution=shape[1], classes=classes,
                    output={"softmax": "probabilities", "dense": "logits"}.get(float_ops[-1].op, "features"),
                    convention="tfslim", preprocess=preprocess, input_layout="NHWC", source_format="tflite")
    graph = Graph(list(nodes), tuple(shape[1:]), config)
    return QuantizedImport(graph, em.params, em.quant, em.dtypes["input"], labels_for(classes), str(path))
