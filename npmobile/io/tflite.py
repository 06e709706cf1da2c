"""TFLite (.tflite) -> graph and tensors (an `Imported`), read with the `tflite` flatbuffer parser (no TensorFlow).

Supported: CONV_2D, DEPTHWISE_CONV_2D (any depth multiplier), AVERAGE_POOL_2D over the whole map
and MEAN over H and W (-> global_avg_pool), ADD, RESHAPE/SQUEEZE that only drop 1-axes of a
pooled vector, FULLY_CONNECTED on a pooled vector (-> dense: how TF's converter writes a Keras
Dense head), SOFTMAX (beta 1), QUANTIZE/DEQUANTIZE (a change of representation only: the float
network has none), with fused activations NONE, RELU (clamp 0..inf) and RELU6. SAME/VALID padding
becomes explicit (top, bottom, left, right) pads by TensorFlow's rule (graph.pad_same). A 1x1
CONV_2D after the pool (TF-slim's 1001-class logits) becomes a dense node. The shape arithmetic
the converter writes for a RESHAPE with a dynamic batch (SHAPE, STRIDED_SLICE, PACK,
CONCATENATION, GATHER on shapes and constants) is accepted and skipped: the RESHAPE's own output
shape says where it goes. Each op is one function in
the table `TRANSLATE`, as in the ONNX importer; the flatbuffer's enums are read by name
(tflite.BuiltinOperator, Padding, TensorType, ActivationFunctionType).

A quantized file (every activation uint8/int8) is read as a QuantizedImport, which runs the
runtime's integers byte for byte (io/tflite_int.py, npmobile/kernels/quantized/). With
dequantize=True it is read as float instead: uint8/int8 weights become scale * (q - zero_point),
per tensor or per output channel; int32 biases likewise with their own scale (input scale x
weight scale). Either way the quantization of the input (real = scale * (q - zero_point))
becomes the model's preprocessing (mean = zero_point, std = 1 / scale), so
model.preprocess(uint8 images) gives the float input whose quantization is the file's input. The
float path does not re-quantize activations: it is the float network the file was trained as,
not a copy of the uint8 runtime.

Layouts: TFLite is NHWC like npmobile; weights are OHWI (conv, -> HWIO) and 1HWC (depthwise,
-> HWC). Labels become Model.labels: the file the TFLite Metadata names as the output's label
file, else the .txt of a zip appended to the file (TF-slim's hosted models). The output is
the float softmax; config convention "tfslim" (1001 classes, index 0 = background).
"""

import io
import zipfile
from struct import error as struct_error
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import Preprocess
from ..errors import WeightFileError, needs, reading
from ..graph import Imported, pad_same
from ._common import Emitter, dequantize, read_member, refuse_unsupported

MAX_LABELS_BYTES = 4 << 20  # an appended labels.txt: 1001 ImageNet names are 11 kB

def _tflite():
    with needs("tflite", "reading .tflite files", "tflite"):
        import tflite
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
        t = tflite.TensorType
        self.dtypes = {t.FLOAT32: np.float32, t.FLOAT16: np.float16, t.INT32: np.int32, t.UINT8: np.uint8,
                       t.INT64: np.int64, t.INT16: np.int16, t.INT8: np.int8}

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
        if t.Type() not in self.dtypes:
            raise WeightFileError(f"{self.path}: tensor {self.name(i)!r} has unsupported type code {t.Type()}")
        a = np.frombuffer(data, dtype=self.dtypes[t.Type()])
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


class Op(NamedTuple):
    """One TFLite operator as the translators see it."""
    table: object  # the flatbuffer Operator
    name: str  # its first output tensor's name
    kind: str  # the BuiltinOperator's name
    inputs: list  # tensor indices (-1: an optional input left out)
    output: int


