"""ONNX (.onnx) -> graph and tensors (an `Imported`), read with the `onnx` package (no onnxruntime).

The importer walks the ONNX nodes in order, keeping for every tensor either a constant (numpy)
or an activation: an npmobile value plus its ONNX *layout* (io/_layout.py: the letter of each
ONNX axis, "NCHW" for torch exports, "NHWC" between Keras' transposes, "NC11" after a global
pool, "NC" after Flatten). Each op is one function in the table `TRANSLATE`. Transpose, Cast
to float, Identity, Dropout and (de)quantization of activations only relabel a value; everything
else becomes an npmobile node (kernel name, explicit pads, NHWC tensors, HWIO/HWC/IO weights).
How many nodes read each tensor is counted once, from the graph, before the walk: a Mul or Add
by a constant folds into the conv before it only when it is the conv output's one reader.

Supported (ai.onnx): Conv (group 1, or group = channels -> depthwise; dilation 1; square
kernel; explicit, VALID or SAME_UPPER pads), BatchNormalization, Relu, Clip (min/max as
attributes before opset 11, as constant inputs after), Add (two activations: a residual),
Add/Sub/Mul/Div by a per-channel constant right after a conv or dense layer (folded into its
weights: Keras' unfolded batch norm, a Gemm's bias), Pad (constant zeros on H and W),
GlobalAveragePool, AveragePool and ReduceMean over the whole map, Flatten/Reshape/Squeeze/
Unsqueeze of a pooled vector, Gemm, MatMul, Softmax, Transpose, Identity, Dropout, Cast (to
float). Quantized: QuantizeLinear/DequantizeLinear (a QuantizeLinear whose range starts at 0
becomes the ReLU a QDQ quantizer removed), QLinearConv, QLinearMatMul and (com.microsoft)
QLinearAdd, QLinearGlobalAveragePool, and quantize_dynamic's DynamicQuantizeLinear +
MatMulInteger + Mul by the scales: weights are dequantized as
scale * (q - zero_point), per tensor or per channel, int32 biases with scale x_scale * w_scale,
and the network runs as float (activations are not re-quantized).
Nodes whose inputs are all constant (shape arithmetic such as Shape -> Gather -> Concat ->
Reshape, or Keras' computed pads) are folded with onnx's reference evaluator; Shape reports the
batch as 1.

Anything else is refused at import, every unsupported node in one error; a graph that branches
in a way the engine cannot run (Concat of activations, two outputs) is refused naming the node.

Input: npmobile always takes NHWC float batches. config.input_layout records what the file
took ("NCHW" for torch and the model zoo, "NHWC" for Keras). The preprocessing is a convention,
as an ONNX file does not record it: "torch" (ImageNet mean/std) for NCHW inputs, "keras"
(127.5/127.5) for NHWC ones, unless load_onnx(path, convention=...) says otherwise.
"""

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import WeightFileError, needs, reading
from ..graph import LINEAR_OPS, Imported, pad_same
from ..architectures import CONVENTIONS
from . import _layout
from ._common import Emitter, dequantize, from_torch, refuse_unsupported
from ._layout import Act

# Ops whose inputs must all be constants: they are folded at import.
CONST_ONLY = {"Constant", "Shape", "Gather", "Concat", "Slice", "ConstantOfShape", "Range", "Sqrt",
              "Reciprocal", "Neg", "Floor", "Ceil", "Equal", "Where", "Expand", "Size", "Pow"}
_MS = {"QLinearAdd", "QLinearGlobalAveragePool"}  # com.microsoft contrib ops


def _onnx():
    with needs("onnx", "reading .onnx files", "onnx"):
        import onnx
        import onnx.numpy_helper
        import onnx.reference
    return onnx


