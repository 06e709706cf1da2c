"""ONNX (.onnx) -> Model, read with the `onnx` package (no onnxruntime).

The importer walks the ONNX nodes in order, keeping for every tensor either a constant (numpy)
or an activation: an npmobile value plus its ONNX *layout*, the letter of each ONNX axis
("NCHW" for torch exports, "NHWC" between Keras' transposes, "NC11" after a global pool, "NC"
after Flatten). Transpose, Cast to float, Identity, Dropout and (de)quantization of activations
only relabel a value; everything else becomes an npmobile node (kernel name, explicit pads,
NHWC tensors, HWIO/HWC/IO weights).

Supported (ai.onnx): Conv (group 1, or group = channels -> depthwise; dilation 1; square
kernel; explicit, VALID or SAME_UPPER pads), BatchNormalization, Relu, Clip (min/max as
attributes before opset 11, as constant inputs after), Add (two activations: a residual),
Add/Sub/Mul/Div by a per-channel constant right after a conv or dense layer (folded into its
weights: Keras' unfolded batch norm, a Gemm's bias), Pad (constant zeros on H and W),
GlobalAveragePool, AveragePool and ReduceMean over the whole map, Flatten/Reshape/Squeeze/
Unsqueeze of a pooled vector, Gemm, MatMul, Softmax, Transpose, Identity, Dropout, Cast (to
float). Quantized: QuantizeLinear/DequantizeLinear, QLinearConv, QLinearMatMul and
(com.microsoft) QLinearAdd, QLinearGlobalAveragePool, and quantize_dynamic's
DynamicQuantizeLinear + MatMulInteger + Mul by the scales: weights are dequantized as
scale * (q - zero_point), per tensor or per channel, int32 biases with scale x_scale * w_scale,
and the network runs as float (activations are not re-quantized).
Nodes whose inputs are all constant (shape arithmetic such as Shape -> Gather -> Concat ->
Reshape, or Keras' computed pads) are folded with onnx's reference evaluator; Shape reports the
batch as 1.

Anything else is refused at import, every unsupported node in one error; a graph that branches
in a way the engine cannot run (Concat of activations, two outputs) is refused naming the node.

Input: npmobile always takes NHWC float batches. config["input_layout"] records what the file
took ("NCHW" for torch and the model zoo, "NHWC" for Keras). The preprocessing is a convention,
as an ONNX file does not record it: "torch" (ImageNet mean/std) for NCHW inputs, "keras"
(127.5/127.5) for NHWC ones, unless load_onnx(path, convention=...) says otherwise.
"""

from pathlib import Path

import numpy as np

from ..model import Model
from ..models import CONVENTIONS
from ..weights import WeightFileError
from ._common import LINEAR, Emitter, dequantize, imported_config, refuse_unsupported

# Ops whose inputs must all be constants: they are folded at import.
CONST_ONLY = {"Constant", "Shape", "Gather", "Concat", "Slice", "ConstantOfShape", "Range", "Sqrt",
              "Reciprocal", "Neg", "Floor", "Ceil", "Equal", "Where", "Expand", "Size", "Pow"}
ALIAS = {"Identity", "Dropout", "Cast", "DequantizeLinear", "Transpose"}
ACTIVATION_OPS = {"Conv", "QLinearConv", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div",
                  "QLinearAdd", "Pad", "GlobalAveragePool", "QLinearGlobalAveragePool", "AveragePool",
                  "ReduceMean", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Gemm", "MatMul",
                  "QLinearMatMul", "Softmax", "DynamicQuantizeLinear", "MatMulInteger", "QuantizeLinear"}
SUPPORTED = CONST_ONLY | ALIAS | ACTIVATION_OPS
_MS = {"QLinearAdd", "QLinearGlobalAveragePool"}  # com.microsoft contrib ops


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        raise ImportError("reading .onnx files needs the `onnx` package: pip install 'npmobile[onnx]'") from None
    return onnx, ReferenceEvaluator


def load_onnx(path, convention=None):
    """Read an .onnx file as a float Model (NHWC input; see the module docstring)."""
    onnx, _ = _import_onnx()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends on a truncated or foreign file
        raise WeightFileError(f"{path}: not a readable ONNX model (truncated or corrupted?): "
                              f"{type(e).__name__}: {e}") from None
    if not model.graph.node:
        raise WeightFileError(f"{path}: not an ONNX model: the file parses but holds no graph nodes")
    return from_onnx_model(model, source=str(path), convention=convention)


