"""A quantized ONNX file (QOperator format) -> QuantizedImport: the integer graph ONNX Runtime runs.

ONNX's quantized operators keep every activation 8-bit between a QuantizeLinear of the float
input and a DequantizeLinear of the output: QLinearConv (int8 or uint8 weights, per-tensor or
per-channel scales, int32 bias), QLinearMatMul, and Microsoft's QLinearAdd and
QLinearGlobalAveragePool. Each becomes one integer kernel (kernels/quantized/qlinear*.py) that
requantizes in float32 as ONNX Runtime does; the per-channel scale S = s_x * s_w / s_y is derived
here, once, as the runtime derives it (qlinear.output_scales). The input is quantized with
QuantizeLinear's rounding (halves to even); QuantizedModel dequantizes the output.

The walk is onnx.py's (constants folded, layouts tracked, one translator per op); the translators
here emit integer nodes. Node names are the float importer's for the same ONNX tensor (a conv is
"<node>_linear", or "<node>" where the float graph adds the clamp a quantizer fused into it), so the
two engines' intermediates line up by name. A file whose every activation op is listed in
`TRANSLATE` loads this way (`is_integer_graph`); any other quantized file (QDQ, dynamic) loads
as float, as before.
"""

import numpy as np

from ..errors import WeightFileError
from ..architectures import CONVENTIONS
from ..config import Config
from ..graph import Graph
from ..kernels.quantized import QKERNELS, output_scales
from ..qmodel import QuantizedImport
from ..validate import MAX_STRIDE
from . import _layout
from . import onnx as onnx_io
from ._common import IntegerEmitter as _IntegerEmitter, guess_arch
from ._layout import Act

_EIGHT_BIT = (np.uint8, np.int8)


def _scalar_quant(w, op, i_scale, i_zero, what):
    """(scale, zero_point) from a node's per-tensor scale and zero point inputs."""
    scale, zero = w.const(op, i_scale), w.const(op, i_zero)
    if np.size(scale) != 1 or np.size(zero) != 1:
        raise ValueError(f"{what}: expected one scale and one zero point, found {np.size(scale)} and {np.size(zero)}")
    if scale.dtype != np.float32 or zero.dtype not in _EIGHT_BIT:
        raise ValueError(f"{what}: expected a float32 scale and a uint8/int8 zero point, found {scale.dtype} and "
                         f"{zero.dtype}")
    scale = float(np.ravel(scale)[0])
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{what} scale: expected a finite scale > 0, found {scale}")
    return scale, int(np.ravel(zero)[0])


def _input_quant(w, op, x, i_scale, i_zero, what="x"):
    """An input's (scale, zero_point) as the node states it; it must be the one its producer wrote."""
    stated = _scalar_quant(w, op, i_scale, i_zero, what)
    if stated != w.em.quant[x.value]:
        raise ValueError(f"{what}: quantized as {stated} here but as {w.em.quant[x.value]} by the node that computes "
                         "it: npmobile keeps one quantization per tensor")
    return stated


def _name(w, op, suffix, i_zero):
    """The float importer's name for this node's output: "<node>" where it adds the clamp a
    quantizer fused (an output zero point at the type's minimum), else "<node><suffix>"."""
    zero = w.const(op, i_zero)
    return op.name if int(np.ravel(zero)[0]) == np.iinfo(zero.dtype).min else op.name + suffix


def _weights(w, op, c_out):
    """QLinearConv/QLinearMatMul weights (inputs 3, 4, 5): the raw integers, per output channel
    their int32 zero points and float32 scales."""
    weight, scale, zero = w.const(op, 3), w.const(op, 4), w.const(op, 5)
    if weight.dtype not in _EIGHT_BIT or zero.dtype != weight.dtype or scale.dtype != np.float32:
        raise ValueError(f"weights: expected uint8/int8 weights with a zero point of their type and float32 scales, "
                         f"found {weight.dtype}, {zero.dtype} and {scale.dtype}")
    if np.size(scale) not in (1, c_out) or np.size(zero) not in (1, c_out):
        raise ValueError(f"weights: expected 1 or {c_out} scales and zero points, found {np.size(scale)} and "
                         f"{np.size(zero)}")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"w_scale: expected finite scales > 0, found [{scale.min()}, {scale.max()}]")
    return weight, np.broadcast_to(np.ravel(zero).astype(np.int32), (c_out,)), np.ravel(scale)