def load_onnx(path, convention=None, dequantize=False):
    """Read an .onnx file as a float graph (NHWC input; see the module docstring); a quantized
    QOperator file (QLinearConv, ...) as the integer graph ONNX Runtime runs (onnx_int.py), unless
    dequantize=True."""
    onnx = _onnx()
    path = Path(path)
    with reading(path, "ONNX model"):  # protobuf's DecodeError and friends on a truncated or foreign file
        model = onnx.load(str(path))
    if not model.graph.node:
        raise WeightFileError(f"{path}: not an ONNX model: the file parses but holds no graph nodes")
    from . import onnx_int
    if not dequantize and onnx_int.is_integer_graph(model):
        with reading(str(path), "ONNX graph", (ValueError, KeyError, IndexError, TypeError)):
            return onnx_int.build_integer(onnx, model, str(path), convention)
    return from_onnx_model(model, source=str(path), convention=convention)


def from_onnx_model(model_proto, source="<onnx model>", convention=None):
    """An onnx.ModelProto (already in memory) as a float graph."""
    onnx = _onnx()
    with reading(source, "ONNX graph", (ValueError, KeyError, IndexError, TypeError)):  # a malformed proto
        return _import(_Walk(onnx, model_proto, source), convention)


class Op(NamedTuple):
    """One ONNX node as the translators see it."""
    node: object  # the onnx.NodeProto
    name: str
    attrs: dict


def _static_problem(op):
    """Why this node can never run here, judged from the node alone (None if it may)."""
    kind, attrs, domain = op.node.op_type, op.attrs, op.node.domain
    if kind not in SUPPORTED or (domain not in ("", "ai.onnx") and kind not in _MS) or \
            (kind in _MS and domain != "com.microsoft"):
        return "op not supported"
    if kind in ("Conv", "QLinearConv"):
        if any(d != 1 for d in attrs.get("dilations", [1])):
            return f"dilations {attrs['dilations']} (only 1)"
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
            return f"auto_pad {attrs['auto_pad'].decode()}"
    refused = {"BatchNormalization": ("training_mode", 0), "AveragePool": ("ceil_mode", 0), "Gemm": ("transA", 0),
               "Pad": ("mode", b"constant")}
    if kind in refused:
        key, allowed = refused[kind]
        if attrs.get(key, allowed) != allowed:
            return f"{key} {_text(attrs[key])} (only {_text(allowed)})"
    return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _value_readers(graph):
    """ONNX tensor -> how many nodes (and graph outputs) read its values; Shape, which reads
    only the shape, is not counted. Counted once, from the graph, before the walk."""
    readers = {}
    for node in graph.node:
        if node.op_type != "Shape":
            for t in node.input:
                readers[t] = readers.get(t, 0) + 1
    for o in graph.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    return readers


class _Walk:
    """What the walk knows: constants, activations, the emitted graph and, per npmobile value,
    the ONNX tensor whose readers are all the readers of that value (None when it is shared)."""

    def __init__(self, onnx, model, source):
        self.onnx, self.source, self.graph = onnx, source, model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts = {init.name: _initializer(onnx, init) for init in self.graph.initializer}
        self.acts, self.origin = {}, {}
        # quantize_dynamic's run-time scales: tensor -> its constant factor (the activation's own
        # scale, known only at run time, cancels: see _dynamic_quantize_linear)
        self.runtime = {}
        self.readers = _value_readers(self.graph)
        self.em = None

    def fail(self, msg):
        raise WeightFileError(f"{self.source}: {msg}")

    def const(self, op, i, required=True):
        name = op.node.input[i] if i < len(op.node.input) else ""
        if not name:
            if required:
                raise ValueError(f"input {i} is missing")
            return None
        if name not in self.consts:
            raise ValueError(f"input {i} ({name!r}) must be a constant (an initializer or Constant)")
        return self.consts[name]

    def act(self, op, i):
        t = op.node.input[i]
        if t not in self.acts:
            raise ValueError(f"input {i} ({t!r}) must be an activation, found a constant")
        return self.acts[t]

    def shape(self, x):
        """npmobile's per-sample shape of an activation."""
        return self.em.shape(x.value)

    def onnx_shape(self, x):
        return _layout.onnx_shape(x, self.shape(x))

    def set(self, tensor, act):
        """Record that `tensor` holds `act`. A node that passes an existing value on (a relabel, a
        fold into it) takes over the value's readers only when it was their one reader;
        otherwise the value is shared (origin None) and nothing may fold into it."""
        if act.value in self.origin:
            before = self.origin[act.value]
            self.origin[act.value] = tensor if before is not None and self.readers.get(before) == 1 else None
        else:
            self.origin[act.value] = tensor
        self.acts[tensor] = act

    def only_reader(self, x):
        """Is the node now reading x its value's one reader?"""
        return self.readers.get(self.origin.get(x.value)) == 1