class _Walk(NamedTuple):
    """What the walk knows: the file, the emitted graph, the npmobile value of each tensor."""
    reader: _Reader
    em: Emitter
    values: dict  # tensor index -> npmobile value name

    def options(self, op):
        """The operator's options table, of the class its kind uses (None if it has none)."""
        table = op.table.BuiltinOptions()
        if table is None:
            return None
        cls = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
               "AVERAGE_POOL_2D": "Pool2DOptions", "ADD": "AddOptions", "SOFTMAX": "SoftmaxOptions",
               "FULLY_CONNECTED": "FullyConnectedOptions", "MEAN": "ReducerOptions"}.get(op.kind)
        if cls is None:
            return None
        o = getattr(self.reader.tfl, cls)()
        o.Init(table.Bytes, table.Pos)
        return o

    def activation(self, name, y, o):
        """The fused activation of options o applied to value y (o None: none)."""
        act = self.reader.tfl.ActivationFunctionType
        kind = {act.NONE: None, act.RELU: "relu", act.RELU6: "relu6"}[o.FusedActivationFunction() if o else act.NONE]
        return self.em.activation(name, y, kind)


def _fused_name(w, op, suffix):
    """The name of an operator's own node: its name, or name + suffix when a fused activation
    follows it and takes the name."""
    o = w.options(op)
    fused = o is not None and o.FusedActivationFunction() != w.reader.tfl.ActivationFunctionType.NONE
    return op.name + suffix if fused else op.name


def _pads(w, size_hw, k_hw, stride, padding):
    if padding == w.reader.tfl.Padding.VALID:
        return (0, 0, 0, 0)
    return pad_same(size_hw[0], k_hw[0], stride) + pad_same(size_hw[1], k_hw[1], stride)


def _node_name(reader, i):
    # TFLite fuses names with ';' ("MobilenetV2/Conv/Relu6;MobilenetV2/Conv/add_fold;..."): keep the first.
    return reader.name(i).split(";")[0] or f"tensor_{i}"


# --- the translators: (walk, op, x = the value of input 0) -> the output's value ------------

def _conv(w, op, x):
    """CONV_2D (OHWI weights -> HWIO) and DEPTHWISE_CONV_2D ((1, k, k, c * m) -> HWC)."""
    o = w.options(op)
    if o.StrideH() != o.StrideW():
        raise ValueError(f"unequal strides {o.StrideH()}x{o.StrideW()}")
    if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
        raise ValueError("dilated convolutions are not supported")
    ins, shape = op.inputs, w.em.shape(x)
    weight = w.reader.value(ins[1])
    b = w.reader.value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    depthwise = op.kind == "DEPTHWISE_CONV_2D"
    if not depthwise:
        weight = weight.transpose(1, 2, 3, 0)
    else:
        weight = weight[0]
        if weight.shape[-1] != shape[-1] * o.DepthMultiplier():
            raise ValueError(f"depthwise weights {weight.shape} do not fit {shape[-1]} channels x "
                             f"depth multiplier {o.DepthMultiplier()}")
    pad = _pads(w, shape, weight.shape[:2], o.StrideH(), o.Padding()) if len(shape) == 3 else (0, 0, 0, 0)
    y = w.em.linear(_fused_name(w, op, "_linear"), x, weight, b, stride=o.StrideH(), pad=pad, depthwise=depthwise)
    return w.activation(op.name, y, o)


def _average_pool(w, op, x):
    o, s = w.options(op), w.em.shape(x)
    if len(s) != 3 or (o.FilterHeight(), o.FilterWidth()) != s[:2] or w.reader.shape(op.output)[1:3] != (1, 1):
        raise ValueError(f"only a pool over the whole map is supported: a {o.FilterHeight()}x{o.FilterWidth()} "
                         f"window on a {s[0]}x{s[1]} map")
    return w.activation(op.name, w.em.global_avg_pool(_fused_name(w, op, "_pool"), x), o)


