"""The TensorFlow half of the corpus (scripts/make_corpus.py runs it in its TensorFlow venv with
KERAS_BACKEND=tensorflow): Keras .keras/.h5 files, TFLite files from TF's converters, tf2onnx.

Every TFLite form comes from one of three converter paths:
- `tf.lite.TFLiteConverter.from_keras_model`: float32; dynamic range (Optimize.DEFAULT alone:
  int8 weights, float activations); full integer (a representative dataset and
  TFLITE_BUILTINS_INT8) with float input/output (QUANTIZE/DEQUANTIZE at the ends), or int8
  input/output, or uint8 input/output;
- `tf.compat.v1.lite.TFLiteConverter.from_frozen_graph` with inference_type=tf.uint8 on a graph
  with FakeQuant ops after every activation (ranges measured on the calibration images): the
  legacy all-uint8 files TF-slim's quantization-aware training produced (as in ../shared/assets).
"""

import io
import os
import zipfile

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from make_corpus import ASSETS, SEED, add_entry, calibration_images, label_names, photos  # noqa: E402

RNG = np.random.default_rng(SEED)


# --- weights shaped like a trained network's (see make_corpus's docstring) ---------------------

def randomise(model, images):
    """He-scaled kernels, random gamma/beta, and BN statistics measured on `images`: the layers
    run one by one in order on the images, each BN given the mean and variance of its own input
    just before it runs (one pass calibrates every layer, later ones seeing the earlier ones)."""
    values = {id(model.inputs[0]): tf.constant(images)}
    for layer in model.layers[1:]:
        node = layer._inbound_nodes[0]
        args = [values[id(t)] for t in node.input_tensors]
        x = args[0] if len(args) == 1 else args
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            k = layer.get_weights()[0]
            fan_in = k.shape[0] * k.shape[1] * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else k.shape[2])
            layer.set_weights([(RNG.standard_normal(k.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)]
                              + layer.get_weights()[1:])
        if isinstance(layer, keras.layers.BatchNormalization):
            flat = x.numpy().reshape(-1, x.shape[-1])
            c = flat.shape[-1]
            layer.set_weights([RNG.uniform(0.5, 1.5, c).astype(np.float32),
                               (0.5 + 0.25 * RNG.standard_normal(c)).astype(np.float32),
                               flat.mean(0), flat.var(0) + 1e-3])
        values[id(node.output_tensors[0])] = layer(x, training=False)


def prototype_head(dense, features, gap=6.0):
    """Class c's weights: the centred, normalised features of image c (random rows of a tenth
    the norm beyond the images), scaled so an image's own class leads by about `gap` logits."""
    k = dense.get_weights()[0].shape[-1]
    f = features - features.mean(0)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    n = min(k, len(f))
    w = RNG.standard_normal((f.shape[1], k)) * 0.1 / np.sqrt(f.shape[1])
    w[:, :n] = f[:n].T
    mu_logit = features.mean(0) @ w
    spread = float(np.median(np.max(features @ w - mu_logit, axis=1)))
    scale = gap / max(spread, 1e-6)
    dense.set_weights([(w * scale).astype(np.float32), (-mu_logit * scale).astype(np.float32)])


# --- the models ---------------------------------------------------------------------------------

def classifier(arch, alpha, res, classes, *, activation="softmax", rescaling=False, sequential=False,
               nested=False, pool="gap", head="dense", trained=False):
    """A fine-tuned classifier: keras.applications base (include_top=False) + pooling + Dropout +
    a Dense(classes) head (or a 1x1 Conv + squeeze), optionally Rescaling(1/127.5, -1) in front.
    trained: the base and head from trained_base (224, its own alpha), else random weights
    (randomise) with a prototype head."""
    if trained:
        base, kernel, bias = trained_base(arch)
        res = TRAINED[arch][2]
    else:
        app = {"v1": keras.applications.MobileNet, "v2": keras.applications.MobileNetV2}[arch]
        base = app(input_shape=(res, res, 3), alpha=alpha, include_top=False, weights=None)
        images = calibration_images(res)
        randomise(base, images)
        feats = base(images).numpy().mean((1, 2))
    pre = [keras.layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")] if rescaling else []
    if head == "dense":
        pooling = [keras.layers.GlobalAveragePooling2D(name="gap") if pool == "gap" else
                   keras.layers.AveragePooling2D(base.output.shape[1:3], name="avg_pool")]
        if pool != "gap":
            pooling.append(keras.layers.Flatten(name="flatten"))
        top = pooling + [keras.layers.Dropout(0.2, name="dropout"), keras.layers.Dense(classes, name="Logits")]
    else:  # a 1x1 convolution on the pooled map, squeezed (how TF-slim writes its logits)
        top = [keras.layers.GlobalAveragePooling2D(keepdims=True, name="gap"),
               keras.layers.Dropout(0.2, name="dropout"), keras.layers.Conv2D(classes, 1, name="Logits"),
               keras.layers.Lambda(lambda t: keras.ops.squeeze(t, axis=(1, 2)), name="squeeze")]
    # the softmax as its own layer, so the legacy converter's FakeQuant also sees the logits
    act = [keras.layers.Activation(activation, name="predictions")] if activation == "softmax" else []
    if sequential:
        model = keras.Sequential([keras.Input((res, res, 3))] + pre + [base] + top + act, name="sequential")
    else:
        inp = keras.Input((res, res, 3), name="image")
        x = inp
        for layer in pre:
            x = layer(x)
        x = base(x) if nested or rescaling else x
        if not (nested or rescaling):
            inp, x = base.input, base.output
        for layer in top + act:
            x = layer(x)
        model = keras.Model(inp, x, name="finetuned")
    dense = model.get_layer("Logits")
    tmp = keras.layers.Dense(classes)
    tmp.build((None, dense.input.shape[-1]))
    if trained:
        tmp.set_weights(list(imagenet_rows(kernel, bias, classes)))
    else:
        prototype_head(tmp, feats)
    w, b = tmp.get_weights()
    dense.set_weights([w if head == "dense" else w.reshape(1, 1, *w.shape), b])
    return model


TRAINED = {"v1": ("mobilenet_v1_0.25_128_quant.tflite", 0.25, 128), "v2": ("mobilenet_v2_1.0_224_quant.tflite", 1.0, 224)}


def trained_base(arch, pooling=None):
    """A keras.applications base (include_top=False) holding the trained ImageNet weights of one
    of ../shared/assets' quantization-aware-trained TFLite files (TRAINED: V1 0.25-128, V2
    1.0-224), dequantized, each BN the identity plus the folded bias; and that file's classifier
    without its background class (kernel (c, 1000), bias (1000,)). Returns (base, kernel, bias).
    A random network's features barely differ between photos, so quantization noise decides its
    top-1; a trained base gives the confident outputs a real fine-tuned file has. (The Keras V1
    0.25-224 .h5 in the assets was tried first: per-tensor uint8 depthwise weights, as the legacy
    converter writes them, leave that float-trained network one class for every photo.)"""
    from tensorflow.lite.tools import flatbuffer_utils

    name, alpha, res = TRAINED[arch]
    app = {"v1": keras.applications.MobileNet, "v2": keras.applications.MobileNetV2}[arch]
    base = app(input_shape=(res, res, 3), alpha=alpha, include_top=False, pooling=pooling, weights=None)
    src = flatbuffer_utils.read_model(str(ASSETS / "models" / name))
    g = src.subgraphs[0]

    def value(i):
        t = g.tensors[i]
        q = np.frombuffer(bytes(src.buffers[t.buffer].data), dtype=np.uint8 if t.type == 3 else np.int32)
        return (q.reshape(t.shape).astype(np.float64) - t.quantization.zeroPoint[0]) * t.quantization.scale[0]

    linear = [(src.operatorCodes[op.opcodeIndex].builtinCode, value(op.inputs[1]), value(op.inputs[2]))
              for op in g.operators if src.operatorCodes[op.opcodeIndex].builtinCode in (3, 4)]
    layers = [l for l in base.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(layers) == len(bns) == len(linear) - 1, (len(layers), len(bns), len(linear))
    for layer, bn, (code, w, b) in zip(layers, bns, linear):
        layer.set_weights([(w.transpose(1, 2, 3, 0) if code == 3 else w[0][..., None]).astype(np.float32)])
        c = b.size
        bn.set_weights([np.ones(c, np.float32), b.astype(np.float32), np.zeros(c, np.float32),
                        np.full(c, 1 - bn.epsilon, np.float32)])
    _, w, b = linear[-1]
    return base, w[1:, 0, 0, :].T, b[1:]


def imagenet_rows(kernel, bias, classes):
    """`classes` of the 1000 ImageNet classifier rows, spread evenly (a fine-tuned head's stand-in)."""
    rows = np.linspace(0, 999, classes).round().astype(int)
    return kernel[:, rows].astype(np.float32), bias[rows].astype(np.float32)


def headless(arch, alpha, res, pooling, trained=False):
    if trained:
        return trained_base(arch, pooling)[0]
    app = {"v1": keras.applications.MobileNet, "v2": keras.applications.MobileNetV2}[arch]
    base = app(input_shape=(res, res, 3), alpha=alpha, include_top=False, pooling=pooling, weights=None)
    randomise(base, calibration_images(res))
    return base


def slim_classifier(classes):
    """keras.applications.MobileNet(0.25, 128, include_top=True, classes=k) on the trained base:
    GAP (keepdims) -> Dropout -> 1x1 Conv -> Reshape -> softmax, the head Keras writes for V1."""
    model = keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, classes=classes, weights=None)
    base, kernel, bias = trained_base("v1")
    for layer in base.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    w, b = imagenet_rows(kernel, bias, classes)
    model.get_layer("conv_preds").set_weights([w.reshape(1, 1, *w.shape), b])
    return model


# --- TFLite --------------------------------------------------------------------------------------

def representative(res):
    def gen():
        for x in calibration_images(res):
            yield [x[None]]
    return gen


def to_tflite(model, mode):
    """mode: float | dynamic | int8-float-io | int8 | uint8-io (the TF2 converter)."""
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode not in ("float", "dynamic"):
        c.representative_dataset = representative(model.input.shape[1])
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if mode in ("int8", "uint8-io"):
        c.inference_input_type = c.inference_output_type = tf.int8 if mode == "int8" else tf.uint8
    return c.convert()


class _FakeQuant(keras.layers.Layer):
    """Wraps a layer: its output through FakeQuant with the range measured while calibrating."""

    def __init__(self, inner):
        super().__init__(name=inner.name + "_fq")
        self.inner, self.lo, self.hi, self.calibrating = inner, 0.0, 0.0, True

    def call(self, inputs, **kwargs):
        y = self.inner(inputs)
        if self.calibrating:
            if tf.executing_eagerly():  # (not while Keras traces the clone symbolically)
                self.lo, self.hi = min(self.lo, float(tf.reduce_min(y))), max(self.hi, float(tf.reduce_max(y)))
            return y
        return tf.quantization.fake_quant_with_min_max_args(y, min=self.lo, max=self.hi, num_bits=8)


_QUANTIZED_OUTPUTS = (keras.layers.ReLU, keras.layers.Add, keras.layers.GlobalAveragePooling2D,
                      keras.layers.AveragePooling2D, keras.layers.Dense, keras.layers.Activation)


def to_legacy_uint8(model, path):
    """TF-slim's quantization-aware files: FakeQuant after every tensor the uint8 graph keeps
    (ReLU6 outputs, the linear projections' BN outputs, adds, the pool, logits, softmax), then the
    TF1 converter with inference_type=uint8 (input real = (q - 128) / 127.5... as quantized_input_stats)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    users = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                users.setdefault(t._keras_history.operation.name, []).append(layer)
    wrappers = []

    def wrap(layer):
        linear_bn = isinstance(layer, keras.layers.BatchNormalization) and not any(
            isinstance(u, keras.layers.ReLU) for u in users.get(layer.name, []))
        head_conv = isinstance(layer, keras.layers.Conv2D) and layer.use_bias  # the logits (base convs have no bias)
        if isinstance(layer, _QUANTIZED_OUTPUTS) or linear_bn or head_conv:
            wrappers.append(_FakeQuant(layer))
            return wrappers[-1]
        return layer

    fq = keras.models.clone_model(model, clone_function=wrap)
    for a, b in zip(fq.weights, model.weights):
        a.assign(b)
    res = model.input.shape[1]
    fq(calibration_images(res), training=False)
    for w in wrappers:
        w.calibrating = False
    fn = tf.function(lambda x: fq(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, res, res, 3), tf.float32, name="input"))
    frozen = convert_variables_to_constants_v2(fn)
    pb = str(path) + ".pb"
    tf.io.write_graph(frozen.graph.as_graph_def(), os.path.dirname(pb), os.path.basename(pb), as_text=False)
    out = frozen.outputs[0].name.split(":")[0]
    c = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(pb, ["input"], [out], {"input": [1, res, res, 3]})
    c.inference_type = tf.uint8
    c.quantized_input_stats = {"input": (127.5, 127.5)}  # real = (q - mean) / std: q/127.5 - 1
    data = c.convert()
    os.remove(pb)
    return data


def append_labels(data, labels, name="labels.txt", before=()):
    """The label file appended as a zip, as TF-slim's hosted models carry it (`before`: other
    (name, text) files packed ahead of it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for other, text in before:
            z.writestr(other, text)
        z.writestr(name, "\n".join(labels) + "\n")
    return data + buf.getvalue()


def with_metadata(data, labels, name):
    """TFLite Metadata (tflite-support's metadata_schema.fbs, identifier "M001") naming labels.txt
    as the output's TENSOR_AXIS_LABELS associated file, with the file packed into the model as a
    zip, as tflite-support's metadata writers do (tflite-support does not install beside TF 2.21,
    so the flatbuffer is built here, table by table)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    b = flatbuffers.Builder(1024)

    def table(fields):  # fields: [(slot, kind, value)], kind "offset" | "byte" | "vector"
        refs = []
        for slot, kind, value in fields:
            if kind == "vector":
                b.StartVector(4, len(value), 4)
                for v in reversed(value):
                    b.PrependUOffsetTRelative(v)
                refs.append((slot, "offset", b.EndVector()))
            else:
                refs.append((slot, kind, value))
        b.StartObject(8)
        for slot, kind, value in refs:
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            else:
                b.PrependInt8Slot(slot, value, 0)
        return b.EndObject()

    label_file = table([(0, "offset", b.CreateString("probability_labels.txt")), (2, "byte", 2)])  # TENSOR_AXIS_LABELS
    tin = table([(0, "offset", b.CreateString("image"))])
    tout = table([(0, "offset", b.CreateString("probability")), (6, "vector", [label_file])])
    sub = table([(2, "vector", [tin]), (3, "vector", [tout])])
    root = table([(0, "offset", b.CreateString(name)), (3, "vector", [sub]),
                  (7, "offset", b.CreateString("1.0.0"))])
    b.Finish(root, file_identifier=b"M001")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(b.Output()), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    # a readme first: a reader that took the zip's first .txt would get it, not the labels
    return append_labels(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), labels, "probability_labels.txt",
                         before=[("readme.txt", "A MobileNet written by npmobile's corpus generator.\n")])


def to_onnx(out, model, name, opset):
    """tf2onnx from the Keras model's tf.function: NHWC input, Transposes around the convs."""
    import tf2onnx
    res = model.input.shape[1]
    spec = (tf.TensorSpec((1, res, res, 3), tf.float32, name="input"),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    (out / name).write_bytes(proto.SerializeToString())
    add_entry(out, dict(file=name, format="onnx", writer=f"tf2onnx {tf2onnx.__version__}", quantized=False,
                        runtime="onnxruntime", form=f"tf2onnx from Keras, opset {opset}, NHWC input, MatMul + Add head"))
    print(f"  {name}", flush=True)


# --- the corpus -----------------------------------------------------------------------------------

def write(out, name, data, **entry):
    (out / name).write_bytes(data)
    add_entry(out, dict(file=name, **entry))
    print(f"  {name}: {len(data) // 1024} kB", flush=True)


def save_keras(out, model, name, **entry):
    model.save(out / name)
    add_entry(out, dict(file=name, **entry))
    print(f"  {name}", flush=True)


def tflite_forms(out, model, stem, modes, form, **extra):
    for mode in modes:
        write(out, f"{stem}_{mode}.tflite", to_tflite(model, mode), format="tflite", writer="TFLiteConverter",
              runtime="litert", quantized=mode != "float", form=f"{mode}; {form}", **extra)


def write_all(out):
    from pathlib import Path
    out = Path(out)
    print("TensorFlow half:", tf.__version__, "keras", keras.__version__, flush=True)
    keras_file = dict(format="keras", writer="keras (tensorflow backend)", quantized=False, runtime="keras")
    legacy = dict(format="tflite", writer="compat.v1 TFLiteConverter (FakeQuant graph, inference_type=uint8)",
                  quantized=True, runtime="litert")

    # A fine-tuned V2 (trained base, 965 classes, Dense head): the acceptance files.
    m = classifier("v2", 1.0, 224, 965, trained=True)
    head = "MEAN + FULLY_CONNECTED + SOFTMAX head, 965 classes"
    tflite_forms(out, m, "v2_10_224_fc965", ("float", "dynamic", "int8-float-io", "int8", "uint8-io"), head)
    write(out, "v2_10_224_fc965_legacy_uint8.tflite", append_labels(to_legacy_uint8(m, out / "legacy"), label_names(965)),
          form=f"legacy uint8; {head}; labels in an appended zip", **legacy)
    save_keras(out, m, "v2_10_224_fc965.keras", form="Functional: base + GAP + Dropout + Dense(965) + softmax",
               **keras_file)
    to_onnx(out, m, "v2_10_224_fc965_tf2onnx.onnx", opset=13)

    # V1 0.25-128 with Keras' own classifier head (1x1 conv + reshape), 10 classes.
    m = slim_classifier(10)
    head = "MEAN + CONV_2D 1x1 + RESHAPE + SOFTMAX head, 10 classes"
    for mode in ("float", "int8"):
        write(out, f"v1_025_128_conv10_{mode}.tflite", with_metadata(to_tflite(m, mode), label_names(10), "v1"),
              format="tflite", writer="TFLiteConverter", quantized=mode != "float", runtime="litert",
              form=f"{mode}; {head}; labels from the TFLite Metadata")
    write(out, "v1_025_128_conv10_legacy_uint8.tflite", to_legacy_uint8(m, out / "legacy"), form=f"legacy uint8; {head}",
          **legacy)
    save_keras(out, m, "v1_025_128_conv10.h5", form="keras.applications.MobileNet(classes=10), legacy .h5", **keras_file)

    # Other heads on trained bases: AVERAGE_POOL_2D + Flatten + linear Dense; 1x1 conv + squeeze.
    m = classifier("v1", 0.25, 128, 12, activation=None, pool="avg", trained=True)
    tflite_forms(out, m, "v1_025_128_avgpool_linear12", ("float", "int8-float-io"),
                 "AVERAGE_POOL_2D + RESHAPE + FULLY_CONNECTED head (no softmax), 12 classes")
    m = classifier("v2", 1.0, 224, 20, head="conv", trained=True)
    head = "MEAN + CONV_2D 1x1 + SQUEEZE + SOFTMAX head, 20 classes"
    tflite_forms(out, m, "v2_10_224_conv_squeeze20", ("float",), head)
    write(out, "v2_10_224_conv_squeeze20_legacy_uint8.tflite", to_legacy_uint8(m, out / "legacy"),
          form=f"legacy uint8; {head}", **legacy)

    # Headless embedding extractors.
    m = headless("v1", 0.25, 128, "avg", trained=True)
    tflite_forms(out, m, "v1_025_128_headless_avg", ("float", "int8"), "headless extractor (pooling=avg)",
                 embedding=True)
    m = headless("v2", 0.35, 128, None)
    tflite_forms(out, m, "v2_035_128_headless_map", ("dynamic",), "headless, random weights, the 4x4x1280 map out",
                 embedding=True)

    # Small random-weight networks (alpha 0.35-0.5): Keras wrappers with preprocessing inside.
    m = classifier("v2", 0.5, 128, 37, activation=None, rescaling=True, sequential=True)
    for suffix in (".keras", ".h5"):
        save_keras(out, m, "v2_05_128_seq_rescale_linear37" + suffix,
                   form="Sequential: Rescaling + base + GAP + Dropout + Dense(37, linear)", **keras_file)
    m = classifier("v1", 0.5, 96, 5, rescaling=True)
    for suffix in (".keras", ".h5"):
        save_keras(out, m, "v1_05_96_func_rescale_softmax5" + suffix,
                   form="Functional: Rescaling + nested base + GAP + Dropout + Dense(5) + softmax", **keras_file)
