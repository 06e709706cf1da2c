"""The config: one frozen record, one field for what the output is, readable from old files."""

import dataclasses
import json

import numpy as np
import pytest

import npmobile
from npmobile.config import Config
from npmobile.data import DIGITS_MODEL
from npmobile.graph import Graph
from npmobile.architectures import random_params
from npmobile.weights import META_KEY


@pytest.mark.parametrize("convention,include_top,output", [
    ("keras", True, "probabilities"), ("tfslim", True, "probabilities"), ("torch", True, "logits"),
    ("keras", False, "features")])
def test_output_says_what_the_last_node_computes(convention, include_top, output):
    graph = npmobile.mobilenet_v2(0.35, 32, include_top=include_top, pooling="avg", convention=convention)
    assert graph.config.output == output
    assert (graph.nodes[-1].op == "softmax") == (output == "probabilities")
    assert npmobile.mobilenet_v1(0.25, 32, convention="keras", output="logits").nodes[-1].op == "dense"


def test_a_graph_whose_last_node_contradicts_its_output_is_refused():
    graph = npmobile.mobilenet_v1(0.25, 32, classes=3)
    with pytest.raises(ValueError, match="config.output is 'logits' but the graph's last node is 'softmax'"):
        Graph(graph.nodes, graph.input_shape, graph.config.replace(output="logits"))
    with pytest.raises(ValueError, match="config.output is 'probabilities'"):
        Graph(graph.nodes[:-1], graph.input_shape, graph.config)


def test_config_is_frozen_and_round_trips_through_the_native_file(tmp_path):
    graph = npmobile.mobilenet_v2(0.35, 32, classes=3, convention="torch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.config.resolution = 64
    npmobile.save(tmp_path / "m.npz", npmobile.Model(graph, random_params(graph)))
    again = npmobile.load(tmp_path / "m.npz")
    assert again.config == graph.config and again.config.output == "logits"
    with np.load(tmp_path / "m.npz") as f:
        stored = json.loads(f[META_KEY].tobytes())["config"]
    assert "eps" not in stored and "softmax" not in stored and stored["output"] == "logits"
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        Config.from_json({**stored, "colour": 1})


def test_the_bundled_file_written_before_the_output_field_still_reads():
    """npmobile/data/digits_mobilenet.npz was written with the old dict config (eps, include_top,
    no output): it loads, with output read off its softmax and each BN eps on its node."""
    with np.load(DIGITS_MODEL) as f:
        stored = json.loads(f[META_KEY].tobytes())["config"]
    model = npmobile.load(DIGITS_MODEL)
    if "output" not in stored:  # the file predates the field (if it is ever regenerated, this part has done its job)
        assert "eps" in stored and "include_top" in stored
    assert model.config.output == "probabilities" and model.config.preprocess.crop == 1.0
    assert model.graph.node("conv1_bn").attrs["eps"] == 1e-3
