"""npmobile.cost against every published MobileNet cost figure, each under its source's convention.

docs/cost.md explains each convention and each published figure that is inconsistent with its
own architecture. The rule for a printed figure: it must equal our count rounded the way the
source rounds (the paper prints 569: |ours - 569e6| < 0.5e6). Where a source contradicts itself,
the test pins the explanation (e.g. the number it would have printed) instead of loosening the
tolerance.
"""

import json
import math

import numpy as np
import pytest

import npmobile
from npmobile import Model, cost, engine, mobilenet_v1, mobilenet_v2
from npmobile.cli import main
from npmobile.graph import Builder, Graph, Node, pad_symmetric
from npmobile.kernels import KERNELS
from npmobile.architectures import random_params

M = 1e6


def _round(x, digits=0):
    """Round half up, as a table printed by hand does (Python's round() rounds half to even)."""
    q = 10 ** digits
    return math.floor(x * q + 0.5) / q


# --- counting: every rule checked against the kernel it counts ------------------------------

@pytest.mark.parametrize("op, attrs, x_shape, w_shape", [
    ("conv2d", {"stride": 1, "pad": (0, 0, 0, 0)}, (9, 7, 5), (3, 3, 5, 6)),
    ("conv2d", {"stride": 2, "pad": (0, 0, 0, 0)}, (11, 9, 4), (5, 3, 4, 3)),
    ("depthwise_conv2d", {"stride": 1, "pad": (0, 0, 0, 0)}, (8, 9, 6), (3, 3, 6)),
    ("depthwise_conv2d", {"stride": 2, "pad": (0, 0, 0, 0)}, (9, 9, 4), (7, 7, 8)),  # multiplier 2
    ("pointwise_conv2d", {}, (5, 6, 7), (7, 9)),
    ("dense", {}, (12,), (12, 5)),
])
def test_macs_equal_the_products_the_kernel_computes(op, attrs, x_shape, w_shape):
    # With x = 1 and w = 1 every output value is the number of products summed into it, so the
    # sum of the output is the number of multiply-accumulates the kernel performed.
    x = np.ones((1,) + x_shape)
    y = KERNELS[op].ref(x, np.ones(w_shape), **attrs)
    node = Node(op, "n", ("input",), attrs, {"w": w_shape}, y.shape[1:])
    assert cost.node_macs(node, x_shape) == int(round(y.sum()))


def test_padding_taps_are_counted_as_the_papers_do():
    # The papers count D_K^2 products for every output pixel, including taps that land in the
    # zero padding (the kernels skip those): a "same" 3x3 conv on 4x4 counts 16 * 9 per channel.
    g = Builder((4, 4, 2))
    g.conv2d("c", 3, 3, 1, pad_symmetric)
    c = cost.count(Graph(g.nodes, (4, 4, 2)))
    assert c.macs == 4 * 4 * 3 * 3 * 2 * 3


def test_mobilenet_paper_table3_one_layer():
    """arXiv 1704.04861 Table 3: the 14x14x512 layer, 3x3 kernel, 512 -> 512 channels."""
    def layer(c, d_f, separable):
        g = Builder((d_f, d_f, c))
        if separable:
            g.depthwise("dw", 3, 1, pad_symmetric)
            g.pointwise("pw", c)
        else:
            g.conv2d("conv", c, 3, 1, pad_symmetric)
        return cost.count(Graph(g.nodes, (d_f, d_f, c)))

    rows = [  # (published M mult-adds, published M params, printed digits, our layer)
        (462, 2.36, (0, 2), layer(512, 14, False)),
        (52.3, 0.27, (1, 2), layer(512, 14, True)),
        (29.6, 0.15, (1, 2), layer(384, 14, True)),     # alpha = 0.75
        (15.1, 0.15, (1, 2), layer(384, 10, True)),     # rho = 0.714: 14 -> 10
    ]
    for macs, params, (dm, dp), c in rows:
        assert _round(c.macs / M, dm) == macs
        assert _round(c.params() / M, dp) == params


def test_fused_graph_counts_the_same_macs():
    # The fast engine runs the fused graph: BN folded into the conv bias, ReLU6 into the kernel.
    # Its MACs are the same; its parameters are the weights plus one bias per folded BN.
    for graph in (mobilenet_v1(0.25, 128), mobilenet_v2(0.35, 96)):
        fused, _ = engine.fuse(graph, random_params(graph))
        a, b = cost.count(graph), cost.count(fused)
        assert b.macs == a.macs
        assert b.params("weights") == a.params("weights")
        assert b.params("biases") == a.params("biases") + a.params("bn_shift")
        assert b.params("bn_scale", "bn_shift", "bn_stats") == 0