def _import(w, convention):
    inputs = [i for i in w.graph.input if i.name not in w.consts]
    if len(inputs) != 1:
        w.fail(f"expected one graph input, found {len(inputs)}: {[i.name for i in inputs]}")
    layout, res = _input(w, inputs[0])
    ops = [Op(n, n.name or f"{n.op_type}_{i}", _attrs(w.onnx, n)) for i, n in enumerate(w.graph.node)]
    problems = [(op.node.name or f"#{i}", op.node.op_type, r) for i, op in enumerate(ops) if (r := _static_problem(op))]
    if problems:
        refuse_unsupported(w.source, "ONNX", problems)
    for op in ops:
        _step(w, op)
    outs = [o.name for o in w.graph.output]
    if len(outs) != 1 or outs[0] not in w.acts:
        w.fail(f"expected one output computed from the input, found {outs}")
    convention = convention or ("torch" if layout == "NCHW" else "keras")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, found {convention!r}")
    try:
        graph = w.em.graph(w.acts[outs[0]].value, resolution=res, convention=convention, input_layout=layout,
                           source_format="onnx", preprocess=CONVENTIONS[convention]["preprocess"])
    except ValueError as e:
        w.fail(str(e))
    return Imported(graph, w.em.params, None, w.source)


def _attrs(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _input(w, inp):
    """The graph input: its layout and resolution; starts the emitter."""
    tt = inp.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if tt.elem_type != w.onnx.TensorProto.FLOAT:
        w.fail(f"input {inp.name!r}: expected float32, found ONNX element type "
               f"{w.onnx.TensorProto.DataType.Name(tt.elem_type)}")
    if len(dims) == 4 and dims[1] == 3 and dims[2] and dims[2] == dims[3]:
        layout, res = "NCHW", dims[2]
    elif len(dims) == 4 and dims[3] == 3 and dims[1] and dims[1] == dims[2]:
        layout, res = "NHWC", dims[1]
    else:
        w.fail(f"input {inp.name!r}: expected a square RGB image batch (n, 3, r, r) or (n, r, r, 3) "
               f"with fixed r, found {dims}")
    w.em = Emitter((res, res, 3))
    w.set(inp.name, Act("input", layout))
    return layout, res


def _step(w, op, translate=None):
    """One ONNX node: folded when its inputs are constants, else translated (by `translate`,
    default TRANSLATE: the float translators)."""
    node = op.node
    known = [t for t in node.input if t]
    for t in known:
        if t not in w.consts and t not in w.acts and t not in w.runtime:
            w.fail(f"node {op.name!r} ({node.op_type}) reads {t!r}, which no earlier node computes")
    try:
        if node.op_type == "Shape" or all(t in w.consts for t in known):
            _fold(w, op)
        elif node.op_type in CONST_ONLY:
            raise ValueError("combines activations in a way npmobile cannot run "
                             "(a branch or a concatenation; MobileNets are chains with residual adds)")
        else:
            result = (translate or TRANSLATE)[node.op_type](w, op, w.acts.get(node.input[0]))
            if result is not None:  # (None: a run-time scale, recorded in w.runtime)
                w.set(node.output[0], result)
    except WeightFileError:
        raise
    except Exception as e:
        w.fail(f"node {op.name!r} ({node.op_type}): {e}")


def _initializer(onnx, init):
    try:
        return onnx.numpy_helper.to_array(init)
    except Exception as e:  # noqa: BLE001 -- protobuf and numpy fail many ways on a damaged tensor
        raise WeightFileError(f"initializer {init.name!r}: not a readable tensor: {type(e).__name__}: {e}") from None


# Folding a constant node computes its output at import: a 1.5 KB file with a ConstantOfShape or a
# Range could ask for gigabytes. Shape arithmetic and per-channel constants need a few thousand.
FOLD_BUDGET = 1 << 20  # elements of one folded output


def _fold_size(op, inputs):
    """An upper bound on the elements a folded node outputs, from its inputs alone: ops that make
    a shape from values (ConstantOfShape, Range, Expand) are bounded by those values, the rest
    by their inputs (Gather by the product of two)."""
    sizes = [int(np.size(a)) for a in inputs if a is not None]
    try:
        if op == "ConstantOfShape":
            return math.prod(max(int(d), 0) for d in np.ravel(inputs[0]))
        if op == "Range":
            start, limit, delta = (float(np.ravel(a)[0]) for a in inputs[:3])
            return 0 if delta == 0 else max(math.ceil((limit - start) / delta), 0)
        if op == "Expand":
            target = [max(int(d), 1) for d in np.ravel(inputs[1])]
            return max(math.prod(target), sizes[0]) * max(sizes[0], 1)
    except (TypeError, ValueError, OverflowError, IndexError):
        return math.inf  # NaN or inf bounds, a missing input: not something to compute
    return math.prod(sizes) if op == "Gather" else sum(sizes)


def _fold(w, op):
    """Compute a node whose inputs are constants (Shape of an activation: its shape at batch 1)."""
    node, helper = op.node, w.onnx.helper
    if node.op_type == "Shape" and node.input[0] in w.acts:
        s = np.array(w.onnx_shape(w.acts[node.input[0]]), dtype=np.int64)
        w.consts[node.output[0]] = s[op.attrs.get("start", 0):op.attrs.get("end", len(s))]
        return
    if node.op_type == "DequantizeLinear":  # (onnx's evaluator lacks some opsets of it)
        q, scale, zp = w.consts[node.input[0]], w.const(op, 1), w.const(op, 2, False)
        axis = op.attrs.get("axis", 1) % max(np.ndim(q), 1) if np.size(scale) > 1 else 0
        w.consts[node.output[0]] = dequantize(q, scale, 0 if zp is None else zp, axis=axis)
        return
    feeds = {t: w.consts[t] for t in node.input if t}
    size = _fold_size(node.op_type, [feeds.get(t) for t in node.input])
    if size > FOLD_BUDGET:
        raise ValueError(f"folding this constant would make up to {size:,} elements (at most {FOLD_BUDGET:,})")
    # A one-node model, so the evaluator runs the op at the file's opset (Unsqueeze's axes
    # moved from an attribute to an input at 13, and so on).
    graph = helper.make_graph([node], "fold", [helper.make_empty_tensor_value_info(t) for t in feeds],
                              [helper.make_empty_tensor_value_info(t) for t in node.output if t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", w.opset)])
    outs = w.onnx.reference.ReferenceEvaluator(model).run(None, feeds)
    for t, v in zip(node.output, outs):
        if t:
            w.consts[t] = np.asarray(v)


# --- the translators: (walk, op, x = the activation of input 0 or None) -> the output Act -----

def _relabel(w, op, x):
    """Identity, Dropout, Cast to float, (de)quantization, Transpose: the same value."""
    kind, attrs = op.node.op_type, op.attrs
    if kind == "Cast" and attrs.get("to") != w.onnx.TensorProto.FLOAT:
        raise ValueError(f"casts an activation to ONNX type {attrs.get('to')} (only float32)")
    if kind == "Dropout" and len(op.node.output) > 1 and w.readers.get(op.node.output[1]):
        raise ValueError("its mask output is used")
    return _layout.transposed(x, attrs.get("perm")) if kind == "Transpose" else x


def _spatial(w, x, what):
    if len(w.shape(x)) == 3 and x.layout != "NCHW":
        raise ValueError(f"{what} expects an NCHW activation, found layout {x.layout}")


def _conv_pads(w, x, attrs, k, stride):
    auto = attrs.get("auto_pad", b"NOTSET")
    s = w.shape(x)
    if auto == b"SAME_UPPER":
        return pad_same(s[0], k[0], stride) + pad_same(s[1], k[1], stride)
    if auto == b"VALID":
        return (0, 0, 0, 0)
    p = attrs.get("pads", [0, 0, 0, 0])  # (top, left, bottom, right)
    return (p[0], p[2], p[1], p[3])


def _conv_with(w, name, attrs, x, weight, b):
    """A Conv with these (float) weights, OIHW as ONNX stores them."""
    group = attrs.get("group", 1)
    if len(w.shape(x)) == 1:
        if x.layout != "NC11" or group != 1:
            raise ValueError(f"a convolution (group {group}) on a pooled vector of layout {x.layout} (expected NC11, "
                             "group 1)")
        return Act(w.em.linear(name, x.value, from_torch("conv2d", weight), b), "NC11")
    _spatial(w, x, "Conv")
    strides = attrs.get("strides", [1, 1])
    if strides[0] != strides[1]:
        raise ValueError(f"unequal strides {strides}")
    pad = _conv_pads(w, x, attrs, weight.shape[2:], strides[0])
    c_in = w.shape(x)[-1]
    if group == 1:
        y = w.em.linear(name, x.value, from_torch("conv2d", weight), b, stride=strides[0], pad=pad)
    elif group == c_in and weight.shape[1] == 1:
        y = w.em.linear(name, x.value, from_torch("depthwise_conv2d", weight), b, stride=strides[0], pad=pad,
                        depthwise=True)
    else:
        raise ValueError(f"group {group} with {c_in} input channels (only 1 or the channel count)")
    return Act(y, "NCHW")


def _conv(w, op, x):
    return _conv_with(w, op.name, op.attrs, x, w.const(op, 1).astype(np.float32), _f32(w.const(op, 2, False)))


def _qlinear_conv(w, op, x):
    w_scale = w.const(op, 4)
    weight = dequantize(w.const(op, 3), w_scale, w.const(op, 5), axis=0)
    b = w.const(op, 8, False)
    if b is not None:  # int32, scale x_scale * w_scale, zero point 0
        b = dequantize(b, np.asarray(w.const(op, 1), np.float64) * np.asarray(w_scale, np.float64), 0)
    return _fused_relu(w, op, _conv_with(w, op.name + "_linear", op.attrs, x, weight, b), 6, 7)


def _fused_relu(w, op, y, scale_i, zp_i):
    """A quantized output whose range starts at 0 (zero point = the dtype's minimum) is how a
    quantizer fuses Relu/Clip into the op before it: clamp to [0, scale * (qmax - zp)]."""
    zp = w.const(op, zp_i)
    info = np.iinfo(zp.dtype)
    if np.size(zp) != 1 or int(zp) != info.min:
        return y
    hi = float(w.const(op, scale_i)) * (info.max - info.min)
    return Act(w.em.clamp(op.name, y.value, 0.0, hi), y.layout)


def _batchnorm(w, op, x):
    if x.layout[1] != "C":
        raise ValueError(f"channel axis 1 of layout {x.layout} is not the channels")
    if any(w.readers.get(t) for t in op.node.output[1:] if t):
        raise ValueError("running statistics outputs are used (training mode)")
    gamma, beta, mean, var = (w.const(op, i).astype(np.float32) for i in range(1, 5))
    eps = op.attrs.get("epsilon", 1e-5)
    return Act(w.em.batchnorm(op.name, x.value, gamma, beta, mean, var, eps), x.layout)


def _relu(w, op, x):
    return Act(w.em.clamp(op.name, x.value, 0.0, np.inf), x.layout)


def _clip(w, op, x):
    if w.opset < 11:
        lo, hi = op.attrs.get("min", -np.inf), op.attrs.get("max", np.inf)
    else:
        lo, hi = w.const(op, 1, False), w.const(op, 2, False)
        lo = -np.inf if lo is None else float(lo)
        hi = np.inf if hi is None else float(hi)
    return Act(w.em.clamp(op.name, x.value, lo, hi), x.layout)


# --- elementwise ---------------------------------------------------------------------------

def _binary(w, op, name, kind, a_t, b_t, b_const=None):
    """a kind b: a residual Add of two activations, or an activation and a per-channel constant
    (folded into the linear layer before it)."""
    a = w.acts.get(a_t)
    b = w.acts.get(b_t) if b_const is None else None
    if a is not None and b is not None:
        if kind != "Add":
            raise ValueError(f"{kind} of two activations (only Add, a residual)")
        if a.layout != b.layout:
            raise ValueError(f"adds layouts {a.layout} and {b.layout}")
        return Act(w.em.add(name, a.value, b.value), a.layout)
    if a is None:  # constant first
        if kind in ("Sub", "Div"):
            raise ValueError(f"{kind} with the activation as second operand")
        a, k = b, w.consts[a_t]
    else:
        k = b_const if b_const is not None else w.consts[b_t]
    return _affine(w, a, kind, k)


def _affine(w, x, kind, k):
    """x kind k with k constant per channel, folded into the conv/dense layer that made x."""
    vec = _layout.per_channel(x, w.shape(x), k)
    node = next((n for n in w.em.builder.nodes if n.name == x.value), None)
    if node is None or node.op not in LINEAR_OPS or not w.only_reader(x):
        raise ValueError(f"{kind} by a constant only folds into a conv or dense layer whose output it alone reads "
                         f"(here after {x.value!r})")
    if kind in ("Mul", "Div"):
        w.em.affine(x.value, scale=vec if kind == "Mul" else 1 / vec)
    else:
        w.em.affine(x.value, shift=vec if kind == "Add" else -vec)
    return x


def _arithmetic(w, op, x):
    a, b = op.node.input[:2]
    if op.node.op_type == "Mul" and (a in w.runtime or b in w.runtime):  # quantize_dynamic's rescaling
        r, other = (a, b) if a in w.runtime else (b, a)
        if other in w.consts:  # x_scale * w_scale: keep w_scale
            w.runtime[op.node.output[0]] = w.runtime[r] * np.asarray(w.consts[other], np.float64)
            return None
        return _affine(w, w.acts[other], "Mul", w.runtime[r])
    return _binary(w, op, op.name, op.node.op_type, a, b)


def _quantize_linear(w, op, x):
    """As float, quantizing an activation is the identity, except that it saturates: a range
    that starts at 0 (zero point = the type's minimum) is how a QDQ quantizer replaces the
    Relu/Clip it removed, so it becomes clamp(0, scale * (qmax - zero point))."""
    scale, zp = w.const(op, 1), w.const(op, 2, False)
    if zp is None or np.size(zp) != 1 or np.size(scale) != 1 or int(zp) != np.iinfo(zp.dtype).min:
        return x
    info = np.iinfo(zp.dtype)
    return Act(w.em.clamp(op.name, x.value, 0.0, float(scale) * (info.max - info.min)), x.layout)


def _dynamic_quantize_linear(w, op, x):
    """y, y_scale, y_zero_point = quantize(x) with a scale computed at run time. As float: y is x
    itself, and the MatMulInteger that reads y becomes x @ (w - w_zero_point), which is y_scale
    times the integer product; the Mul by y_scale * w_scale after it then scales by w_scale alone
    (the run-time factor cancels)."""
    for t in op.node.output[1:]:
        if t:
            w.runtime[t] = np.float64(1.0)
    return x


def _matmul_integer(w, op, x):
    if len(op.node.input) < 3 or op.node.input[2] not in w.runtime:
        raise ValueError("only the MatMulInteger of quantize_dynamic (after DynamicQuantizeLinear) is supported")
    zp = w.const(op, 3, False)
    weight = w.const(op, 1).astype(np.float64) - (0 if zp is None else np.asarray(zp, np.float64))
    return _dense(w, op.name, x, weight, None)


def _qlinear_add(w, op, x):
    a_t, b_t = op.node.input[0], op.node.input[3]
    if b_t in w.consts:
        k = dequantize(w.consts[b_t], w.const(op, 4), w.const(op, 5))
        return _fused_relu(w, op, _binary(w, op, op.name, "Add", a_t, b_t, b_const=k), 6, 7)
    return _fused_relu(w, op, _binary(w, op, op.name + "_add", "Add", a_t, b_t), 6, 7)


def _pad(w, op, x):
    if len(w.shape(x)) != 3:
        raise ValueError("pads a pooled vector")
    pads = op.attrs.get("pads") if w.opset < 11 else w.const(op, 1)
    value = op.attrs.get("value", 0.0) if w.opset < 11 else w.const(op, 2, False)
    if value is not None and np.any(np.asarray(value) != 0):
        raise ValueError(f"pads with the value {value} (only 0)")
    pad = _layout.spatial_pads(x, pads, w.const(op, 3, False))
    return Act(w.em.zero_pad(op.name, x.value, pad), x.layout) if any(pad) else x


# --- pooling and the head ------------------------------------------------------------------

def _pool(w, name, x, axes_letters, keepdims=True):
    if len(w.shape(x)) != 3 or set(axes_letters) != {"H", "W"}:
        raise ValueError(f"only an average over the whole H x W map is supported (layout {x.layout})")
    return Act(w.em.global_avg_pool(name, x.value), _layout.pooled(x, keepdims))


def _global_average_pool(w, op, x):
    _spatial(w, x, "GlobalAveragePool")
    return _pool(w, op.name, x, "HW")


def _qlinear_global_average_pool(w, op, x):
    want = "NHWC" if op.attrs.get("channels_last", 0) else "NCHW"
    if x.layout != want:
        raise ValueError(f"expects layout {want}, found {x.layout}")
    return _fused_relu(w, op, _pool(w, op.name + "_pool", x, "HW"), 3, 4)


def _average_pool(w, op, x):
    _spatial(w, x, "AveragePool")
    s, attrs = w.shape(x), op.attrs
    if tuple(attrs.get("kernel_shape", ())) != s[:2] or any(attrs.get("pads", [0])) or \
            attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise ValueError(f"only a pool over the whole {s[0]}x{s[1]} map is supported, found kernel "
                         f"{attrs.get('kernel_shape')} pads {attrs.get('pads')} auto_pad {attrs.get('auto_pad')}")
    return _pool(w, op.name, x, "HW")


def _reduce_mean(w, op, x):
    axes = op.attrs.get("axes") if w.opset < 18 else w.const(op, 1, False)
    if axes is None:
        raise ValueError("reduces every axis")
    return _pool(w, op.name, x, [x.layout[int(a) % len(x.layout)] for a in np.ravel(axes)],
                 keepdims=bool(op.attrs.get("keepdims", 1)))


def _reshaped(w, x, new_shape):
    return _layout.reshaped(x, w.shape(x), new_shape)


def _flatten(w, op, x):
    if op.attrs.get("axis", 1) != 1:
        raise ValueError(f"axis {op.attrs.get('axis')} (only 1)")
    return _reshaped(w, x, (1, int(np.prod(w.onnx_shape(x)[1:]))))


def _reshape(w, op, x):
    target = [int(d) for d in w.const(op, 1)]
    old = w.onnx_shape(x)
    if not op.attrs.get("allowzero", 0):
        target = [old[i] if d == 0 else d for i, d in enumerate(target)]
    return _reshaped(w, x, np.empty(old, dtype=np.uint8).reshape(target).shape)


def _squeeze_axes(w, op):
    axes = op.attrs.get("axes") if w.opset < 13 else w.const(op, 1, False)
    return None if axes is None else tuple(int(a) for a in np.ravel(axes))


def _squeeze(w, op, x):
    axes, old = _squeeze_axes(w, op), w.onnx_shape(x)
    if axes is None:  # every 1-axis, but never the batch
        axes = tuple(i for i, d in enumerate(old) if d == 1 and i > 0)
    return _reshaped(w, x, np.empty(old, dtype=np.uint8).squeeze(axis=axes).shape)


def _unsqueeze(w, op, x):
    return _reshaped(w, x, np.expand_dims(np.empty(w.onnx_shape(x), dtype=np.uint8), _squeeze_axes(w, op)).shape)


def _dense(w, name, x, weight, b):
    """A dense layer with weight (in, out)."""
    if x.layout != "NC":
        raise ValueError(f"expects a flattened (n, c) vector, found layout {x.layout}")
    return Act(w.em.linear(name, x.value, _f32(weight)[None, None], _f32(b)), "NC")


def _gemm(w, op, x):
    weight = w.const(op, 1).astype(np.float64)
    weight = (weight.T if op.attrs.get("transB", 0) else weight) * op.attrs.get("alpha", 1.0)
    c = w.const(op, 2, False)
    b = None if c is None else \
        np.broadcast_to(np.asarray(c, np.float64) * op.attrs.get("beta", 1.0), (1, weight.shape[1]))[0]
    return _dense(w, op.name, x, weight, b)


def _matmul(w, op, x):
    return _dense(w, op.name, x, w.const(op, 1).astype(np.float64), None)


def _qlinear_matmul(w, op, x):
    scale = w.const(op, 4)
    weight = dequantize(w.const(op, 3), scale, w.const(op, 5), axis=1 if np.size(scale) > 1 else 0)
    return _fused_relu(w, op, _dense(w, op.name + "_linear", x, weight, None), 6, 7)


def _softmax(w, op, x):
    axis = op.attrs.get("axis", -1 if w.opset >= 13 else 1)
    if not _layout.softmax_over_channels(x, axis, w.opset) or len(w.shape(x)) != 1:
        raise ValueError(f"softmax over axis {axis} of layout {x.layout} (only over the channels of a vector)")
    return Act(w.em.softmax(op.name, x.value), x.layout)


def _f32(a):
    return None if a is None else np.asarray(a, dtype=np.float32)


# ONNX op -> its translator.
TRANSLATE = {
    **dict.fromkeys(("Identity", "Dropout", "Cast", "DequantizeLinear", "Transpose"), _relabel),
    "QuantizeLinear": _quantize_linear, "DynamicQuantizeLinear": _dynamic_quantize_linear,
    "MatMulInteger": _matmul_integer,
    "Conv": _conv, "QLinearConv": _qlinear_conv, "BatchNormalization": _batchnorm, "Relu": _relu, "Clip": _clip,
    **dict.fromkeys(("Add", "Sub", "Mul", "Div"), _arithmetic), "QLinearAdd": _qlinear_add, "Pad": _pad,
    "GlobalAveragePool": _global_average_pool, "QLinearGlobalAveragePool": _qlinear_global_average_pool,
    "AveragePool": _average_pool, "ReduceMean": _reduce_mean, "Flatten": _flatten, "Reshape": _reshape,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Gemm": _gemm, "MatMul": _matmul,
    "QLinearMatMul": _qlinear_matmul, "Softmax": _softmax,
}
SUPPORTED = CONST_ONLY | set(TRANSLATE)
