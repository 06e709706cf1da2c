"""TFLite (.tflite) -> Model, read with the `tflite` flatbuffer parser (no TensorFlow).

Supported: CONV_2D, DEPTHWISE_CONV_2D (any depth multiplier), AVERAGE_POOL_2D over the whole map
and MEAN over H and W (-> global_avg_pool), ADD, RESHAPE/SQUEEZE that only drop 1-axes of a
pooled vector, FULLY_CONNECTED on a pooled vector (-> dense: how TF's converter writes a Keras
Dense head), SOFTMAX (beta 1), QUANTIZE/DEQUANTIZE (a change of representation only: the float
network has none), with fused activations NONE, RELU (clamp 0..inf) and RELU6. SAME/VALID padding
becomes explicit (top, bottom, left, right) pads by TensorFlow's rule (graph.pad_same). A 1x1
CONV_2D after the pool (TF-slim's 1001-class logits) becomes a dense node.

Quantized models run as float: uint8/int8 weights become scale * (q - zero_point), per tensor or
per output channel; int32 biases likewise with their own scale (input scale x weight scale).
The quantization of the input (real = scale * (q - zero_point)) becomes the model's
preprocessing (mean = zero_point, std = 1 / scale), so model.preprocess(uint8 images) gives the
float input the quantized network approximates. Activations are not re-quantized, so the result
is the float network the file was trained as, not a bit-exact copy of the uint8 runtime.

Layouts: TFLite is NHWC like npmobile; weights are OHWI (conv, -> HWIO) and 1HWC (depthwise,
-> HWC). Labels appended to the file as a zip (labels.txt) become Model.labels. The output is
the float softmax; config convention "tfslim" (1001 classes, index 0 = background).
"""

import io
import zipfile
from struct import error as struct_error
from pathlib import Path

import numpy as np

from ..graph import pad_same
from ..model import Model
from ..weights import WeightFileError
from ._common import Emitter, dequantize, imported_config, refuse_unsupported

SUPPORTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MEAN", "ADD", "RESHAPE", "SQUEEZE", "SOFTMAX",
             "FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"} | {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER"}
# Shape arithmetic: the converter computes a RESHAPE's target from the batch size at run time
# (Keras' Flatten/Reshape with a dynamic batch: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE). The
# RESHAPE's own output shape says where it goes, so these ops are accepted and skipped, as long
# as they read only shapes and constants and feed only each other or a RESHAPE's shape input.
SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER"}
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}  # ActivationFunctionType: NONE, RELU, RELU6
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


def _import_tflite():
    try:
        import tflite
    except ImportError:
        raise ImportError("reading .tflite files needs the `tflite` package: pip install 'npmobile[tflite]'") from None
    return tflite


class _Reader:
    """The parsed flatbuffer: op names, tensor metadata and tensor values as float32."""

    def __init__(self, tflite, buf, path):
        self.tfl, self.buf, self.path = tflite, buf, path
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise WeightFileError(f"{path}: expected one subgraph, found {self.model.SubgraphsLength()}")
        self.g = self.model.Subgraphs(0)
        self.op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(self, op):
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == self.tfl.BuiltinOperator.CUSTOM:
            return f"CUSTOM:{(code.CustomCode() or b'?').decode(errors='replace')}"
        return self.op_names.get(builtin, f"builtin code {builtin}")

    def tensor(self, i):
        return self.g.Tensors(int(i))

    def name(self, i):
        return self.tensor(i).Name().decode(errors="replace")

    def shape(self, i):
        return tuple(int(d) for d in self.tensor(i).ShapeAsNumpy()) if self.tensor(i).ShapeLength() else ()

    def quant(self, i):
        """(scale, zero_point, axis) or None for a float tensor."""
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return q.ScaleAsNumpy(), q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1), q.QuantizedDimension()

    def buffer_bytes(self, index):
        """The bytes of buffer `index` (b"" when empty)."""
        buffer = self.model.Buffers(index)
        if buffer.Offset() > 1:  # large models keep data after the flatbuffer
            return self.buf[buffer.Offset():buffer.Offset() + buffer.Size()]
        return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""

    def raw(self, i):
        """The stored values of a constant tensor in its own dtype, or None for an activation."""
        t = self.tensor(i)
        data = self.buffer_bytes(t.Buffer())
        if not data:
            return None
        if t.Type() not in _DTYPES:
            raise WeightFileError(f"{self.path}: tensor {self.name(i)!r} has unsupported type code {t.Type()}")
        a = np.frombuffer(data, dtype=_DTYPES[t.Type()])
        if a.size != int(np.prod(self.shape(i))):
            raise WeightFileError(f"{self.path}: tensor {self.name(i)!r}: expected {int(np.prod(self.shape(i)))} "
                                  f"values for shape {self.shape(i)}, found {a.size}")
        return a.reshape(self.shape(i))

    def value(self, i):
        """A constant tensor as float32 (dequantized when it is quantized)."""
        a = self.raw(i)
        if a is None:
            raise WeightFileError(f"{self.path}: expected constant weights in tensor {self.name(i)!r}, found none")
        q = self.quant(i)
        if q is None or a.dtype.kind == "f":
            return a.astype(np.float32)
        return dequantize(a, q[0], q[1], axis=q[2])