def test_bad_graphs_are_refused_with_the_node_named():
    node = Node("pointwise_conv2d", "pw", ("input",), {}, {"w": (5, 4)}, (3, 3, 4))
    with pytest.raises(ValueError, match=r"'pw'.*\(5, 4\).*\(3, 3, 6\)"):
        cost.count(Graph([node], (3, 3, 6)))
    node = Node("dense", "fc", ("input",), {}, {"w": (6, 2), "kernel_scale": (2,)}, (2,))
    with pytest.raises(ValueError, match="'fc'.*kernel_scale"):
        cost.count(Graph([node], (6,)))
    with pytest.raises(ValueError, match="parameter kinds"):
        cost.count(mobilenet_v1(0.25, 128)).params("bn")


# --- MobileNetV1 paper (Howard et al. 2017, arXiv 1704.04861) ------------------------------
# Convention: 1000 classes; parameters are conv and FC weights (+ FC bias, which does not change
# a printed digit); no batch-norm tensors. Read from the paper's text via the search tool.

V1_PAPER_TABLE6 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}  # at 224
V1_PAPER_TABLE7 = {224: 569, 192: 418, 160: 290, 128: 186}                               # at 1.0, 4.2M


@pytest.mark.parametrize("alpha", sorted(V1_PAPER_TABLE6))
def test_v1_paper_table6_width_multiplier(alpha):
    macs, params = V1_PAPER_TABLE6[alpha]
    c = cost.count(mobilenet_v1(alpha, 224, 1000))
    assert abs(c.macs - macs * M) < 0.5 * M
    assert abs(c.params("weights", "biases") - params * M) < 0.05 * M


@pytest.mark.parametrize("resolution", sorted(V1_PAPER_TABLE7))
def test_v1_paper_table7_resolution(resolution):
    c = cost.count(mobilenet_v1(1.0, resolution, 1000))
    assert abs(c.params("weights", "biases") - 4.2 * M) < 0.05 * M
    if resolution != 160:
        assert abs(c.macs - V1_PAPER_TABLE7[resolution] * M) < 0.5 * M
    else:
        # The count is 290.68M (TF-slim prints 291). The paper's 290 is the 224 total scaled by
        # rho^2 = (160/224)^2, FC layer included, though the FC layer does not shrink with the image.
        assert _round(c.macs / M) == 291
        full = cost.count(mobilenet_v1(1.0, 224, 1000)).macs
        assert _round(full * (160 / 224) ** 2 / M) == 290


def test_v1_paper_table9_half_width_160():
    # Table 9: 0.50 MobileNet-160, 76M mult-adds, 1.32M params. Same rho^2 shortcut as Table 7:
    # the count is 76.52M (TF-slim prints 77); 149.50M * (160/224)^2 = 76.27M prints 76.
    c = cost.count(mobilenet_v1(0.5, 160, 1000))
    assert _round(c.params("weights", "biases") / M, 2) == 1.32
    assert _round(c.macs / M) == 77
    assert _round(cost.count(mobilenet_v1(0.5, 224, 1000)).macs * (160 / 224) ** 2 / M) == 76


def test_v1_paper_table2_share_by_layer_type():
    """Table 2, 'Resource per layer type': % of mult-adds and % of parameters (weights only)."""
    published = {  # op: (% mult-adds, % params)
        "pointwise_conv2d": (94.86, 74.59),  # Conv 1x1
        "depthwise_conv2d": (3.06, 1.06),    # Conv DW 3x3
        "conv2d": (1.19, 0.02),              # Conv 3x3
        "dense": (0.18, 24.33),              # Fully Connected
    }
    c = cost.count(mobilenet_v1(1.0, 224, 1000))
    weights = {op: 0 for op in published}
    for layer in c.layers:
        if layer.op in weights:
            weights[layer.op] += layer.params["weights"]
    for op, (macs_pct, params_pct) in published.items():
        assert _round(100 * weights[op] / c.params("weights"), 2) == params_pct
        ours = _round(100 * c.by_op()[op][0] / c.macs, 2)
        if op != "conv2d":
            assert ours == macs_pct
        else:
            # The printed 1.19 is 1.91 with two digits swapped: the count is 1.91%, and only
            # 1.91 makes the column add up to 100% (as printed it sums to 99.29%).
            assert ours == 1.91


# --- MobileNetV2 paper (Sandler et al. 2018, arXiv 1801.04381), Table 4 ----------------------

def test_v2_paper_300m_3_4m():
    # "300M" and "3.4M" are the count truncated, not rounded (300.77M, 3.47M with the FC bias);
    # the same truncation as TF-slim's V2 table below.
    c = cost.count(mobilenet_v2(1.0, 224, 1000))
    assert math.floor(c.macs / M) == 300
    assert math.floor(c.params("weights", "biases") / M * 10) / 10 == 3.4


