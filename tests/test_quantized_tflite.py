"""The integer engine on the four real uint8 TFLite MobileNets, against LiteRT itself.

- every node's integers, by name, equal the tensors LiteRT's reference kernels
  (OpResolverType.BUILTIN_REF) compute, on one photo per model: a wrong zero point, multiplier,
  rounding or activation range shows at the first layer it touches;
- the output bytes equal the reference kernels' on every photo (all 115 for V1 0.25-128, the 15
  photos for the three bigger models; all 115 for them under the slow marker);
- top-1 equals LiteRT's default interpreter wherever that interpreter agrees with its own
  reference kernels on top-1 (its optimized kernels round differently, and on a few photos that
  changes their top-1: benchmarks/quantized_agreement.py measures by how much, docs/quantized.md
  reports it);
- the ends: model(x) is the dequantized output, dequantize=True (and `classify --dequantize`)
  gives the float engine, and intermediates come back as integers with scale and zero point.
LiteRT's outputs are computed here, in the test, from the same pixels.
"""

import sys

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

from benchmarks import quantized_agreement as qa  # noqa: E402

from npmobile.io import load  # noqa: E402
from npmobile.model import Model  # noqa: E402
from npmobile.qmodel import QTensor, QuantizedModel  # noqa: E402

SMALL = qa.MODELS[0]


@pytest.fixture(scope="module")
def images(assets):
    return qa.load_images(assets)


@pytest.fixture(scope="module")
def models(assets):
    return {name: load(assets / "models" / name) for name in qa.MODELS}


def _check_agreement(r):
    assert r["identical_to_ref"] == r["n"], qa.summary_line(r)
    # Where LiteRT's default interpreter keeps its reference kernels' top-1, so do we.
    same_in_litert = r["default"].argmax(1) == r["ref"].argmax(1)
    np.testing.assert_array_equal(r["ours"].argmax(1)[same_in_litert], r["default"].argmax(1)[same_in_litert])
    assert r["top1_as_default"] == r["n"] - r["default_top1_differs"]


@pytest.mark.parametrize("name", qa.MODELS)
def test_every_intermediate_equals_litert_reference_kernels(assets, images, models, name):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    model = models[name]
    pixels = qa.pixels_for([im for im in images if im[0] == "chelsea.png"], model.config.resolution)
    it = Interpreter(model_path=str(assets / "models" / name), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], pixels)
    it.invoke()
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    produced = {}  # node name (the first part of TFLite's fused name) -> the operator's output tensor
    for op in it._get_ops_details():
        produced.setdefault(names[int(op["outputs"][0])].split(";")[0], int(op["outputs"][0]))
    ours = model.run(pixels, intermediates=True)
    assert len(model.graph.nodes) >= 30
    for node in model.graph.nodes:
        theirs = it.get_tensor(produced[node.name])
        got = ours[node.name]
        assert isinstance(got, QTensor) and got.values.dtype == np.uint8
        np.testing.assert_array_equal(got.values, theirs.reshape(got.values.shape), err_msg=f"{name}: {node.name}")
        assert (got.scale, got.zero_point) == pytest.approx(it.get_tensor_details()[produced[node.name]]
                                                            ["quantization"])


def test_small_model_matches_litert_on_all_115_photos(assets, images):
    r = qa.compare(assets / "models" / SMALL, qa.pixels_for(images, 128))
    print("\n" + qa.summary_line(r))
    assert r["n"] == 115
    _check_agreement(r)


@pytest.mark.parametrize("name", qa.MODELS[1:])
def test_bigger_models_match_litert_on_the_photos(assets, images, name):
    photos = [im for im in images if im[2] is None]
    r = qa.compare(assets / "models" / name, qa.pixels_for(photos, int(name.split("_")[3])))
    assert r["n"] == 15
    _check_agreement(r)