def _add(w, op, x):
    other = w.values.get(op.inputs[1])
    if other is None:
        raise ValueError("adds a constant: not supported")
    return w.activation(op.name, w.em.add(_fused_name(w, op, "_add"), x, other), w.options(op))


def _reshape(w, op, x):
    """RESHAPE and SQUEEZE that only drop 1-axes of a pooled vector: the same value."""
    shape, new = w.em.shape(x), w.reader.shape(op.output)[1:]
    kept = [d for d in new if d != 1]
    if shape != tuple(new) and not (len(shape) == 1 and kept == list(shape)):
        raise ValueError(f"only reshapes that drop 1-axes of a pooled vector are supported: {shape} -> {new}")
    return x


def _mean(w, op, x):
    """MEAN over H and W of a map (how the converter writes GlobalAveragePooling2D)."""
    axes = sorted(int(a) % 4 for a in np.ravel(w.reader.value(op.inputs[1])))
    if len(w.em.shape(x)) != 3 or axes != [1, 2]:
        raise ValueError(f"only a mean over H and W of a map is supported: axes {axes} of {w.em.shape(x)}")
    return w.em.global_avg_pool(op.name, x)


def _fully_connected(w, op, x):
    """FULLY_CONNECTED (weights (out, in)) on a pooled vector: a dense node (a Keras Dense head)."""
    o = w.options(op)
    if o is not None and o.WeightsFormat() != 0:
        raise ValueError(f"weights format {o.WeightsFormat()} (only DEFAULT)")
    weight = w.reader.value(op.inputs[1])
    b = w.reader.value(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if len(w.em.shape(x)) != 1 or weight.ndim != 2:
        raise ValueError(f"only a fully-connected layer on a pooled vector is supported: weights {weight.shape} "
                         f"on a value of shape {w.em.shape(x)}")
    y = w.em.linear(_fused_name(w, op, "_linear"), x, weight.T[None, None], b)
    return w.activation(op.name, y, o)


def _same_value(w, op, x):
    """QUANTIZE / DEQUANTIZE: the float network computes the real values themselves."""
    return x


def _softmax(w, op, x):
    o = w.options(op)
    if o is not None and o.Beta() != 1.0:
        raise ValueError(f"softmax with beta {o.Beta()} (only 1 is supported)")
    return w.em.softmax(op.name, x)


# BuiltinOperator name -> its translator.
TRANSLATE = {"CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "AVERAGE_POOL_2D": _average_pool, "MEAN": _mean,
             "ADD": _add, "RESHAPE": _reshape, "SQUEEZE": _reshape, "FULLY_CONNECTED": _fully_connected,
             "SOFTMAX": _softmax, "QUANTIZE": _same_value, "DEQUANTIZE": _same_value}
# Shape arithmetic: the converter computes a RESHAPE's target from the batch size at run time
# (Keras' Flatten/Reshape with a dynamic batch: SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE). These
# ops are accepted and skipped, as long as they read only shapes and constants and feed only each
# other or a RESHAPE's shape input (_check_shape_op).
SHAPE_OPS = {"SHAPE", "STRIDED_SLICE", "PACK", "CONCATENATION", "GATHER"}
SUPPORTED = set(TRANSLATE) | SHAPE_OPS


def _ops(reader):
    """Every operator as an Op, in order."""
    ops = []
    for i in range(reader.g.OperatorsLength()):
        table = reader.g.Operators(i)
        out = int(table.OutputsAsNumpy()[0]) if table.OutputsLength() else -1
        name = _node_name(reader, out) if out >= 0 else f"operator {i}"
        ops.append(Op(table, name, reader.op_name(table), [int(j) for j in table.InputsAsNumpy()], out))
    return ops


def _check_supported(w, ops):
    """Every operator the engine lacks, and every fused activation it lacks, in one error."""
    act, problems = w.reader.tfl.ActivationFunctionType, []
    for op in ops:
        if op.kind not in SUPPORTED:
            problems.append((op.name, op.kind, "op not supported"))
            continue
        o = w.options(op)
        if hasattr(o, "FusedActivationFunction") and o.FusedActivationFunction() not in (act.NONE, act.RELU,
                                                                                           act.RELU6):
            problems.append((op.name, op.kind, f"fused activation code {o.FusedActivationFunction()} not supported"))
    if problems:
        refuse_unsupported(w.reader.path, "TFLite", problems)


def _labels(buf, path, classes, named=None):
    """The class names the file carries, or None: `named` (the file the TFLite Metadata names as
    the output's label file, packed in the zip appended to the model, as tflite-support's writers
    do) when the zip has it, else the first .txt in an appended zip (TF-slim's hosted models). A
    zip that is there but cannot be read (truncated, corrupted) is an error, not "no labels"."""
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as z:
            txt = [named] if named in z.namelist() else [n for n in z.namelist() if n.endswith(".txt")]
            if not txt:
                return None
            labels = read_member(z, txt[0], MAX_LABELS_BYTES, path).decode("utf-8").splitlines()
    except zipfile.BadZipFile as e:
        if _appended_txt(buf):
            raise WeightFileError(f"{path}: the appended labels zip is truncated or corrupted: {e}") from None
        return None
    except (zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError, UnicodeDecodeError) as e:
        raise WeightFileError(f"{path}: the appended labels zip cannot be read: {type(e).__name__}: {e}") from None
    labels = [s for s in labels if s.strip()]
    if len(labels) != classes:
        raise WeightFileError(f"{reader.path}: the embedded {txt[0]} has {len(labels)} labels, "
                              f"the model {classes} outputs")
    return labels


def _metadata_label_file(reader):
    """The name of the output's label file in the TFLite Metadata flatbuffer ("TFLITE_METADATA",
    tflite-support's metadata_schema.fbs), or None. Read field by field with `flatbuffers`
    (the tflite package does not include that schema): ModelMetadata.subgraph_metadata[0]
    .output_tensor_metadata[0].associated_files[i] with type TENSOR_AXIS_LABELS (2); a field in
    slot i sits at vtable offset 4 + 2 i."""
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


def _check_shape_op(w, op, ops, shapes):
    """A shape-arithmetic op may read an activation only through SHAPE (its shape, not its
    values), otherwise shapes and constants; its output may feed only shape ops and a RESHAPE's
    shape input. Anything else is a branch the engine cannot run."""
    for j in (t for t in op.inputs if t >= 0):
        if not (j in shapes or w.reader.raw(j) is not None or (op.kind == "SHAPE" and j in w.values)):
            raise ValueError("combines activations (only shape arithmetic is supported: a branch or a "
                             "concatenation of activations is not)")
    for user in ops:
        if op.output in user.inputs and user.kind not in SHAPE_OPS and \
                not (user.kind == "RESHAPE" and user.inputs.index(op.output) == 1):
            raise ValueError(f"feeds {user.kind} {user.name!r}: only shape arithmetic for a RESHAPE is supported")


def _appended_txt(buf):
    """Whether a zip local file header for a .txt member is in buf (what is left of a labels
    zip whose central directory was cut off)."""
    at = buf.find(b"PK\x03\x04")
    while at >= 0:
        name_len = int.from_bytes(buf[at + 26:at + 28], "little")
        if buf[at + 30:at + 30 + name_len].endswith(b".txt"):
            return True
        at = buf.find(b"PK\x03\x04", at + 4)
    return False


def load_tflite(path, dequantize=False):
    """Read a .tflite file (NHWC input; see the module docstring): a quantized file as a
    QuantizedImport, unless dequantize=True; a float file, or dequantize=True, as a float graph."""
    tfl = _tflite()
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise WeightFileError(f"{path}: not a TFLite flatbuffer: expected the identifier b'TFL3' at byte 4, "
                              f"found {buf[4:8]!r}")
    # a truncated or corrupted flatbuffer fails anywhere inside the parser
    with reading(path, "TFLite flatbuffer"):
        return _build(tfl, buf, path, dequantize)


def _build(tfl, buf, path, dequantize=False):
    reader = _Reader(tfl, buf, path)
    g = reader.g
    if g.InputsLength() != 1 or g.OutputsLength() != 1:
        raise WeightFileError(f"{path}: expected one input and one output, found {g.InputsLength()} and {g.OutputsLength()}")
    inp = int(g.Inputs(0))
    shape = reader.shape(inp)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise WeightFileError(f"{path}: expected a square NHWC RGB input (1, r, r, 3), found {shape}")
    w = _Walk(reader, Emitter(shape[1:]), {inp: "input"})
    ops = _ops(reader)
    _check_supported(w, ops)
    named = _metadata_label_file(reader)

    def labels_for(classes):
        return _labels(buf, path, classes, named)

    if not dequantize:
        from .tflite_int import TRANSLATE as INTEGER_OPS, build_integer, is_integer_graph
        # the integer engine's ops; a file with others, or with float activations inside (weights
        # only quantized: "dynamic range" files), runs as float, dequantized
        if is_integer_graph(reader, ops, SHAPE_OPS) and all(op.kind in INTEGER_OPS or op.kind in SHAPE_OPS
                                                            for op in ops):
            return build_integer(w, ops, shape, _preprocess(reader, inp), labels_for)
    translate_ops(w, ops, TRANSLATE)
    output = w.values.get(int(g.Outputs(0)))
    if output is None:
        raise WeightFileError(f"{path}: the output tensor {reader.name(g.Outputs(0))!r} is not computed")
    try:
        graph = w.em.graph(output, resolution=shape[1], convention="tfslim", preprocess=_preprocess(reader, inp),
                           input_layout="NHWC", source_format="tflite")
    except ValueError as e:
        raise WeightFileError(f"{path}: {e}") from None
    return Imported(graph, w.em.params, labels_for(graph.config.classes), str(path))


def translate_ops(w, ops, table):
    """Translate the operators in order with `table` (kind -> translator) into w's emitter,
    recording each output's value in w.values; an error names the operator."""
    path = w.reader.path
    shapes = set()  # tensors that hold shapes (SHAPE_OPS outputs)
    for op in ops:
        if op.kind in SHAPE_OPS:
            try:
                _check_shape_op(w, op, ops, shapes)
            except ValueError as e:
                raise WeightFileError(f"{path}: node {op.name!r} ({op.kind}): {e}") from None
            shapes.add(op.output)
            continue
        if op.inputs[0] not in w.values:
            raise WeightFileError(f"{path}: node {op.name!r} ({op.kind}) reads tensor "
                                  f"{w.reader.name(op.inputs[0])!r}, which no earlier node computes")
        try:
            w.values[op.output] = table[op.kind](w, op, w.values[op.inputs[0]])
        except ValueError as e:
            raise WeightFileError(f"{path}: node {op.name!r} ({op.kind}): {e}") from None


def _preprocess(reader, inp):
    """The input quantization, real = scale * (q - zero_point), as the preprocessing: mean =
    zero_point, std = 1 / scale (int8 stores pixel - 128); a float input takes Keras' -1..1."""
    q, kind, types = reader.quant(inp), reader.tensor(inp).Type(), reader.tfl.TensorType
    if q is None or kind not in (types.UINT8, types.INT8):
        return Preprocess((127.5,) * 3, (127.5,) * 3, 0.875)
    if not float(q[0][0]) > 0:  # NaN, 0 or negative: (pixel - mean) / std would be NaN or inf
        raise WeightFileError(f"input {reader.name(inp)!r}: expected a quantization scale > 0, found {float(q[0][0])}")
    mean = float(q[1][0]) + (128.0 if kind == types.INT8 else 0.0)
    return Preprocess((mean,) * 3, (1.0 / float(q[0][0]),) * 3, 0.875)