def _options(reader, op, cls):
    table = op.BuiltinOptions()
    if table is None:
        return None
    o = cls()
    o.Init(table.Bytes, table.Pos)
    return o


def _pads(size_hw, k_hw, stride, padding):
    if padding == 1:  # VALID
        return (0, 0, 0, 0)
    return pad_same(size_hw[0], k_hw[0], stride) + pad_same(size_hw[1], k_hw[1], stride)


def _node_name(reader, i):
    # TFLite fuses names with ';' ("MobilenetV2/Conv/Relu6;MobilenetV2/Conv/add_fold;..."): keep the first.
    return reader.name(i).split(";")[0] or f"tensor_{i}"


def _translate(reader, em, values, op, kind):
    """Append the npmobile nodes for one operator; returns the value name of its output."""
    tfl = reader.tfl
    ins = [int(j) for j in op.InputsAsNumpy()]
    out = int(op.OutputsAsNumpy()[0])
    name = _node_name(reader, out)
    x = values[ins[0]]
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tfl.Conv2DOptions if kind == "CONV_2D" else tfl.DepthwiseConv2DOptions
        o = _options(reader, op, cls)
        if o.StrideH() != o.StrideW():
            raise ValueError(f"unequal strides {o.StrideH()}x{o.StrideW()}")
        if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
            raise ValueError("dilated convolutions are not supported")
        w = reader.value(ins[1])
        b = reader.value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        if kind == "CONV_2D":
            w = w.transpose(1, 2, 3, 0)  # OHWI -> HWIO
        else:
            w = w[0]  # (1, k, k, c * m) -> HWC
            if w.shape[-1] != em.shape(x)[-1] * o.DepthMultiplier():
                raise ValueError(f"depthwise weights {w.shape} do not fit {em.shape(x)[-1]} channels x "
                                 f"depth multiplier {o.DepthMultiplier()}")
        pad = _pads(em.shape(x), w.shape[:2], o.StrideH(), o.Padding()) if len(em.shape(x)) == 3 else (0, 0, 0, 0)
        act = _ACTIVATIONS[o.FusedActivationFunction()]
        y = em.linear(name if act is None else name + "_linear", x, w, b, stride=o.StrideH(), pad=pad,
                      depthwise=kind == "DEPTHWISE_CONV_2D")
        return em.activation(name, y, act)
    if kind == "AVERAGE_POOL_2D":
        o = _options(reader, op, tfl.Pool2DOptions)
        s = em.shape(x)
        if len(s) != 3 or (o.FilterHeight(), o.FilterWidth()) != s[:2] or reader.shape(out)[1:3] != (1, 1):
            raise ValueError(f"only a pool over the whole map is supported: a {o.FilterHeight()}x{o.FilterWidth()} "
                             f"window on a {s[0]}x{s[1]} map")
        act = _ACTIVATIONS[o.FusedActivationFunction()]
        return em.activation(name, em.global_avg_pool(name if act is None else name + "_pool", x), act)
    if kind == "ADD":
        o = _options(reader, op, tfl.AddOptions)
        act = _ACTIVATIONS[o.FusedActivationFunction()] if o else None
        return em.activation(name, em.add(name if act is None else name + "_add", x, values[ins[1]]), act)
    if kind == "MEAN":
        axes = sorted(int(a) % 4 for a in np.ravel(reader.value(ins[1])))
        if len(em.shape(x)) != 3 or axes != [1, 2]:
            raise ValueError(f"only a mean over H and W of a map is supported: axes {axes} of {em.shape(x)}")
        return em.global_avg_pool(name, x)
    if kind == "FULLY_CONNECTED":
        o = _options(reader, op, tfl.FullyConnectedOptions)
        if o is not None and o.WeightsFormat() != 0:
            raise ValueError(f"weights format {o.WeightsFormat()} (only DEFAULT)")
        w = reader.value(ins[1])  # (out, in)
        b = reader.value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        if len(em.shape(x)) != 1 or w.ndim != 2:
            raise ValueError(f"only a fully-connected layer on a pooled vector is supported: weights {w.shape} "
                             f"on a value of shape {em.shape(x)}")
        act = _ACTIVATIONS[o.FusedActivationFunction()] if o else None
        y = em.linear(name if act is None else name + "_linear", x, w.T[None, None], b)
        return em.activation(name, y, act)
    if kind in ("QUANTIZE", "DEQUANTIZE"):  # the float network computes the real values themselves
        return x
    if kind in ("RESHAPE", "SQUEEZE"):
        kept = [d for d in reader.shape(out)[1:] if d != 1]
        if em.shape(x) != tuple(reader.shape(out)[1:]) and not (len(em.shape(x)) == 1 and kept == list(em.shape(x))):
            raise ValueError(f"only reshapes that drop 1-axes of a pooled vector are supported: "
                             f"{em.shape(x)} -> {reader.shape(out)[1:]}")
        return x
    if kind == "SOFTMAX":
        o = _options(reader, op, tfl.SoftmaxOptions)
        if o is not None and o.Beta() != 1.0:
            raise ValueError(f"softmax with beta {o.Beta()} (only 1 is supported)")
        return em.softmax(name, x)
    raise AssertionError(kind)