@pytest.mark.slow
@pytest.mark.parametrize("name", qa.MODELS[1:])
def test_bigger_models_match_litert_on_all_115_photos(assets, images, name):
    r = qa.compare(assets / "models" / name, qa.pixels_for(images, int(name.split("_")[3])))
    print("\n" + qa.summary_line(r))
    assert r["n"] == 115
    _check_agreement(r)


def test_the_ends_and_the_float_path(assets, images, models):
    model = models[SMALL]
    assert isinstance(model, QuantizedModel) and model.input_dtype == np.uint8
    pixels = qa.pixels_for(images[:3], 128)
    q = model.run_integers(pixels)
    # a batch runs in parts of PLAN_BATCH images: each image comes out as it does alone
    np.testing.assert_array_equal(q, np.concatenate([model.run_integers(p[None]) for p in pixels]))
    import npmobile
    threads = npmobile.get_num_threads()
    try:  # and a batch split across two threads, each with its own buffers, too
        npmobile.set_num_threads(2)
        np.testing.assert_array_equal(model.run_integers(pixels), q)
    finally:
        npmobile.set_num_threads(threads)
    # model(x) takes the float preprocessing and returns the dequantized integers (scale 1/256)
    probs = model(model.preprocess(pixels))
    np.testing.assert_array_equal(probs, q.astype(np.float32) / 256)
    np.testing.assert_array_equal(model.run(pixels).values, q)
    import pickle  # a model travels to a worker process without its threads' buffers
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).run_integers(pixels), q)
    np.testing.assert_array_equal(model(model.preprocess(pixels), threads=1), probs)
    np.testing.assert_array_equal(model.run(pixels, oracle=True).values, q)  # the int64 oracles
    assert model.labels[0] == "background" and model.config.classes == 1001
    float_model = load(assets / "models" / SMALL, dequantize=True)
    assert isinstance(float_model, Model) and "softmax" in [n.op for n in float_model.graph.nodes]
    # the float engine approximates the same network: same top-1 on most images, not all
    assert (float_model(float_model.preprocess(pixels)).argmax(1) == q.argmax(1)).sum() >= 2


def test_classify_runs_the_integer_engine_and_dequantize_flag_the_float_one(assets, capsys):
    from npmobile.cli import main
    photo = str(assets / "photos" / "chelsea.png")
    weights = str(assets / "models" / SMALL)
    assert main(["classify", "--weights", weights, photo, "--top", "1", "--json"]) == 0
    integer = capsys.readouterr().out
    assert main(["classify", "--weights", weights, photo, "--top", "1", "--json", "--dequantize"]) == 0
    floating = capsys.readouterr().out
    import json
    p_int = json.loads(integer)[0]["predictions"][0]["probability"]
    p_float = json.loads(floating)[0]["predictions"][0]["probability"]
    assert p_int * 256 == pytest.approx(round(p_int * 256))  # a multiple of the output quantum 1/256
    assert p_float * 256 != pytest.approx(round(p_float * 256), abs=1e-4)  # the float softmax is not
    assert sys.modules["npmobile.qmodel"]  # the integer engine was the one loaded by default


@pytest.mark.parametrize("name", ["mobilenet_v2_1.0_224_quant.tflite", "mobilenetv2-12-int8.onnx"])
def test_summary_of_the_integer_graph_counts_what_the_float_graph_does(assets, name):
    # A quantized model's summary counts the float ops its integer ops compute: the same MACs,
    # weights and biases as the file loaded dequantized (zero points and multipliers are not
    # parameters); the step timings are the float engine's and say so.
    path = assets / "models" / name
    tables = {}
    for dequantize in (False, True):
        out = []
        load(path, dequantize=dequantize).summary(print_fn=out.append)
        tables[dequantize] = [line for line in out[0].splitlines() if line.startswith(("Total", "  weights"))]
    assert tables[False] == tables[True] and len(tables[False]) == 3, tables
    with pytest.raises(ValueError, match="dequantize=True"):
        load(path).summary(time=True)