# --- TF-slim model tables (tensorflow/models, research/slim/nets) ----------------------------
# Convention "tfslim": 1001 classes (background first), TensorFlow "SAME" padding.

# research/slim/nets/mobilenet_v1.md, "Pre-trained Models": (alpha, resolution): (M MACs, M params)
TFSLIM_V1 = {
    (1.0, 224): (569, 4.24), (1.0, 192): (418, 4.24), (1.0, 160): (291, 4.24), (1.0, 128): (186, 4.24),
    (0.75, 224): (317, 2.59), (0.75, 192): (233, 2.59), (0.75, 160): (162, 2.59), (0.75, 128): (104, 2.59),
    (0.5, 224): (150, 1.34), (0.5, 192): (110, 1.34), (0.5, 160): (77, 1.34), (0.5, 128): (49, 1.34),
    (0.25, 224): (41, 0.47), (0.25, 192): (34, 0.47), (0.25, 160): (21, 0.47), (0.25, 128): (14, 0.47),
}

# research/slim/nets/mobilenet/README.md, "Mobilenet V2 Imagenet Checkpoints".
TFSLIM_V2 = {
    (1.4, 224): (582, 6.06), (1.3, 224): (509, 5.34),
    (1.0, 224): (300, 3.47), (1.0, 192): (221, 3.47), (1.0, 160): (154, 3.47), (1.0, 128): (99, 3.47),
    (1.0, 96): (56, 3.47),
    (0.75, 224): (209, 2.61), (0.75, 192): (153, 2.61), (0.75, 160): (107, 2.61), (0.75, 128): (69, 2.61),
    (0.75, 96): (39, 2.61),
    (0.5, 224): (97, 1.95), (0.5, 192): (71, 1.95), (0.5, 160): (50, 1.95), (0.5, 128): (32, 1.95),
    (0.5, 96): (18, 1.95),
    (0.35, 224): (59, 1.66), (0.35, 192): (43, 1.66), (0.35, 160): (30, 1.66), (0.35, 128): (20, 1.66),
    (0.35, 96): (11, 1.66),
}


@pytest.mark.parametrize("alpha, resolution", sorted(TFSLIM_V1))
def test_tfslim_v1_table(alpha, resolution):
    macs, params = TFSLIM_V1[(alpha, resolution)]
    c = cost.count(mobilenet_v1(alpha, resolution, convention="tfslim"))
    # Parameters: weights, the logits bias, and three vectors per batch norm (beta, moving mean,
    # moving variance: no gamma). No other subset of our split prints all four values.
    assert _round(c.params("weights", "biases", "bn_shift", "bn_stats") / M, 2) == params
    if alpha == 0.75:
        # All four 0.75 rows are the count without the first (standard) convolution.
        first = c.layers[0]
        assert first.op == "conv2d"
        assert _round((c.macs - first.macs) / M) == macs
        assert _round(c.macs / M) != macs
    elif (alpha, resolution) == (0.5, 224):
        # 149.498M: the paper's Table 6 prints 149; this table prints 150 (0.5M off).
        assert _round(c.macs / M) == 149 and abs(c.macs - macs * M) < 1 * M
    elif (alpha, resolution) == (0.25, 192):
        # A typo: the count is 30.2M; 34 breaks the table's own rho^2 scaling (41 * (192/224)^2 = 30.1).
        assert _round(c.macs / M) == 30 and _round(41 * (192 / 224) ** 2) == 30
    else:
        assert abs(c.macs - macs * M) < 0.5 * M


@pytest.mark.parametrize("alpha, resolution", sorted(TFSLIM_V2))
def test_tfslim_v2_table(alpha, resolution):
    macs, params = TFSLIM_V2[(alpha, resolution)]
    c = cost.count(mobilenet_v2(alpha, resolution, convention="tfslim"))
    # Parameters: weights and the logits bias, no batch-norm tensors. MACs: truncated to whole
    # millions (all 22 rows; rounding would print one more in 8 of them, e.g. 300.78 -> 301).
    assert _round(c.params("weights", "biases") / M, 2) == params
    assert math.floor(c.macs / M) == macs


# --- torchvision ----------------------------------------------------------------------------

TORCHVISION_V2_NUM_PARAMS = 3_504_872  # torchvision/models/mobilenetv2.py, _COMMON_META["num_params"]
TORCHVISION_V2_OPS = 0.301             # ..., IMAGENET1K_V1 meta["_ops"], listed as "GFLOPS" in its docs