def _check_supported(reader):
    """Every operator the engine lacks, and every fused activation it lacks, in one error."""
    tfl, problems = reader.tfl, []
    for i in range(reader.g.OperatorsLength()):
        op = reader.g.Operators(i)
        kind = reader.op_name(op)
        name = _node_name(reader, op.OutputsAsNumpy()[0]) if op.OutputsLength() else f"operator {i}"
        if kind not in SUPPORTED:
            problems.append((name, kind, "op not supported"))
            continue
        cls = {"CONV_2D": tfl.Conv2DOptions, "DEPTHWISE_CONV_2D": tfl.DepthwiseConv2DOptions,
               "AVERAGE_POOL_2D": tfl.Pool2DOptions, "ADD": tfl.AddOptions,
               "FULLY_CONNECTED": tfl.FullyConnectedOptions}.get(kind)
        o = _options(reader, op, cls) if cls else None
        if o is not None and o.FusedActivationFunction() not in _ACTIVATIONS:
            problems.append((name, kind, f"fused activation code {o.FusedActivationFunction()} not supported"))
    if problems:
        refuse_unsupported(reader.path, "TFLite", problems)


def _labels(reader, classes):
    """The class names the file carries, or None: the file that the TFLite Metadata names as the
    output's TENSOR_AXIS_LABELS (packed in the zip appended to the model, as tflite-support's
    writers do), else the first .txt in an appended zip (TF-slim's hosted models)."""
    try:
        with zipfile.ZipFile(io.BytesIO(reader.buf)) as z:
            named = _metadata_label_file(reader)
            txt = [named] if named in z.namelist() else [n for n in z.namelist() if n.endswith(".txt")]
            if not txt:
                return None
            labels = z.read(txt[0]).decode("utf-8").splitlines()
    except zipfile.BadZipFile:
        return None
    labels = [s for s in labels if s.strip()]
    if len(labels) != classes:
        raise WeightFileError(f"{reader.path}: the embedded {txt[0]} has {len(labels)} labels, "
                              f"the model {classes} outputs")
    return labels


