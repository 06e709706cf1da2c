"""The ONNX importer against ONNX Runtime on the same file.

- torchvision mobilenet_v2 (random weights, randomised BN statistics) exported by torch.onnx
  (opset 13, TorchScript exporter: BN folded into the convs by the exporter);
- Keras MobileNet (V1) with random weights and randomised BN, exported by Keras itself
  (`model.export(format="onnx")`, torch backend): an NHWC graph with a Transpose around every Conv,
  batch norm as Sub/Mul/Add, and "same" pads computed by Shape/Gather/... arithmetic;
- small graphs built with onnx.helper: Clip with attributes (opset 10) and with inputs (opset 13),
  Pad, depthwise with depth multiplier 2, a residual Add, AveragePool over the whole map,
  Flatten/Squeeze, Gemm(transB) and MatMul + Add;
- refusals: unsupported ops (all listed at once), a Concat branch, two outputs, bad files.
The int8 model-zoo MobileNetV2 (QLinear ops) is checked on real photos in test_real_models.py.
"""

import os
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import npmobile  # noqa: E402
from npmobile.io import load  # noqa: E402
from npmobile.io.onnx import from_onnx_model, load_onnx  # noqa: E402
from npmobile.weights import WeightFileError  # noqa: E402


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def assert_parity(y, ref):
    """The issue's bound, plus a relative one so tiny outputs (softmax of 1000) still bite."""
    assert y.shape == ref.shape
    err = np.abs(y - ref).max()
    assert err <= 1e-4 * max(1.0, np.abs(ref).max()), err
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-6 * np.abs(ref).max())


@pytest.fixture(scope="module")
def torchvision_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # default statistics would hide BN bugs
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("onnx") / "tv_mobilenet_v2.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(path), opset_version=13, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


@pytest.fixture(scope="module")
def keras_onnx(tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    model = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(128, 128, 3))
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # gamma, beta, mean, var
            g, b, m, v = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, g), 0.2 * rng.standard_normal(b),
                               0.2 * rng.standard_normal(m), rng.uniform(0.5, 1.5, v)])
    model(np.zeros((1, 128, 128, 3), np.float32))  # Keras exports only a model that has run
    path = tmp_path_factory.mktemp("onnx") / "keras_mobilenet.onnx"
    model.export(str(path), format="onnx", verbose=False)
    return path


def test_torchvision_mobilenet_v2_matches_onnxruntime(torchvision_onnx):
    model = load(torchvision_onnx)
    assert model.config.input_layout == "NCHW" and model.config.convention == "torch"
    assert model.config.arch == "mobilenet_v2" and model.config.classes == 1000
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    ref = ort_run(torchvision_onnx, x.transpose(0, 3, 1, 2))
    assert_parity(model(x), ref)
    assert_parity(model.run(x, oracle=True).astype(np.float32), ref)


def test_keras_mobilenet_export_matches_onnxruntime(keras_onnx):
    model = npmobile.Model(*load_onnx(keras_onnx))
    assert model.config.input_layout == "NHWC" and model.config.convention == "keras"
    assert model.config.arch == "mobilenet_v1"
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("depthwise_conv2d") == 13 and ops[-1] == "softmax"
    x = np.random.default_rng(2).standard_normal((3, 128, 128, 3)).astype(np.float32)
    ref = ort_run(keras_onnx, x)
    assert_parity(model(x), ref)
    assert_parity(model.run(x, oracle=True).astype(np.float32), ref)


# --- small graphs built by hand ------------------------------------------------------------

