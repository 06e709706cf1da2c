"""The integer engine on the real int8 ONNX MobileNetV2 (QOperator: QLinearConv, QLinearAdd,
QLinearGlobalAveragePool, QLinearMatMul), against ONNX Runtime itself.

- every node's integers, by name, equal the tensors ONNX Runtime computes, on one photo: a wrong
  zero point, scale or rounding shows at the first layer it touches (and the oracles give the
  fast kernels' output);
- on all 115 asset photos: at least 99.9% of output values within one quantum of ONNX Runtime's
  and the same top-1 on every photo (measured: every byte equal; benchmarks/quantized_agreement.py);
- the ends: a quantized file loads as a QuantizedModel, dequantize=True (and `classify
  --dequantize`) gives the float engine, whose node names the integer nodes share;
- bad files: a crafted scale, zero point, weight, bias or attribute is a WeightFileError naming
  the file, the node and what is wrong, at load.
"""


import numpy as np
import pytest

pytest.importorskip("PIL")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from benchmarks import quantized_agreement as qa  # noqa: E402

from npmobile.errors import WeightFileError  # noqa: E402
from npmobile.io import load  # noqa: E402
from npmobile.model import Model  # noqa: E402
from npmobile.qmodel import QTensor, QuantizedModel  # noqa: E402

NAME = "mobilenetv2-12-int8.onnx"


@pytest.fixture(scope="module")
def path(assets):
    return assets / "models" / NAME


@pytest.fixture(scope="module")
def model(path):
    return load(path)


@pytest.fixture(scope="module")
def images(assets):
    return qa.load_images(assets)


def test_a_quantized_onnx_file_runs_as_integers_and_dequantize_gives_float(model, path):
    assert isinstance(model, QuantizedModel) and model.input_dtype == np.uint8 and model.rounding == "even"
    assert model.config.arch == "mobilenet_v2" and model.outputs == "logits" and model.config.input_layout == "NCHW"
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("qlinear_depthwise_conv2d") == 17 and ops.count("qlinear_add") == 11
    assert ops[0] == "qlinear_conv2d" and ops[-2:] == ["qlinear_matmul", "qlinear_add"]
    floating = load(path, dequantize=True)
    assert isinstance(floating, Model)
    # Every integer node but the quantized bias add (folded into the float dense layer) is named
    # as the float node computing the same ONNX tensor.
    float_names = {n.name for n in floating.graph.nodes}
    assert [n.name for n in model.graph.nodes if n.name not in float_names] == ["Gemm_104_Add_quant_add"]