def from_onnx_model(model_proto, source="<onnx model>", convention=None):
    """An onnx.ModelProto (already in memory) as a float Model."""
    _import_onnx()
    try:
        return _Importer(model_proto, source).run(convention)
    except WeightFileError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as e:  # a malformed proto
        raise WeightFileError(f"{source}: cannot import the ONNX graph: {type(e).__name__}: {e}") from None


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_problem(node, attrs):
    """Why this node can never run here, judged from the node alone (None if it may)."""
    op = node.op_type
    if op not in SUPPORTED or (node.domain not in ("", "ai.onnx") and op not in _MS) or \
            (op in _MS and node.domain != "com.microsoft"):
        return "op not supported"
    if op in ("Conv", "QLinearConv"):
        if any(d != 1 for d in attrs.get("dilations", [1])):
            return f"dilations {attrs['dilations']} (only 1)"
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", b"SAME_UPPER"):
            return f"auto_pad {attrs['auto_pad'].decode()}"
    if op == "BatchNormalization" and attrs.get("training_mode", 0):
        return "training_mode 1"
    if op == "Pad" and attrs.get("mode", b"constant") != b"constant":
        return f"mode {attrs['mode'].decode()} (only constant)"
    if op == "AveragePool" and attrs.get("ceil_mode", 0):
        return "ceil_mode 1"
    if op == "Gemm" and attrs.get("transA", 0):
        return "transA 1"
    return None


class _Act:
    """An activation: the npmobile value that holds it and the letter of each ONNX axis."""

    def __init__(self, value, layout):
        self.value, self.layout = value, layout