def _emit(w, op, kind, name, x, weight, w_zero, w_scale, b, attrs, shape, layout):
    (x_scale, x_zero), (y_scale, y_zero) = _input_quant(w, op, x, 1, 2), _scalar_quant(w, op, 6, 7, "y")
    params = {"w": weight, "w_zero": w_zero, "scale": output_scales(x_scale, np.broadcast_to(w_scale, w_zero.shape),
                                                                     y_scale)}
    if b is not None:
        params["b"] = b
    value = w.em.add(kind, name, (x.value,), dict(x_zero=x_zero, y_zero=y_zero, **attrs), params, shape,
                     (y_scale, y_zero))
    return Act(value, layout)


def _qlinear_conv(w, op, x):
    """QLinearConv -> qlinear_pointwise_conv2d (1x1, stride 1, unpadded), qlinear_depthwise_conv2d
    (group = channels) or qlinear_conv2d (group 1). Weights OIHW -> IO / HWC / HWIO."""
    onnx_io._spatial(w, x, "QLinearConv")
    if len(w.shape(x)) != 3:
        raise ValueError("a convolution on a pooled vector: not supported on the integer path")
    h, width, c_in = w.shape(x)
    weight = w.const(op, 3)
    if weight.ndim != 4:
        raise ValueError(f"weights: expected 4-d OIHW, found shape {weight.shape}")
    c_out, k = weight.shape[0], weight.shape[2:]
    weight, w_zero, w_scale = _weights(w, op, c_out)
    b = w.const(op, 8, False)
    if b is not None and (b.dtype != np.int32 or b.shape != (c_out,)):
        raise ValueError(f"bias: expected int32 of shape ({c_out},), found {b.dtype} {b.shape}")
    strides, group = list(op.attrs.get("strides", [1, 1])), op.attrs.get("group", 1)
    if len(strides) != 2 or strides[0] != strides[1] or len(k) != 2 or k[0] != k[1]:
        raise ValueError(f"strides {strides} and kernel {tuple(k)}: only equal sides are supported")
    if not 1 <= strides[0] <= MAX_STRIDE:
        raise ValueError(f"strides: expected 1..{MAX_STRIDE}, found {strides}")
    pad = onnx_io._conv_pads(w, x, op.attrs, k, strides[0])
    if len(pad) != 4 or not all(0 <= p < k[0] for p in pad):
        raise ValueError(f"pads: expected 4 sides each 0 .. kernel - 1 = {k[0] - 1}, found {pad}")
    h_out, w_out = ((h + pad[0] + pad[1] - k[0]) // strides[0] + 1, (width + pad[2] + pad[3] - k[1]) // strides[0] + 1)
    name, shape = _name(w, op, "_linear", 7), (h_out, w_out, c_out)
    if group == 1 and weight.shape[1] == c_in and tuple(k) == (1, 1) and strides[0] == 1 and not any(pad):
        return _emit(w, op, "qlinear_pointwise_conv2d", name, x, weight[:, :, 0, 0].T, w_zero, w_scale, b, {},
                     shape, "NCHW")
    window = dict(stride=int(strides[0]), pad=tuple(int(p) for p in pad))
    if group == 1 and weight.shape[1] == c_in:
        return _emit(w, op, "qlinear_conv2d", name, x, weight.transpose(2, 3, 1, 0), w_zero, w_scale, b, window,
                     shape, "NCHW")
    if group == c_in and weight.shape[1] == 1 and c_out % c_in == 0:
        return _emit(w, op, "qlinear_depthwise_conv2d", name, x, weight[:, 0].transpose(1, 2, 0), w_zero, w_scale, b,
                     window, shape, "NCHW")
    raise ValueError(f"group {group} with {c_in} input channels and weights {weight.shape} (only 1 or the channels)")


def _qlinear_matmul(w, op, x):
    """QLinearMatMul of a flattened vector by constant weights (c_in, c_out) -> qlinear_matmul."""
    if x.layout != "NC":
        raise ValueError(f"expects a flattened (n, c) vector, found layout {x.layout}")
    weight = w.const(op, 3)
    if weight.ndim != 2 or weight.shape[0] != w.shape(x)[0]:
        raise ValueError(f"weights: expected shape ({w.shape(x)[0]}, c_out), found {weight.shape}")
    weight, w_zero, w_scale = _weights(w, op, weight.shape[1])
    return _emit(w, op, "qlinear_matmul", _name(w, op, "_linear", 7), x, weight, w_zero, w_scale, None, {},
                 (weight.shape[1],), "NC")


def _qlinear_add(w, op, x):
    """QLinearAdd of two activations (a residual) or of an activation and a constant per channel
    (a quantized bias) -> qlinear_add."""
    a_t, b_t = op.node.input[0], op.node.input[3]
    if a_t not in w.acts:
        raise ValueError("the first operand is a constant: not supported on the integer path")
    a = w.acts[a_t]
    a_scale, a_zero = _input_quant(w, op, a, 1, 2, "a")
    y_scale, y_zero = _scalar_quant(w, op, 6, 7, "y")
    attrs, params, inputs = dict(a_scale=a_scale, a_zero=a_zero), {}, (a.value,)
    if b_t in w.acts:
        b = w.acts[b_t]
        if b.layout != a.layout or w.shape(b) != w.shape(a):
            raise ValueError(f"adds {w.shape(a)} ({a.layout}) and {w.shape(b)} ({b.layout})")
        b_scale, b_zero = _input_quant(w, op, b, 4, 5, "b")
        inputs += (b.value,)
    else:
        k = w.const(op, 3)
        if k.dtype != w.em.dtype or np.size(k) != w.shape(a)[-1] or len(w.shape(a)) != 1:
            raise ValueError(f"adds a constant {k.dtype} {k.shape} to a {w.shape(a)} value: only one {w.em.dtype} "
                             "per channel of a vector is supported")
        b_scale, b_zero = _scalar_quant(w, op, 4, 5, "b")
        params["b"] = np.ravel(k)
    attrs.update(b_scale=b_scale, b_zero=b_zero, y_scale=y_scale, y_zero=y_zero)
    return Act(w.em.add("qlinear_add", _name(w, op, "_add", 7), inputs, attrs, params, w.shape(a), (y_scale, y_zero)),
               a.layout)


def _qlinear_global_average_pool(w, op, x):
    want = "NHWC" if op.attrs.get("channels_last", 0) else "NCHW"
    if x.layout != want or len(w.shape(x)) != 3:
        raise ValueError(f"expects a {want} feature map, found layout {x.layout}")
    x_scale, x_zero = _input_quant(w, op, x, 1, 2)
    y_scale, y_zero = _scalar_quant(w, op, 3, 4, "y")
    attrs = dict(x_scale=x_scale, x_zero=x_zero, y_scale=y_scale, y_zero=y_zero)
    value = w.em.add("qlinear_global_avg_pool", _name(w, op, "_pool", 4), (x.value,), attrs, {}, (w.shape(x)[-1],),
                     (y_scale, y_zero))
    return Act(value, _layout.pooled(x, True))


def _quantize_linear(w, op, x):
    """QuantizeLinear of the graph's float input: the integer graph's input and its quantization."""
    if x.value != "input" or "input" in w.em.quant:
        raise ValueError("quantizes a computed value: only the graph's input is quantized on the integer path")
    scale, zero = _scalar_quant(w, op, 1, 2, "y")
    w.em.quant["input"], w.em.dtype = (scale, zero), w.const(op, 2).dtype
    return x


def _dequantize_linear(w, op, x):
    """DequantizeLinear of an 8-bit value: the same value (the output, or the input of Shape)."""
    if x.value not in w.em.quant or _scalar_quant(w, op, 1, 2, "x") != w.em.quant[x.value]:
        raise ValueError(f"dequantizes {x.value!r} with another scale or zero point than it was quantized with")
    w.dequantized.add(op.node.output[0])
    return x


TRANSLATE = {
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear, "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul, "QLinearAdd": _qlinear_add,
    "QLinearGlobalAveragePool": _qlinear_global_average_pool, "Identity": onnx_io._relabel,
    "Flatten": onnx_io._flatten, "Reshape": onnx_io._reshape, "Squeeze": onnx_io._squeeze,
    "Unsqueeze": onnx_io._unsqueeze,
}


def is_integer_graph(model):
    """True for a QOperator file: it quantizes its input, runs QLinearConv or QLinearMatMul, and
    every other node is one of TRANSLATE's or a constant computation."""
    ops = [n.op_type for n in model.graph.node]
    known = set(TRANSLATE) | onnx_io.CONST_ONLY | {"Shape"}
    return ("QuantizeLinear" in ops and any(o in ops for o in ("QLinearConv", "QLinearMatMul"))
            and all(o in known for o in ops))


def build_integer(onnx, model, source, convention=None):
    """The QuantizedImport of a file is_integer_graph accepted (WeightFileError naming the node
    for anything npmobile cannot run as integers)."""
    w = onnx_io._Walk(onnx, model, source)
    w.dequantized = set()
    inputs = [i for i in w.graph.input if i.name not in w.consts]
    if len(inputs) != 1:
        w.fail(f"expected one graph input, found {len(inputs)}: {[i.name for i in inputs]}")
    layout, res = onnx_io._input(w, inputs[0])
    w.em = _IntegerEmitter((res, res, 3))
    w.em.dtype = None
    ops = [onnx_io.Op(n, n.name or f"{n.op_type}_{i}", onnx_io._attrs(onnx, n)) for i, n in enumerate(w.graph.node)]
    problems = [(op.name, op.node.op_type, r) for op in ops if (r := onnx_io._static_problem(op))]
    if problems:
        onnx_io.refuse_unsupported(source, "ONNX", problems)
    for op in ops:
        onnx_io._step(w, op, TRANSLATE)
    return _finish(w, layout, res, convention or ("torch" if layout == "NCHW" else "keras"))


def _finish(w, layout, res, convention):
    outs = [o.name for o in w.graph.output]
    nodes = w.em.builder.nodes
    if len(outs) != 1 or outs[0] not in w.dequantized or not nodes or w.acts[outs[0]].value != nodes[-1].name:
        w.fail(f"expected one output, the dequantized last value computed, found {outs}")
    read = {i for n in nodes for i in n.inputs}
    dead = [n.name for n in nodes[:-1] if n.name not in read]
    if dead:
        w.fail(f"node(s) {', '.join(dead[:5])} compute values that neither the output nor any later node reads")
    # guess_arch and the output kind read the float op names: "qlinear_depthwise_conv2d" -> "depthwise_conv2d".
    float_ops = [n._replace(op={"qlinear_matmul": "dense"}.get(n.op, n.op.replace("qlinear_", ""))) for n in nodes]
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, found {convention!r}")
    config = Config(arch=guess_arch(float_ops), resolution=res, classes=nodes[-1].shape[-1],
                    output="logits" if any(n.op == "qlinear_matmul" for n in nodes) else "features", convention=convention,
                    preprocess=CONVENTIONS[convention]["preprocess"], input_layout=layout, source_format="onnx")
    graph = Graph(list(nodes), (res, res, 3), config)
    _validate(graph, w.em.params, w.em.dtype, w.source)
    return QuantizedImport(graph, w.em.params, w.em.quant, w.em.dtype, None, w.source, "even")


def _validate(graph, params, dtype, source):
    """Every node's kernel checks its arguments on a batch of one, at load: dtypes, shapes chained
    from the input, zero points in their type's range, scales finite and > 0, strides and pads.
    A problem is a WeightFileError naming the file, the node and the argument."""
    values = {"input": np.zeros((1, *graph.input_shape), dtype=dtype)}
    for node in graph.nodes:
        kernel = QKERNELS[node.op]
        out = np.zeros((1, *node.shape), dtype=dtype)
        try:
            kernel.check(*[values[i] for i in node.inputs], **{p: params[f"{node.name}.{p}"] for p in node.params},
                         **node.attrs, out=out)
        except ValueError as e:
            raise WeightFileError(f"{source}: node {node.name!r} ({node.op}): {e}") from None
        values[node.name] = out