def _onnx_tensor_of(model_proto):
    """npmobile node name -> the ONNX tensor it computes (the importer's naming rule)."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model_proto.graph.initializer}
    suffix = {"QLinearConv": "_linear", "QLinearMatMul": "_linear", "QLinearAdd": "_add",
              "QLinearGlobalAveragePool": "_pool"}
    names = {}
    for node in model_proto.graph.node:
        if node.op_type in suffix:
            zero = consts[node.input[-1] if node.op_type != "QLinearConv" or len(node.input) < 9 else node.input[7]]
            fused = int(zero) == np.iinfo(zero.dtype).min
            names[node.name if fused else node.name + suffix[node.op_type]] = node.output[0]
    return names


def test_every_node_equals_onnxruntime_on_a_photo(model, path, images):
    pixels = qa.pixels_for([im for im in images if im[0] == "chelsea.png"], 224)
    x = model.preprocess(pixels)
    ours = model.run(x, intermediates=True)
    oracle = model.run(x, oracle=True)  # the int64 oracles, node by node: the same bytes
    np.testing.assert_array_equal(oracle.values, ours[model.graph.output].values)
    proto = onnx.load(str(path))
    tensors = _onnx_tensor_of(proto)
    assert set(tensors) == {n.name for n in model.graph.nodes}
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors.values())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    theirs = dict(zip(tensors.values(), sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})))
    for name, tensor in tensors.items():
        ref = theirs[tensor]
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 and ref.shape[2:] != (1, 1) else ref.reshape(len(ref), -1)
        got = ours[name]
        assert isinstance(got, QTensor) and got.values.dtype == np.uint8
        np.testing.assert_array_equal(got.values, ref, err_msg=name)


def test_agreement_with_onnxruntime_on_every_photo(path, images):
    r = qa.compare_onnx(path, qa.pixels_for(images, 224))
    print("\n" + qa.onnx_summary_line(r))
    assert r["n"] == 115
    assert r["within_one"] >= 0.999, qa.onnx_summary_line(r)
    assert r["top1_same"] == 115, qa.onnx_summary_line(r)


# --- crafted bad files ----------------------------------------------------------------------------

def _initializer(proto, name):
    return next(i for i in proto.graph.initializer if i.name == name)


def _set(proto, name, value):
    _initializer(proto, name).CopyFrom(onnx.numpy_helper.from_array(np.asarray(value), name))


def _attr(proto, node_name, key, value):
    node = next(n for n in proto.graph.node if n.name == node_name)
    for a in node.attribute:
        if a.name == key:
            node.attribute.remove(a)
            break
    node.attribute.append(onnx.helper.make_attribute(key, value))


BAD = {
    "negative input scale": (lambda p: _set(p, "input_scale", np.float32(-0.5)), "input_QuantizeLinear", "scale"),
    "NaN weight scale": (lambda p: _set(p, "481_scale", np.full(16, np.nan, np.float32)), "Conv_4_quant", "w_scale"),
    "float weights": (lambda p: _set(p, "481_quantized", np.ones((16, 32, 1, 1), np.float32)), "Conv_4_quant",
                      "weights"),
    "weights of the wrong width": (lambda p: _set(p, "481_quantized", np.ones((16, 31, 1, 1), np.int8)),
                                   "Conv_4_quant", "group"),
    "int16 zero point": (lambda p: _set(p, "480_zero_point", np.int16(119)), "Conv_4_quant", "zero point"),
    "float bias": (lambda p: _set(p, "482_quantized", np.zeros(16, np.float32)), "Conv_4_quant", "bias"),
    "short bias": (lambda p: _set(p, "482_quantized", np.zeros(15, np.int32)), "Conv_4_quant", "bias"),
    "zero stride": (lambda p: _attr(p, "Conv_0_quant", "strides", [0, 0]), "Conv_0_quant", "strides"),
    "pads past the kernel": (lambda p: _attr(p, "Conv_2_quant", "pads", [5, 5, 5, 5]), "Conv_2_quant", "pads"),
    "zero add scale": (lambda p: _set(p, "339_scale", np.float32(0.0)), "Add_15_quant", "scale"),
    "pool scale out of range": (lambda p: _set(p, "464_scale", np.float32(1e-12)), "GlobalAveragePool_97_quant",
                                "scale"),
    "a second quantization of one tensor": (lambda p: _restate(p, "GlobalAveragePool_97_quant", 1, np.float32(0.03)),
                                            "GlobalAveragePool_97_quant", "quantized as"),
}


def _restate(proto, node_name, i, value):
    """Point input i of the node at a new constant: the node states its own quantization."""
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), "restated"))
    next(n for n in proto.graph.node if n.name == node_name).input[i] = "restated"


@pytest.mark.parametrize("case", list(BAD))
def test_a_crafted_bad_file_is_refused_naming_node_and_attribute(path, tmp_path, case):
    mutate, node, what = BAD[case]
    proto = onnx.load(str(path))
    mutate(proto)
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(WeightFileError) as e:
        load(bad)
    message = str(e.value)
    assert str(bad) in message and node in message and what in message, message


def test_classify_runs_the_integer_engine_and_dequantize_flag_the_float_one(model, path, images, capsys):
    import json
    import pickle

    from npmobile.cli import main
    photo = next(p for name, p, _ in images if name == "chelsea.png")
    x = model.preprocess(qa.pixels_for([(None, photo, None)], 224))
    expected = {"integer": model.predict(x)[0].max(), "float": load(path, dequantize=True).predict(x)[0].max()}
    assert expected["integer"] != expected["float"]
    for kind, flags in (("integer", []), ("float", ["--dequantize"])):
        assert main(["classify", "--weights", str(path), str(photo), "--top", "1", "--json", *flags]) == 0
        got = json.loads(capsys.readouterr().out)[0]["predictions"][0]["probability"]
        assert got == pytest.approx(expected[kind], abs=1e-6), kind
    # a model travels to a worker process without its threads' buffers, rounding and all
    travelled = pickle.loads(pickle.dumps(model))
    assert travelled.rounding == "even"
    np.testing.assert_array_equal(travelled(x), model(x))