class _Importer:
    def __init__(self, model, source):
        self.model, self.source = model, source
        self.g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.consts = {}
        self.acts = {}
        # quantize_dynamic's runtime scales: tensor -> its constant factor (the activation's own
        # scale, known only at run time, cancels: see _op_DynamicQuantizeLinear)
        self.runtime = {}
        self.count = {}  # tensor -> how many node inputs (and graph outputs) read it
        self.readers = {}  # npmobile value -> readers not yet accounted for as aliases
        for n in self.g.node:
            for t in n.input:
                self.count[t] = self.count.get(t, 0) + 1
        for o in self.g.output:
            self.count[o.name] = self.count.get(o.name, 0) + 1

    def fail(self, msg):
        raise WeightFileError(f"{self.source}: {msg}")

    # --- inputs and constants ------------------------------------------------------------
    def _input(self):
        from onnx import numpy_helper
        for init in self.g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        inputs = [i for i in self.g.input if i.name not in self.consts]
        if len(inputs) != 1:
            self.fail(f"expected one graph input, found {len(inputs)}: {[i.name for i in inputs]}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.elem_type != 1:
            self.fail(f"input {inp.name!r}: expected float32, found ONNX element type {tt.elem_type}")
        if len(dims) == 4 and dims[1] == 3 and dims[2] and dims[2] == dims[3]:
            layout, res = "NCHW", dims[2]
        elif len(dims) == 4 and dims[3] == 3 and dims[1] and dims[1] == dims[2]:
            layout, res = "NHWC", dims[1]
        else:
            self.fail(f"input {inp.name!r}: expected a square RGB image batch (n, 3, r, r) or (n, r, r, 3) "
                      f"with fixed r, found {dims}")
        self.em = Emitter((res, res, 3))
        self._set(inp.name, _Act("input", layout))
        return layout, res

    def _set(self, tensor, act):
        self.acts[tensor] = act
        self.readers[act.value] = self.readers.get(act.value, 0) + self.count.get(tensor, 0)

    def const(self, node, i, required=True):
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            if required:
                raise ValueError(f"input {i} is missing")
            return None
        if name not in self.consts:
            raise ValueError(f"input {i} ({name!r}) must be a constant (an initializer or Constant)")
        return self.consts[name]

    def shape(self, act):
        """The ONNX shape of an activation with a batch of 1."""
        s = self.em.shape(act.value)
        dims = {"N": 1, "1": 1, "C": s[-1], "H": s[0] if len(s) == 3 else 1, "W": s[1] if len(s) == 3 else 1}
        return tuple(dims[a] for a in act.layout)

    def _fold(self, node, attrs):
        from onnx.reference import ReferenceEvaluator

        if node.op_type == "Shape" and node.input[0] in self.acts:
            s = np.array(self.shape(self.acts[node.input[0]]), dtype=np.int64)
            self.readers[self.acts[node.input[0]].value] -= 1  # reads the shape, not the values
            self.consts[node.output[0]] = s[attrs.get("start", 0):attrs.get("end", len(s))]
            return
        if node.op_type == "DequantizeLinear":  # (onnx's evaluator lacks some opsets of it)
            scale, zp = self.const(node, 1), self.const(node, 2, False)
            axis = attrs.get("axis", 1) if np.size(scale) > 1 else 0
            self.consts[node.output[0]] = dequantize(self.consts[node.input[0]], scale, 0 if zp is None else zp,
                                                     axis=axis % max(np.ndim(self.consts[node.input[0]]), 1))
            return
        from onnx import helper
        feeds = {t: self.consts[t] for t in node.input if t}
        # A one-node model, so the evaluator runs the op at the file's opset (Unsqueeze's axes
        # moved from an attribute to an input at 13, and so on).
        graph = helper.make_graph([node], "fold", [helper.make_empty_tensor_value_info(t) for t in feeds],
                                  [helper.make_empty_tensor_value_info(t) for t in node.output if t])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        outs = ReferenceEvaluator(model).run(None, feeds)
        for t, v in zip(node.output, outs):
            if t:
                self.consts[t] = np.asarray(v)

    # --- the walk ------------------------------------------------------------------------
    def run(self, convention):
        layout, res = self._input()
        problems = []
        for i, n in enumerate(self.g.node):
            reason = _static_problem(n, _attrs(n))
            if reason:
                problems.append((n.name or f"#{i}", n.op_type, reason))
        if problems:
            refuse_unsupported(self.source, "ONNX", problems)
        for i, node in enumerate(self.g.node):
            name = node.name or f"{node.op_type}_{i}"
            attrs = _attrs(node)
            known = [t for t in node.input if t]
            for t in known:
                if t not in self.consts and t not in self.acts and t not in self.runtime:
                    self.fail(f"node {name!r} ({node.op_type}) reads {t!r}, which no earlier node computes")
            try:
                if node.op_type == "Shape" or all(t in self.consts for t in known):
                    self._fold(node, attrs)
                elif node.op_type in CONST_ONLY:
                    raise ValueError("combines activations in a way npmobile cannot run "
                                     "(a branch or a concatenation; MobileNets are chains with residual adds)")
                else:
                    self._translate(node, name, attrs)
            except WeightFileError:
                raise
            except Exception as e:
                self.fail(f"node {name!r} ({node.op_type}): {e}")
        outs = [o.name for o in self.g.output]
        if len(outs) != 1 or outs[0] not in self.acts:
            self.fail(f"expected one output computed from the input, found {outs}")
        out = self.acts[outs[0]].value
        convention = convention or ("torch" if layout == "NCHW" else "keras")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, found {convention!r}")
        conv = CONVENTIONS[convention]
        nodes = self.em.b.nodes
        config = imported_config(arch=None, resolution=res, classes=self.em.shape(out)[-1], convention=convention,
                                 mean=conv["mean"], std=conv["std"], crop=conv["crop"], input_layout=layout,
                                 source_format="onnx", softmax=bool(nodes) and nodes[-1].op == "softmax")
        try:
            graph = self.em.graph(out, config)
        except ValueError as e:
            self.fail(str(e))
        return Model(graph, self.em.params, source=self.source)

    def _act(self, node, i):
        t = node.input[i]
        if t not in self.acts:
            raise ValueError(f"input {i} ({t!r}) must be an activation, found a constant")
        return self.acts[t]

    def _translate(self, node, name, attrs):
        op = node.op_type
        x = self._act(node, 0) if node.input[0] in self.acts else None
        out = node.output[0]
        if op in ALIAS:
            if op == "Cast" and attrs.get("to") != 1:
                raise ValueError(f"casts an activation to ONNX type {attrs.get('to')} (only float32)")
            if op == "Dropout" and len(node.output) > 1 and node.output[1] and self.count.get(node.output[1]):
                raise ValueError("its mask output is used")
            layout = x.layout
            if op == "Transpose":
                perm = attrs.get("perm", list(range(len(layout)))[::-1])
                if perm[0] != 0:
                    raise ValueError(f"perm {perm} moves the batch axis")
                layout = "".join(layout[p] for p in perm)
            self.readers[x.value] -= 1
            self._set(out, _Act(x.value, layout))
            return
        handler = getattr(self, f"_op_{op}")
        result = handler(node, name, attrs, x)
        if result is not None:
            self._set(out, result)

    # --- convolution and friends ---------------------------------------------------------
    def _spatial(self, x, what):
        if len(self.em.shape(x.value)) == 3 and x.layout != "NCHW":
            raise ValueError(f"{what} expects an NCHW activation, found layout {x.layout}")

    def _conv(self, name, attrs, x, w, b):
        s = self.em.shape(x.value)
        group = attrs.get("group", 1)
        k = w.shape[2:]
        if len(s) == 1:
            if x.layout != "NC11":
                raise ValueError(f"a convolution on a pooled vector of layout {x.layout} (expected NC11)")
            if group != 1:
                raise ValueError(f"group {group} on a pooled vector")
            y = self.em.linear(name, x.value, w.transpose(2, 3, 1, 0), b)
            return _Act(y, "NC11")
        self._spatial(x, "Conv")
        strides = attrs.get("strides", [1, 1])
        if strides[0] != strides[1]:
            raise ValueError(f"unequal strides {strides}")
        auto = attrs.get("auto_pad", b"NOTSET")
        if auto == b"SAME_UPPER":
            from ..graph import pad_same
            pad = pad_same(s[0], k[0], strides[0]) + pad_same(s[1], k[1], strides[0])
        elif auto == b"VALID":
            pad = (0, 0, 0, 0)
        else:
            p = attrs.get("pads", [0, 0, 0, 0])  # (top, left, bottom, right)
            pad = (p[0], p[2], p[1], p[3])
        c_in = s[-1]
        if group == 1:
            y = self.em.linear(name, x.value, w.transpose(2, 3, 1, 0), b, stride=strides[0], pad=pad)
        elif group == c_in and w.shape[1] == 1:
            y = self.em.linear(name, x.value, w[:, 0].transpose(1, 2, 0), b, stride=strides[0], pad=pad, depthwise=True)
        else:
            raise ValueError(f"group {group} with {c_in} input channels (only 1 or the channel count)")
        return _Act(y, "NCHW")

    def _op_Conv(self, node, name, attrs, x):
        return self._conv(name, attrs, x, self.const(node, 1).astype(np.float32), _f32(self.const(node, 2, False)))

    def _op_QLinearConv(self, node, name, attrs, x):
        w_scale = self.const(node, 4)
        w = dequantize(self.const(node, 3), w_scale, self.const(node, 5), axis=0)
        b = self.const(node, 8, False)
        if b is not None:  # int32, scale x_scale * w_scale, zero point 0
            b = dequantize(b, np.asarray(self.const(node, 1), np.float64) * np.asarray(w_scale, np.float64), 0)
        return self._fused_relu(node, name, self._conv(name + "_linear", attrs, x, w, b), 6, 7)

    def _fused_relu(self, node, name, y, scale_i, zp_i):
        """A quantized output whose range starts at 0 (zero point = the dtype's minimum) is how a
        quantizer fuses Relu/Clip into the op before it: clamp to [0, scale * (qmax - zp)]."""
        zp = self.const(node, zp_i)
        info = np.iinfo(zp.dtype)
        if np.size(zp) != 1 or int(zp) != info.min:
            return y
        hi = float(self.const(node, scale_i)) * (info.max - info.min)
        return _Act(self.em.clamp(name, y.value, 0.0, hi), y.layout)

    def _op_BatchNormalization(self, node, name, attrs, x):
        if x.layout[1] != "C":
            raise ValueError(f"channel axis 1 of layout {x.layout} is not the channels")
        if any(self.count.get(t) for t in node.output[1:] if t):
            raise ValueError("running statistics outputs are used (training mode)")
        gamma, beta, mean, var = (self.const(node, i).astype(np.float32) for i in range(1, 5))
        return _Act(self.em.batchnorm(name, x.value, gamma, beta, mean, var, attrs.get("epsilon", 1e-5)), x.layout)

    def _op_Relu(self, node, name, attrs, x):
        return _Act(self.em.clamp(name, x.value, 0.0, np.inf), x.layout)

    def _op_Clip(self, node, name, attrs, x):
        if self.opset < 11:
            lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
        else:
            lo, hi = self.const(node, 1, False), self.const(node, 2, False)
            lo = -np.inf if lo is None else float(lo)
            hi = np.inf if hi is None else float(hi)
        return _Act(self.em.clamp(name, x.value, lo, hi), x.layout)

    # --- elementwise -----------------------------------------------------------------------
    def _binary(self, node, name, op, a_t, b_t, b_const=None):
        a = self.acts.get(a_t)
        b = self.acts.get(b_t) if b_const is None else None
        if a is not None and b is not None:
            if op != "Add":
                raise ValueError(f"{op} of two activations (only Add, a residual)")
            if a.layout != b.layout:
                raise ValueError(f"adds layouts {a.layout} and {b.layout}")
            return _Act(self.em.add(name, a.value, b.value), a.layout)
        if a is None:  # constant first
            if op in ("Sub", "Div"):
                raise ValueError(f"{op} with the activation as second operand")
            a, k = b, self.consts[a_t]
        else:
            k = b_const if b_const is not None else self.consts[b_t]
        return self._affine(a, op, k)

    def _affine(self, x, op, k):
        """x op k with k constant per channel, folded into the conv/dense layer that made x."""
        shape = self.shape(x)
        k = np.asarray(k, dtype=np.float64)
        if np.broadcast_shapes(shape, k.shape) != shape:
            raise ValueError(f"a constant of shape {k.shape} broadcasts beyond the activation's {shape}")
        full = np.broadcast_to(k, shape)
        c = x.layout.index("C")
        vec = np.moveaxis(full, c, -1).reshape(-1, shape[c])
        if not (vec == vec[:1]).all():
            raise ValueError(f"a constant of shape {k.shape} that is not per channel")
        vec = vec[0]
        node = next((n for n in self.em.b.nodes if n.name == x.value), None)
        if node is None or node.op not in LINEAR or self.readers.get(x.value) != 1:
            raise ValueError(f"{op} by a constant only folds into a conv or dense layer whose output it alone reads "
                             f"(here after {x.value!r})")
        if op in ("Mul", "Div"):
            self.em.affine(x.value, scale=vec if op == "Mul" else 1 / vec)
        else:
            self.em.affine(x.value, shift=vec if op == "Add" else -vec)
        self.readers[x.value] -= 1
        return _Act(x.value, x.layout)

    def _op_Add(self, node, name, attrs, x):
        return self._binary(node, name, "Add", node.input[0], node.input[1])

    def _op_Mul(self, node, name, attrs, x):
        a, b = node.input[:2]
        if a in self.runtime or b in self.runtime:  # quantize_dynamic's rescaling
            r, other = (a, b) if a in self.runtime else (b, a)
            if other in self.consts:  # x_scale * w_scale: keep w_scale
                self.runtime[node.output[0]] = self.runtime[r] * np.asarray(self.consts[other], np.float64)
                return None
            return self._affine(self.acts[other], "Mul", self.runtime[r])
        return self._binary(node, name, "Mul", a, b)

    def _op_QuantizeLinear(self, node, name, attrs, x):
        """As float, quantizing an activation is the identity, except that it saturates: a range
        that starts at 0 (zero point = the type's minimum) is how a QDQ quantizer replaces the
        Relu/Clip it removed, so it becomes clamp(0, scale * (qmax - zero point))."""
        zp = self.const(node, 2, False)
        scale = self.const(node, 1)
        if zp is not None and np.size(zp) == 1 and np.size(scale) == 1 and int(zp) == np.iinfo(zp.dtype).min:
            info = np.iinfo(zp.dtype)
            return _Act(self.em.clamp(name, x.value, 0.0, float(scale) * (info.max - info.min)), x.layout)
        self.readers[x.value] -= 1
        self._set(node.output[0], _Act(x.value, x.layout))
        return None

    def _op_DynamicQuantizeLinear(self, node, name, attrs, x):
        """y, y_scale, y_zero_point = quantize(x) with a scale computed at run time. As float: y is x
        itself, and the MatMulInteger that reads y becomes x @ (w - w_zero_point), which is
        y_scale times the integer product; the Mul by y_scale * w_scale after it then scales by
        w_scale alone (the run-time factor cancels)."""
        self.readers[x.value] -= 1
        self._set(node.output[0], _Act(x.value, x.layout))
        for t in node.output[1:]:
            if t:
                self.runtime[t] = np.float64(1.0)
        return None

    def _op_MatMulInteger(self, node, name, attrs, x):
        if len(node.input) < 3 or node.input[2] not in self.runtime:
            raise ValueError("only the MatMulInteger of quantize_dynamic (after DynamicQuantizeLinear) is supported")
        w = self.const(node, 1).astype(np.float64)
        zp = self.const(node, 3, False)
        return self._dense(name, x, w - (0 if zp is None else np.asarray(zp, np.float64)), None)

    _op_Sub = lambda self, node, name, attrs, x: self._binary(node, name, "Sub", node.input[0], node.input[1])
    _op_Div = lambda self, node, name, attrs, x: self._binary(node, name, "Div", node.input[0], node.input[1])

    def _op_QLinearAdd(self, node, name, attrs, x):
        if node.input[3] in self.consts:
            k = dequantize(self.consts[node.input[3]], self.const(node, 4), self.const(node, 5))
            return self._fused_relu(node, name, self._binary(node, name, "Add", node.input[0], node.input[3], b_const=k), 6, 7)
        return self._fused_relu(node, name, self._binary(node, name + "_add", "Add", node.input[0], node.input[3]), 6, 7)

    def _op_Pad(self, node, name, attrs, x):
        if len(self.em.shape(x.value)) != 3:
            raise ValueError("pads a pooled vector")
        pads = attrs.get("pads") if self.opset < 11 else self.const(node, 1)
        value = attrs.get("value", 0.0) if self.opset < 11 else self.const(node, 2, False)
        if value is not None and np.any(np.asarray(value) != 0):
            raise ValueError(f"pads with the value {value} (only 0)")
        axes = self.const(node, 3, False)
        rank = len(x.layout)
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
        pads = [int(p) for p in np.ravel(pads)]
        before = {x.layout[a]: pads[i] for i, a in enumerate(axes)}
        after = {x.layout[a]: pads[len(axes) + i] for i, a in enumerate(axes)}
        if before.get("N", 0) or before.get("C", 0) or after.get("N", 0) or after.get("C", 0) or min(pads) < 0:
            raise ValueError(f"pads {pads} (only non-negative pads of H and W)")
        pad = (before.get("H", 0), after.get("H", 0), before.get("W", 0), after.get("W", 0))
        return _Act(self.em.zero_pad(name, x.value, pad) if any(pad) else x.value, x.layout)

    # --- pooling and the head ------------------------------------------------------------
    def _pool(self, name, x, axes_letters, keepdims=True):
        if len(self.em.shape(x.value)) != 3 or set(axes_letters) != {"H", "W"}:
            raise ValueError(f"only an average over the whole H x W map is supported (layout {x.layout})")
        layout = "".join("1" if a in "HW" else a for a in x.layout) if keepdims else \
            "".join(a for a in x.layout if a not in "HW")
        return _Act(self.em.global_avg_pool(name, x.value), layout)

    def _op_GlobalAveragePool(self, node, name, attrs, x):
        self._spatial(x, "GlobalAveragePool")
        return self._pool(name, x, "HW")

    def _op_QLinearGlobalAveragePool(self, node, name, attrs, x):
        want = "NHWC" if attrs.get("channels_last", 0) else "NCHW"
        if x.layout != want:
            raise ValueError(f"expects layout {want}, found {x.layout}")
        return self._fused_relu(node, name, self._pool(name + "_pool", x, "HW"), 3, 4)

    def _op_AveragePool(self, node, name, attrs, x):
        self._spatial(x, "AveragePool")
        s = self.em.shape(x.value)
        if tuple(attrs.get("kernel_shape", ())) != s[:2] or any(attrs.get("pads", [0])) or \
                attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
            raise ValueError(f"only a pool over the whole {s[0]}x{s[1]} map is supported, found kernel "
                             f"{attrs.get('kernel_shape')} pads {attrs.get('pads')} auto_pad {attrs.get('auto_pad')}")
        return self._pool(name, x, "HW")

    def _op_ReduceMean(self, node, name, attrs, x):
        axes = attrs.get("axes") if self.opset < 18 else self.const(node, 1, False)
        if axes is None:
            raise ValueError("reduces every axis")
        return self._pool(name, x, [x.layout[int(a) % len(x.layout)] for a in np.ravel(axes)],
                          keepdims=bool(attrs.get("keepdims", 1)))

    def _relayout(self, x, new_shape):
        """A reshape that only moves 1-axes around a pooled vector (or changes nothing)."""
        old = self.shape(x)
        if tuple(new_shape) == old:
            return _Act(x.value, x.layout)
        c = self.em.shape(x.value)[-1]
        rest = list(new_shape[1:])
        if len(self.em.shape(x.value)) != 1 or new_shape[0] != 1 or sorted(rest) != sorted([c] + [1] * (len(rest) - 1)):
            raise ValueError(f"reshapes {old} to {tuple(new_shape)}: only dropping or adding 1-axes of a pooled vector "
                             "(keeping the batch first) is supported")
        i = rest.index(c)
        return _Act(x.value, "N" + "".join("C" if j == i else "1" for j in range(len(rest))))

    def _op_Flatten(self, node, name, attrs, x):
        if attrs.get("axis", 1) != 1:
            raise ValueError(f"axis {attrs.get('axis')} (only 1)")
        return self._relayout(x, (1, int(np.prod(self.shape(x)[1:]))))

    def _op_Reshape(self, node, name, attrs, x):
        target = [int(d) for d in self.const(node, 1)]
        old = self.shape(x)
        if not attrs.get("allowzero", 0):
            target = [old[i] if d == 0 else d for i, d in enumerate(target)]
        return self._relayout(x, np.empty(old, dtype=np.uint8).reshape(target).shape)

    def _squeeze_axes(self, node, attrs):
        axes = attrs.get("axes") if self.opset < 13 else self.const(node, 1, False)
        return None if axes is None else tuple(int(a) for a in np.ravel(axes))

    def _op_Squeeze(self, node, name, attrs, x):
        axes = self._squeeze_axes(node, attrs)
        old = self.shape(x)
        if axes is None:  # every 1-axis, but never the batch
            axes = tuple(i for i, d in enumerate(old) if d == 1 and i > 0)
        return self._relayout(x, np.empty(old, dtype=np.uint8).squeeze(axis=axes).shape)

    def _op_Unsqueeze(self, node, name, attrs, x):
        a = np.empty(self.shape(x), dtype=np.uint8)
        return self._relayout(x, np.expand_dims(a, self._squeeze_axes(node, attrs)).shape)

    def _dense(self, name, x, w, b):
        if x.layout != "NC":
            raise ValueError(f"expects a flattened (n, c) vector, found layout {x.layout}")
        return _Act(self.em.linear(name, x.value, _f32(w)[None, None], _f32(b)), "NC")

    def _op_Gemm(self, node, name, attrs, x):
        w = self.const(node, 1).astype(np.float64)
        w = (w.T if attrs.get("transB", 0) else w) * attrs.get("alpha", 1.0)
        c = self.const(node, 2, False)
        b = None if c is None else np.broadcast_to(np.asarray(c, np.float64) * attrs.get("beta", 1.0), (1, w.shape[1]))[0]
        return self._dense(name, x, w, b)

    def _op_MatMul(self, node, name, attrs, x):
        return self._dense(name, x, self.const(node, 1).astype(np.float64), None)

    def _op_QLinearMatMul(self, node, name, attrs, x):
        scale = self.const(node, 4)
        w = dequantize(self.const(node, 3), scale, self.const(node, 5), axis=1 if np.size(scale) > 1 else 0)
        return self._fused_relu(node, name, self._dense(name + "_linear", x, w, None), 6, 7)

    def _op_Softmax(self, node, name, attrs, x):
        rank = len(x.layout)
        axis = attrs.get("axis", -1 if self.opset >= 13 else 1) % rank
        ok = x.layout[axis] == "C" if self.opset >= 13 else \
            "C" in x.layout[axis:] and set(x.layout[1:axis]) <= {"1"}
        if not ok or len(self.em.shape(x.value)) != 1:
            raise ValueError(f"softmax over axis {axis} of layout {x.layout} (only over the channels of a vector)")
        return _Act(self.em.softmax(name, x.value), x.layout)


def _f32(a):
    return None if a is None else np.asarray(a, dtype=np.float32)