def _metadata_label_file(reader):
    """The name of the output's label file in the TFLite Metadata flatbuffer ("TFLITE_METADATA",
    tflite-support's metadata_schema.fbs), or None. Read field by field with `flatbuffers`
    (the tflite package does not include that schema): ModelMetadata.subgraph_metadata[0]
    .output_tensor_metadata[0].associated_files[i] with type TENSOR_AXIS_LABELS (2)."""
    from flatbuffers import number_types, table
    from flatbuffers.encode import Get
    from flatbuffers.packer import uoffset

    model = reader.model
    entry = next((model.Metadata(i) for i in range(model.MetadataLength())
                  if model.Metadata(i).Name() == b"TFLITE_METADATA"), None)
    if entry is None:
        return None
    data = reader.buffer_bytes(entry.Buffer())

    def field(t, slot):
        o = t.Offset(4 + 2 * slot)
        return o + t.Pos if o else None

    def tables(t, slot):  # the tables of a vector field
        o = t.Offset(4 + 2 * slot)
        if not o:
            return []
        start = t.Vector(o)
        return [table.Table(data, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]

    try:
        root = table.Table(data, Get(uoffset, data, 0))
        for sub in tables(root, 3)[:1]:
            for out in tables(sub, 3)[:1]:
                for f in tables(out, 6):
                    kind = field(f, 2)
                    if kind is not None and f.Get(number_types.Int8Flags, kind) == 2 and field(f, 0):
                        return f.String(field(f, 0)).decode("utf-8")
    except (IndexError, UnicodeDecodeError, struct_error):
        raise WeightFileError(f"{reader.path}: the TFLite Metadata flatbuffer is corrupted") from None
    return None


def load_tflite(path):
    """Read a .tflite file as a float Model (NHWC input; see the module docstring)."""
    tfl = _import_tflite()
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise WeightFileError(f"{path}: not a TFLite flatbuffer: expected the identifier b'TFL3' at byte 4, "
                              f"found {buf[4:8]!r}")
    try:
        return _build(tfl, buf, path)
    except WeightFileError:
        raise
    except ValueError as e:
        raise WeightFileError(f"{path}: {e}") from None
    except Exception as e:  # a truncated or corrupted flatbuffer fails anywhere inside the parser
        raise WeightFileError(f"{path}: cannot parse the TFLite flatbuffer (truncated or corrupted?): "
                              f"{type(e).__name__}: {e}") from None


def _check_shape_op(reader, op, kind, values, shapes):
    """A shape-arithmetic op may read an activation only through SHAPE (its shape, not its
    values), otherwise shapes and constants; its output may feed only shape ops and RESHAPE's
    shape input. Anything else is a branch the engine cannot run."""
    name = _node_name(reader, op.OutputsAsNumpy()[0])
    for j in (int(t) for t in op.InputsAsNumpy() if t >= 0):
        ok = j in shapes or reader.raw(j) is not None or (kind == "SHAPE" and j in values)
        if not ok:
            raise WeightFileError(f"{reader.path}: node {name!r} ({kind}) combines activations (only shape "
                                  "arithmetic is supported: a branch or a concatenation of activations is not)")
    out = int(op.OutputsAsNumpy()[0])
    g = reader.g
    for i in range(g.OperatorsLength()):
        user = g.Operators(i)
        ins = [int(t) for t in user.InputsAsNumpy()]
        if out in ins and reader.op_name(user) not in SHAPE_OPS and not (reader.op_name(user) == "RESHAPE" and ins.index(out) == 1):
            raise WeightFileError(f"{reader.path}: node {name!r} ({kind}) feeds {reader.op_name(user)}: only shape "
                                  "arithmetic for a RESHAPE is supported")


def _build(tfl, buf, path):
    reader = _Reader(tfl, buf, path)
    g = reader.g
    _check_supported(reader)
    if g.InputsLength() != 1 or g.OutputsLength() != 1:
        raise WeightFileError(f"{path}: expected one input and one output, found {g.InputsLength()} and {g.OutputsLength()}")
    inp = int(g.Inputs(0))
    shape = reader.shape(inp)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise WeightFileError(f"{path}: expected a square NHWC RGB input (1, r, r, 3), found {shape}")
    em = Emitter(shape[1:])
    values = {inp: "input"}
    shapes = set()  # tensors that hold shapes (SHAPE_OPS outputs)
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        kind = reader.op_name(op)
        out = int(op.OutputsAsNumpy()[0])
        if kind in SHAPE_OPS:
            _check_shape_op(reader, op, kind, values, shapes)
            shapes.add(out)
            continue
        for j in op.InputsAsNumpy()[:1]:
            if int(j) not in values:
                raise WeightFileError(f"{path}: node {_node_name(reader, out)!r} ({kind}) reads tensor "
                                      f"{reader.name(j)!r}, which no earlier node computes")
        if kind == "ADD" and int(op.Inputs(1)) not in values:
            raise WeightFileError(f"{path}: node {_node_name(reader, out)!r} (ADD) adds a constant: not supported")
        try:
            values[out] = _translate(reader, em, values, op, kind)
        except ValueError as e:
            raise WeightFileError(f"{path}: node {_node_name(reader, out)!r} ({kind}): {e}") from None
    output = values.get(int(g.Outputs(0)))
    if output is None:
        raise WeightFileError(f"{path}: the output tensor {reader.name(g.Outputs(0))!r} is not computed")
    q = reader.quant(inp)
    if q is not None and reader.tensor(inp).Type() in (3, 9):  # uint8 / int8 input
        mean, std = [float(q[1][0])] * 3, [1.0 / float(q[0][0])] * 3
        if reader.tensor(inp).Type() == 9:  # int8 stores pixel - 128
            mean = [m + 128.0 for m in mean]
    else:
        mean, std = [127.5] * 3, [127.5] * 3
    classes = em.shape(output)[-1]
    last_op = em.b.nodes[-1].op if em.b.nodes else None
    config = imported_config(arch=None, resolution=shape[1], classes=classes, convention="tfslim", mean=mean,
                             std=std, crop=0.875, input_layout="NHWC", source_format="tflite",
                             softmax=last_op == "softmax")
    try:
        graph = em.graph(output, config)
    except ValueError as e:
        raise WeightFileError(f"{path}: {e}") from None
    return Model(graph, em.params, _labels(reader, classes), source=str(path))
