"""The integer engine on the 8-bit TFLite files of the real-world corpus (scripts/make_corpus.py),
against LiteRT itself: int8 files with int8, uint8 (QUANTIZE at both ends) or float input and
output (QUANTIZE and DEQUANTIZE), and the legacy uint8 converter's files; MEAN (with its own
output scale), FULLY_CONNECTED (per-channel int8 and per-tensor uint8 weights) and a trailing
QUANTIZE to a new scale.

As for the four asset files (test_quantized_tflite.py): every file loads as a QuantizedModel;
every node's values equal LiteRT's reference kernels' (OpResolverType.BUILTIN_REF), by name, on
one photo; the output tensor's bytes equal theirs on the photos (all 115 for the V1 0.25-128
files, 15 for the V2 1.0-224 ones and all 115 under the slow marker); top-1 equals LiteRT's default
interpreter wherever that interpreter agrees with its own reference kernels.
"""


import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

from benchmarks import quantized_agreement as qa  # noqa: E402

import npmobile  # noqa: E402
from npmobile.qmodel import QTensor, QuantizedModel  # noqa: E402

SMALL = [name for name in qa.CORPUS if name.startswith("v1_025_128")]
LARGE = [name for name in qa.CORPUS if name not in SMALL]


def _check_agreement(r, n):
    assert r["n"] == n
    assert r["identical_to_ref"] == r["n"], qa.summary_line(r)
    same_in_litert = r["default"].argmax(1) == r["ref"].argmax(1)
    np.testing.assert_array_equal(r["ours"].argmax(1)[same_in_litert], r["default"].argmax(1)[same_in_litert])


@pytest.mark.parametrize("name", qa.CORPUS)
def test_every_node_equals_litert_reference_kernels(corpus, name):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    path = corpus[0] / name
    model = npmobile.load(path)
    assert isinstance(model, QuantizedModel), f"{name} fell back to the float engine"
    x = qa.corpus_inputs(model, 1)
    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    produced = {}
    for op in it._get_ops_details():
        produced.setdefault(names[int(op["outputs"][0])].split(";")[0], int(op["outputs"][0]))
    ours = model.run(x, intermediates=True)
    for node in model.graph.nodes:
        got = ours[node.name]
        values = got.values if isinstance(got, QTensor) else got
        assert values.dtype == model.dtypes[node.name]
        theirs = it.get_tensor(produced[node.name])
        assert theirs.dtype == values.dtype, (node.name, theirs.dtype, values.dtype)
        np.testing.assert_array_equal(values, theirs.reshape(values.shape), err_msg=f"{name}: {node.name}")


@pytest.mark.parametrize("name", SMALL)
def test_small_files_match_litert_on_all_115_photos(corpus, name):
    path = corpus[0] / name
    r = qa.compare(path, qa.corpus_inputs(npmobile.load(path)))
    print("\n" + qa.summary_line(r))
    _check_agreement(r, 115)


@pytest.mark.parametrize("name, photos", [(name, 15) for name in LARGE] + [
    pytest.param(name, 115, marks=pytest.mark.slow) for name in LARGE])
def test_large_files_match_litert_on_the_photos(corpus, name, photos):
    path = corpus[0] / name
    r = qa.compare(path, qa.corpus_inputs(npmobile.load(path), photos))
    print("\n" + qa.summary_line(r))
    _check_agreement(r, photos)


def test_float_ends_run_in_the_graph(corpus):
    # a file with float input and output: the graph quantizes its input and dequantizes its
    # output itself (QUANTIZE, DEQUANTIZE), so model(x) is the file's own float output
    model = npmobile.load(corpus[0] / "v1_025_128_avgpool_linear12_int8-float-io.tflite")
    assert model.input_dtype == np.float32 and model.quant["input"] is None
    assert [model.graph.nodes[0].op, model.graph.nodes[-1].op] == ["quantize", "dequantize"]
    x = qa.corpus_inputs(model, 3)
    y = model(x)
    assert y.dtype == np.float32 and y.shape == (3, 12)
    np.testing.assert_array_equal(y, model.run(x, oracle=True))
    q = model.run(x, intermediates=True)
    last = model.graph.nodes[-2].name  # the integers before DEQUANTIZE
    np.testing.assert_array_equal(q[last].dequantize(), y)