def test_torchvision_mobilenet_v2():
    tv = pytest.importorskip("torchvision")
    c = cost.count(mobilenet_v2(convention="torch"))
    # torchvision's parameters(): weights, classifier bias, BN gamma and beta; the running
    # statistics are buffers. Its "GFLOPS" column is multiply-adds in billions (0.301 = 300.8M).
    trainable = c.params("weights", "biases", "bn_scale", "bn_shift")
    meta = tv.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta
    assert meta["num_params"] == TORCHVISION_V2_NUM_PARAMS == trainable
    assert meta["_ops"] == TORCHVISION_V2_OPS == _round(c.macs / 1e9, 3)
    net = tv.models.mobilenet_v2(weights=None)
    assert sum(p.numel() for p in net.parameters()) == trainable
    stats = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert stats == c.params("bn_stats")


# --- Keras count_params(): every tensor, BN moving statistics as non-trainable ---------------

@pytest.mark.parametrize("arch, alpha", [("v1", 1.0), ("v1", 0.25), ("v2", 1.0), ("v2", 0.35), ("v2", 1.4)])
def test_keras_count_params(arch, alpha, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    build = keras.applications.MobileNet if arch == "v1" else keras.applications.MobileNetV2
    net = build(alpha=alpha, weights=None)
    ours = cost.count((mobilenet_v1 if arch == "v1" else mobilenet_v2)(alpha, convention="keras"))
    assert net.count_params() == ours.params()
    non_trainable = sum(int(np.prod(w.shape)) for w in net.non_trainable_weights)
    assert non_trainable == ours.params("bn_stats")


@pytest.mark.slow
@pytest.mark.parametrize("arch, alpha", [("v1", 0.75), ("v1", 0.5)] + [("v2", a) for a in (0.5, 0.75, 1.3)])
def test_keras_count_params_more_alphas(arch, alpha, monkeypatch):
    test_keras_count_params(arch, alpha, monkeypatch)


# --- npmobile summary -------------------------------------------------------------------------

def test_summary_json_for_flags(tmp_path, capsys):
    out = tmp_path / "v1.json"
    assert main(["summary", "--arch", "mobilenet_v1", "--alpha", "1.0", "--resolution", "224",
                 "--classes", "1000", "--json", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"macs", "params", "layers"} <= set(data)
    assert abs(data["macs"] - 569 * M) < 0.5 * M
    assert data["params"] == sum(layer["params"] for layer in data["layers"])
    assert data["macs"] == sum(layer["macs"] for layer in data["layers"])
    assert data["layers"][0] == {"name": "conv1", "op": "conv2d", "input_shape": [224, 224, 3],
                                 "output_shape": [112, 112, 32], "macs": 112 * 112 * 27 * 32,
                                 "params": 864, "params_by_kind": {"weights": 864, "biases": 0, "bn_scale": 0,
                                                                   "bn_shift": 0, "bn_stats": 0}}
    assert main(["summary", "--arch", "mobilenet_v2", "--convention", "torch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] - data["params_by_kind"]["bn_stats"] == TORCHVISION_V2_NUM_PARAMS


def test_summary_table_for_a_weight_file(tmp_path, capsys):
    graph = mobilenet_v2(0.35, 96)
    path = tmp_path / "m.npz"
    npmobile.save(path, Model(graph, random_params(graph)))
    assert main(["summary", str(path)]) == 0
    text = capsys.readouterr().out
    c = cost.count(graph)
    assert f"Total MACs: {c.macs:,}" in text and f"Total params: {c.params():,}" in text
    assert "block_16_project (pointwise_conv2d)" in text
    assert main(["summary", str(path), "--alpha", "0.5"]) == 1
    assert "not both" in capsys.readouterr().err


# --- real files: an imported graph is counted as it is, and counts the same MACs -------------

@pytest.mark.parametrize("name, built", [
    ("mobilenetv2-12-int8.onnx", lambda: mobilenet_v2(1.0, 224, 1000)),
    ("mobilenet_v2_1.0_224_quant.tflite", lambda: mobilenet_v2(1.0, 224, convention="tfslim")),
    ("mobilenet_v1_0.25_224.h5", lambda: mobilenet_v1(0.25, 224, 1000)),
])
def test_imported_real_models_count_like_the_built_graph(assets, name, built):
    from npmobile import load
    imported, ours = cost.count(load(assets / "models" / name, dequantize=True).graph), cost.count(built())
    assert imported.macs == ours.macs
    assert imported.params("weights") == ours.params("weights")
    # A file with BN folded in (ONNX, TFLite) carries one bias per folded BN instead.
    assert imported.params() in (ours.params(), ours.params("weights", "biases", "bn_shift"))