def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def tiny_model(opset, head="gemm", extra_nodes=(), rng_seed=0):
    """Conv+BN+Clip, Pad, depthwise x2, Relu, two pointwise convs added, whole-map AveragePool,
    then Flatten+Gemm(transB) or Squeeze+MatMul+Add, then Softmax. NCHW input (n, 3, 9, 9)."""
    rng = np.random.default_rng(rng_seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [_init("w1", f(4, 3, 3, 3)), _init("b1", f(4)), _init("g", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
             _init("beta", f(4)), _init("mean", f(4)), _init("var", rng.uniform(0.5, 1.5, 4).astype(np.float32)),
             _init("wd", f(8, 1, 3, 3)), _init("wp", f(6, 8, 1, 1)), _init("wq", f(6, 8, 1, 1)), _init("bq", f(6)),
             _init("fc_w", f(5, 6)), _init("fc_b", f(5))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], name="bn", epsilon=1e-3)]
    if opset < 11:
        nodes += [helper.make_node("Clip", ["bn"], ["r1"], name="clip", min=0.0, max=6.0),
                  helper.make_node("Pad", ["r1"], ["p"], name="pad", pads=[0, 0, 0, 0, 0, 0, 1, 1])]
    else:
        inits += [_init("hi", np.float32(6.0)), _init("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64))]
        nodes += [helper.make_node("Constant", [], ["lo"], name="lo", value=_init("lo_t", np.float32(0.0))),
                  helper.make_node("Clip", ["bn", "lo", "hi"], ["r1"], name="clip"),
                  helper.make_node("Pad", ["r1", "pads"], ["p"], name="pad")]
    nodes += [helper.make_node("Conv", ["p", "wd"], ["d"], name="dw", group=4, strides=[2, 2], kernel_shape=[3, 3]),
              helper.make_node("Relu", ["d"], ["r2"], name="relu"),
              helper.make_node("Conv", ["r2", "wp"], ["pw1"], name="pw1"),
              helper.make_node("Conv", ["r2", "wq", "bq"], ["pw2"], name="pw2"),
              helper.make_node("Add", ["pw1", "pw2"], ["s"], name="residual"),
              helper.make_node("AveragePool", ["s"], ["pool"], name="pool", kernel_shape=[2, 2])]
    if head == "gemm":
        nodes += [helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    else:
        inits += [_init("axes", np.array([2, 3], np.int64)), _init("fc_wt", f(6, 5))]
        nodes += [helper.make_node("Squeeze", ["pool", "axes"], ["flat"], name="squeeze"),
                  helper.make_node("MatMul", ["flat", "fc_wt"], ["mm"], name="matmul"),
                  helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="bias")]
    nodes += [helper.make_node("Softmax", ["logits"], ["y"], name="softmax")]
    nodes += list(extra_nodes)
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset,head", [(10, "gemm"), (13, "gemm"), (13, "matmul")])
def test_tiny_graphs_match_onnxruntime(tmp_path, opset, head):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(opset, head), str(path))
    model = load(path)
    ops = [n.op for n in model.graph.nodes]
    assert ops[:3] == ["conv2d", "batchnorm", "clamp"] and "zero_pad" in ops and "add" in ops
    assert model.graph.node("dw").params["w"] == (3, 3, 8)  # depth multiplier 2
    x = (3 * np.random.default_rng(3).standard_normal((2, 9, 9, 3))).astype(np.float32)
    ref = ort_run(path, x.transpose(0, 3, 1, 2))
    assert_parity(model(x), ref)
    assert_parity(model.run(x, oracle=True).astype(np.float32), ref)
    # The clamp really clamps: at this input scale some pre-activations exceed 6.
    pre = model.run(x, oracle=True, intermediates=True)["bn"]
    assert pre.max() > 6
    # The imported graph survives the native .npz round trip.
    npmobile.save(tmp_path / "tiny.npz", model)
    np.testing.assert_array_equal(npmobile.load(tmp_path / "tiny.npz")(x), model(x))


def test_clip_min_max_attributes_before_opset_11_are_read(tmp_path):
    model = npmobile.Model(*from_onnx_model(tiny_model(10)))
    clip = model.graph.node("clip")
    assert (clip.attrs["lo"], clip.attrs["hi"]) == (0.0, 6.0)


def test_unsupported_ops_are_all_listed_in_one_error():
    extra = [helper.make_node("LRN", ["y"], ["l"], name="my_lrn", size=3),
             helper.make_node("MaxPool", ["l"], ["m"], name="my_maxpool", kernel_shape=[2, 2])]
    with pytest.raises(WeightFileError) as e:
        from_onnx_model(tiny_model(13, extra_nodes=extra), source="tiny.onnx")
    msg = str(e.value)
    assert "tiny.onnx" in msg and "'my_lrn' (LRN)" in msg and "'my_maxpool' (MaxPool)" in msg


def test_unsupported_attribute_is_refused():
    m = tiny_model(13)
    conv = next(n for n in m.graph.node if n.name == "dw")
    conv.attribute.append(helper.make_attribute("dilations", [2, 2]))
    with pytest.raises(WeightFileError, match=r"'dw' \(Conv\): dilations"):
        from_onnx_model(m)


def _two_branch_graph(op):
    rng = np.random.default_rng(0)
    inits = [_init("w1", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             _init("w2", rng.standard_normal((4, 3, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="left"),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="right")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if op == "Concat":
        nodes.append(helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1))
    else:  # two outputs
        nodes.append(helper.make_node("Relu", ["a"], ["y"], name="relu"))
        outputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "branch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_concat_branch_is_refused_naming_the_node(tmp_path):
    path = tmp_path / "branch.onnx"
    onnx.save(_two_branch_graph("Concat"), str(path))
    with pytest.raises(WeightFileError, match=r"branch\.onnx: node 'cat' \(Concat\)"):
        load(path)


def test_two_outputs_are_refused(tmp_path):
    with pytest.raises(WeightFileError, match="one output"):
        from_onnx_model(_two_branch_graph("outputs"), source="two.onnx")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "png", "empty"])
def test_bad_files_give_a_clear_error(tmp_path, damage):
    good = tiny_model(13).SerializeToString()
    data = {"truncated": good[: len(good) // 2], "garbage": np.random.default_rng(0).bytes(2000),
            "png": b"\x89PNG\r\n\x1a\n" + bytes(200), "empty": b""}[damage]
    path = tmp_path / f"{damage}.onnx"
    path.write_bytes(data)
    with pytest.raises(WeightFileError, match=f"{damage}.onnx"):
        load(path)


def test_missing_onnx_package_gives_an_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'npmobile\[onnx\]'"):
        load_onnx(tmp_path / "any.onnx")


def _scaled_conv_graph(second_reader):
    """conv -> Transpose -> Transpose -> Mul by a per-channel constant -> output, and the conv's
    output read a second time: by nothing, by a Shape (which reads no values) or by a Relu that is
    added back (a second reader of the values, so the Mul must not fold into the conv)."""
    rng = np.random.default_rng(1)
    inits = [_init("w", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
             _init("k", rng.uniform(0.5, 2.0, (1, 4, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Transpose", ["c"], ["t1"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["t1"], ["t2"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["t2", "k"], ["m"], name="scale")]
    out = "m"
    if second_reader == "shape":
        nodes.append(helper.make_node("Shape", ["c"], ["s"], name="shape"))
    elif second_reader == "relu":
        nodes += [helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("Add", ["m", "r"], ["y"], name="sum")]
        out = "y"
    graph = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("second_reader", [None, "shape"])
def test_a_mul_folds_into_the_conv_whose_values_it_alone_reads(tmp_path, second_reader):
    path = tmp_path / "scaled.onnx"
    onnx.save(_scaled_conv_graph(second_reader), str(path))
    model = load(path)
    assert [n.op for n in model.graph.nodes] == ["pointwise_conv2d"]  # the Mul is in the weights
    x = np.random.default_rng(2).standard_normal((1, 8, 8, 3)).astype(np.float32)
    assert_parity(model(x), ort_run(path, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1))


def test_a_mul_does_not_fold_into_a_conv_whose_values_another_node_reads():
    with pytest.raises(WeightFileError, match=r"'scale' \(Mul\): Mul by a constant only folds into a conv or dense "
                                              r"layer whose output it alone reads"):
        from_onnx_model(_scaled_conv_graph("relu"), source="scaled.onnx")
