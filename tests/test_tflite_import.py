"""The TFLite importer on the real quantized TF-slim MobileNets in ../shared/assets/models.

No TensorFlow is installed to write new .tflite files, so the real files are the subjects:
- structure: the graph the importer builds (ops, pads from TF's SAME rule, dense head, labels);
- the first layer against ai-edge-litert's own (dequantized) tensor: the same pixels, weights
  and padding give the same values up to the runtime's output rounding (<= 1 quantization step).
  A wrong pad, layout or dequantization is off by many steps;
- refusals, on copies in tmp_path with bytes patched: an op the engine lacks (opcode byte), a
  graph that is no longer a chain (an operator's input index), wrong magic, truncated, corrupted.
Whole-network agreement with the runtime on real photos is in test_real_models.py.
"""

import shutil
import struct
import sys

import numpy as np
import pytest

tflite = pytest.importorskip("tflite")

from npmobile.graph import pad_same  # noqa: E402
import npmobile  # noqa: E402
from npmobile.io import load  # noqa: E402
from npmobile.io.tflite import load_tflite  # noqa: E402
from npmobile.weights import WeightFileError  # noqa: E402

MODELS = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite",
          "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"]
SMALL = MODELS[0]


@pytest.fixture(scope="module")
def models(assets):
    return {name: load(assets / "models" / name, dequantize=True) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_structure(models, name):
    model = models[name]
    ops = [n.op for n in model.graph.nodes]
    res = model.config.resolution
    assert res == int(name.split("_")[3]) and model.graph.input_shape == (res, res, 3)
    assert ops[0] == "conv2d" and ops[-3:] == ["global_avg_pool", "dense", "softmax"]
    assert model.graph.nodes[0].attrs["pad"] == pad_same(res, 3, 2) + pad_same(res, 3, 2)
    assert model.graph.nodes[-2].params["w"][1] == 1001
    if "v1" in name:
        assert ops.count("depthwise_conv2d") == 13 and ops.count("pointwise_conv2d") == 13 and "add" not in ops
    else:
        assert ops.count("depthwise_conv2d") == 17 and ops.count("add") == 10
    # RELU6 after every conv but the logits and V2's 17 linear projections: V1 1 + 13 + 13, V2 1 + 17 + 16 + 1.
    assert ops.count("clamp") == (27 if "v1" in name else 35)
    assert model.config.convention == "tfslim" and model.labels[0] == "background"


@pytest.mark.parametrize("name", MODELS)
def test_first_layer_matches_the_runtime_within_one_quantization_step(assets, models, name):
    from ai_edge_litert.interpreter import Interpreter
    model = models[name]
    res = model.config.resolution
    pixels = np.random.default_rng(0).integers(0, 256, (1, res, res, 3), dtype=np.uint8)
    it = Interpreter(model_path=str(assets / "models" / name), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], pixels)
    it.invoke()
    first_out = next(t for t in it.get_tensor_details() if t["shape"].tolist() == [1, res // 2, res // 2,
                                                                                      model.graph.nodes[0].shape[-1]])
    scale, zero = first_out["quantization"]
    ref = scale * (it.get_tensor(first_out["index"]).astype(np.float64) - zero)
    ours = model.run(model.preprocess(pixels), oracle=True, intermediates=True)[model.graph.nodes[1].name]
    assert model.graph.nodes[1].op == "clamp"
    err = np.abs(ours - ref).max()
    assert err <= 1.0 * scale + 1e-6, (err, scale)


def test_native_round_trip(models, tmp_path):
    model = models[SMALL]
    npmobile.save(tmp_path / "m.npz", model)
    again = npmobile.load(tmp_path / "m.npz")
    x = model.preprocess(np.full((1, 128, 128, 3), 77, np.uint8))
    np.testing.assert_array_equal(again(x), model(x))
    assert again.labels == model.labels


# --- refusals, on patched copies -------------------------------------------------------------

def _copy(assets, tmp_path, name=SMALL):
    path = tmp_path / name
    shutil.copyfile(assets / "models" / name, path)
    path.chmod(0o644)
    return path


def _parse(path):
    buf = path.read_bytes()
    return buf, tflite.Model.GetRootAsModel(buf, 0)


def _patch(path, pos, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, pos, value)
    path.write_bytes(bytes(data))


def _set_opcode(path, old_code, new_code):
    """Rewrite the builtin code of the operator-code entry `old_code` (both of its fields)."""
    _, m = _parse(path)
    for i in range(m.OperatorCodesLength()):
        code = m.OperatorCodes(i)
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == old_code:
            tab = code._tab
            if tab.Offset(4):  # deprecated_builtin_code: int8
                _patch(path, tab.Pos + tab.Offset(4), "<b", new_code)
            if tab.Offset(10):  # builtin_code: int32
                _patch(path, tab.Pos + tab.Offset(10), "<i", new_code)
            return
    raise AssertionError(f"no opcode {old_code}")


@pytest.mark.parametrize("op", ["AVERAGE_POOL_2D", "CONV_2D"])
def test_op_the_engine_lacks_is_refused_listing_every_node(assets, tmp_path, models, op):
    path = _copy(assets, tmp_path)
    _set_opcode(path, getattr(tflite.BuiltinOperator, op), tflite.BuiltinOperator.LOCAL_RESPONSE_NORMALIZATION)
    with pytest.raises(WeightFileError) as e:
        load(path)
    msg = str(e.value)
    assert str(path) in msg and "LOCAL_RESPONSE_NORMALIZATION" in msg
    # every node of that op is listed, in one error
    expected = 1 if op == "AVERAGE_POOL_2D" else sum(
        n.op in ("conv2d", "pointwise_conv2d", "dense") for n in models[SMALL].graph.nodes)
    assert msg.count("(LOCAL_RESPONSE_NORMALIZATION)") == expected


def test_graph_that_is_not_a_chain_is_refused_naming_the_node(assets, tmp_path):
    path = _copy(assets, tmp_path)
    _, m = _parse(path)
    g = m.Subgraphs(0)
    ops = [g.Operators(i) for i in range(g.OperatorsLength())]
    pool = next(o for o in ops if m.OperatorCodes(o.OpcodeIndex()).DeprecatedBuiltinCode()
                == tflite.BuiltinOperator.AVERAGE_POOL_2D)
    softmax = ops[-1]
    # The softmax now reads the pool's output: the logits layer is left computing for nobody.
    _patch(path, softmax._tab.Vector(softmax._tab.Offset(6)), "<i", int(pool.Outputs(0)))
    with pytest.raises(WeightFileError, match=r"Conv2d_1c_1x1.*neither the output nor any later node") as e:
        load(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "magic", "root_offset", "empty"])
def test_bad_files_give_a_clear_error(assets, tmp_path, damage):
    path = _copy(assets, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "magic":
        data[4:8] = b"ONNX"
    elif damage == "root_offset":
        data[0:4] = struct.pack("<I", 0x7FFFFFF0)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError, match=str(path)):
        load(path)


def test_missing_tflite_package_gives_an_import_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tflite", None)
    with pytest.raises(ImportError, match=r"pip install 'npmobile\[tflite\]'"):
        load_tflite(tmp_path / "any.tflite")
