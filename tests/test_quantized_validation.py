"""Integer graphs are validated at load as float graphs are (issue 11): every integer op has its
entry in qvalidate.QOPS, and a bad attribute, tensor or type is one WeightFileError naming the
file, the node and the attribute, before anything runs."""

import numpy as np
import pytest

import npmobile
from npmobile.errors import WeightFileError
from npmobile.graph import Graph, Node
from npmobile.kernels.quantized import QKERNELS
from npmobile.qmodel import QuantizedModel
from npmobile.qvalidate import QOPS

SMALL = "mobilenet_v1_0.25_128_quant.tflite"


@pytest.fixture(scope="module")
def small(assets):
    return npmobile.load(assets / "models" / SMALL)


def test_every_integer_kernel_has_a_validation_entry():
    assert set(QOPS) == set(QKERNELS)


def _with(model, node_name, attrs=None, params=None, op=None, nodes=None):
    """The model's parts with one node's attrs (or params, or op) changed, as a reader would
    hand them over."""
    nodes = list(model.graph.nodes if nodes is None else nodes)
    i = next(i for i, n in enumerate(nodes) if n.name == node_name)
    nodes[i] = nodes[i]._replace(attrs={**nodes[i].attrs, **(attrs or {})}, op=op or nodes[i].op)
    graph = Graph(nodes, model.graph.input_shape, model.graph.config)
    return dict(graph=graph, params={**model.params, **(params or {})}, quant=model.quant,
                input_dtype=model.input_dtype, labels=model.labels, source="q.tflite")


def _refused(parts, match):
    with pytest.raises(WeightFileError, match=match):
        QuantizedModel(**parts)


@pytest.mark.parametrize("attrs, match", [
    ({"stride": 2**62 - 1}, r"q.tflite: node '.*Conv2d_0.*' \(qconv2d\): stride"),
    ({"x_zero": 300}, r"\(qconv2d\): x_zero: expected an integer -128..255"),
    ({"y_zero": -5}, r"\(qconv2d\): y_zero: expected integers 0..255 for uint8"),
    ({"clamp": (0, 300)}, r"\(qconv2d\): clamp"),
    ({"clamp": (0.5, 6)}, r"\(qconv2d\): clamp"),
    ({"pad": (9, 0, 0, 0)}, r"\(qconv2d\): pad"),
    ({"groups": 2}, r"\(qconv2d\): groups: not an attribute of qconv2d"),
])
def test_a_bad_attribute_is_refused_naming_file_node_and_attribute(small, attrs, match):
    _refused(_with(small, small.graph.nodes[0].name, attrs), match)


def test_bad_tensors_and_types_are_refused(small):
    first = small.graph.nodes[0].name
    w = small.params[f"{first}.w"]
    _refused(_with(small, first, params={f"{first}.w": w.astype(np.int8)}), rf"{first}.w: expected uint8, found int8")
    _refused(_with(small, first, params={f"{first}.multiplier": -small.params[f"{first}.multiplier"]}),
             rf"{first}.multiplier: expected values 0..")
    _refused(_with(small, first, params={f"{first}.shift": np.full(8, 40, np.int32)}), rf"{first}.shift: expected")
    # a uint8 weight zero point below 0 (in -128..255, outside uint8): refused at load, not at the first call
    _refused(_with(small, first, params={f"{first}.w_zero": np.full(8, -3, np.int32)}),
             rf"{first}.w_zero: expected values 0..255 for uint8 weights, found -3..-3")
    _refused(_with(small, first, params={f"{first}.b": small.params[f"{first}.b"].astype(np.float32)}),
             rf"{first}.b: expected int32, found float32")
    _refused(_with(small, first, op="qfancy_conv"), r"\(qfancy_conv\): op: unknown op")
    add = Node("qadd", "extra", ("input", "input"), {"a_zero": 0, "b_zero": 0, "y_zero": 0, "a_multiplier": 1,
                                                      "a_shift": 0, "b_multiplier": 1, "b_shift": 0,
                                                      "y_multiplier": 1, "y_shift": 0, "left_shift": 40},
               {}, (128, 128, 3))
    _refused(_with(small, first, nodes=[add] + list(small.graph.nodes)), r"'extra' \(qadd\): left_shift")
    quantize = Node("quantize", "q", ("input",), {"scale": 0.1, "zero_point": 0, "dtype": "int16"}, {}, (128, 128, 3))
    _refused(_with(small, first, nodes=[quantize] + list(small.graph.nodes)), r"'q' \(quantize\): dtype")
    nodes = list(small.graph.nodes)  # a QUANTIZE of the uint8 input: it takes floats
    nodes[0] = nodes[0]._replace(inputs=("q",))
    quantize = quantize._replace(attrs={"scale": 0.1, "zero_point": 0, "dtype": "uint8"})
    _refused(_with(small, first, nodes=[quantize] + nodes), r"'q' \(quantize\): inputs: expected float32")


def test_a_dead_node_is_refused(small):
    nodes = list(small.graph.nodes)
    dead = nodes[0]._replace(name="dead")
    _refused(_with(small, nodes[0].name, nodes=[dead] + nodes), r"'dead' compute values that no later node reads")
