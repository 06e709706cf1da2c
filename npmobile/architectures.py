"""MobileNetV1 and MobileNetV2 as graphs, expanded from the papers' tables.

Node names follow Keras' layer names (conv_dw_3_bn, block_5_expand, ...), whatever the
convention, so a layer can be found by the name a Keras user knows; the torchvision importer maps
its state_dict keys onto them.

Each framework that publishes MobileNets made a few choices the papers leave open. They are
fixed here, once, when a graph is built (DESIGN.md: never guessed at run time):

| convention | padding of stride-2 convs                      | BN eps | classes | head     |
|------------|------------------------------------------------|--------|---------|----------|
| "keras"    | first conv "SAME", depthwise bottom/right only | 1e-3   | 1000    | softmax  |
| "torch"    | k // 2 on every side                           | 1e-5   | 1000    | logits   |
| "tfslim"   | TensorFlow "SAME" everywhere                   | 1e-3   | 1001    | softmax  |

("SAME" puts the odd pixel of padding after the image: for an even side and a stride-2 3x3
convolution that is (0, 1), the same as Keras' ZeroPadding2D(((0, 1), (0, 1))).)
"""

import numbers

from .config import Config, Preprocess
from .graph import Builder, Graph, pad_bottom_right, pad_correct, pad_same, pad_symmetric

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Per convention: BN epsilon, classes, what the classifier outputs (Keras and TF-slim end in
# softmax, torchvision in logits), and the preprocessing: input = (pixel - mean) / std with pixels
# in 0..255, after keeping the central 0.875 (torchvision: 224 of 256; TF-slim: 0.875).
CONVENTIONS = {
    "keras": dict(eps=1e-3, classes=1000, output="probabilities", preprocess=Preprocess((127.5,) * 3, (127.5,) * 3)),
    "torch": dict(eps=1e-5, classes=1000, output="logits", preprocess=Preprocess(IMAGENET_MEAN, IMAGENET_STD)),
    "tfslim": dict(eps=1e-3, classes=1001, output="probabilities", preprocess=Preprocess((127.5,) * 3, (127.5,) * 3)),
}

# The width multipliers Keras, TF-slim and torchvision publish ImageNet weights for.
PUBLISHED_ALPHAS = {"mobilenet_v1": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)}

# Stride-2 padding per convention: (first conv, depthwise in V1, depthwise in V2).
_STRIDE2_PADS = {
    "keras": (pad_same, pad_bottom_right, pad_correct),
    "torch": (pad_symmetric, pad_symmetric, pad_symmetric),
    "tfslim": (pad_same, pad_same, pad_same),
}

# MobileNetV1, Table 1: (pointwise output channels, depthwise stride) of the 13 separable blocks.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

# MobileNetV2, Table 2: expansion t, output channels c, repeats n, stride s of the first repeat.
V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v, divisor=8):
    """Round v to the nearest multiple of divisor, never below divisor nor 10% below v
    (the rule Keras, torchvision and TF-slim share for MobileNetV2's channel counts)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _check_args(arch, alpha, resolution, classes, include_top, pooling, convention, depth_multiplier=1,
                output=None):
    """The graph's Config from a builder's arguments, each checked."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {sorted(CONVENTIONS)}, found {convention!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"alpha: expected a width multiplier > 0, found {alpha!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 32:
        raise ValueError(f"resolution: expected an integer >= 32, found {resolution!r}")
    if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, numbers.Integral) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier: expected an integer >= 1, found {depth_multiplier!r}")
    conv = CONVENTIONS[convention]
    classes = conv["classes"] if classes is None else classes
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) or classes < 1:
        raise ValueError(f"classes: expected an integer >= 1, found {classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling: expected None, 'avg' or 'max', found {pooling!r}")
    if output not in (None, "probabilities", "logits"):
        raise ValueError(f"output: expected None (the convention's), 'probabilities' or 'logits', found {output!r}")
    output = (output or conv["output"]) if include_top else "features"
    return Config(arch=arch, alpha=float(alpha), resolution=int(resolution), classes=int(classes), output=output,
                  pooling=None if include_top else pooling, convention=convention,
                  depth_multiplier=int(depth_multiplier), preprocess=conv["preprocess"])


def _conv_bn_relu(g, name, bn, relu, eps, c_out, k, stride, pad_rule):
    g.conv2d(name, c_out, k, stride, pad_rule)
    g.batchnorm(bn, eps)
    g.relu6(relu)


def _head(g, config, dense_name, softmax_name):
    if config.include_top:
        g.pool("global_pool", "avg")
        g.dense(dense_name, config.classes)
        if config.output == "probabilities":
            g.softmax(softmax_name)
    elif config.pooling:
        g.pool("global_pool", config.pooling)


def mobilenet_v1(alpha=1.0, resolution=224, classes=None, *, depth_multiplier=1, include_top=True,
                 pooling=None, convention="keras", output=None):
    """MobileNetV1 (Howard et al. 2017, Table 1) at width multiplier alpha. output: None for the
    convention's classifier (softmax for "keras" and "tfslim"), or "probabilities" / "logits"."""
    config = _check_args("mobilenet_v1", alpha, resolution, classes, include_top, pooling, convention,
                         depth_multiplier, output)
    first_pad, dw_pad, _ = _STRIDE2_PADS[convention]
    eps = CONVENTIONS[convention]["eps"]
    g = Builder((resolution, resolution, 3))
    _conv_bn_relu(g, "conv1", "conv1_bn", "conv1_relu", eps, int(32 * alpha), 3, 2, first_pad)
    for i, (c_out, stride) in enumerate(V1_BLOCKS, start=1):
        g.depthwise(f"conv_dw_{i}", 3, stride, dw_pad if stride == 2 else pad_symmetric, depth_multiplier)
        g.batchnorm(f"conv_dw_{i}_bn", eps)
        g.relu6(f"conv_dw_{i}_relu")
        g.pointwise(f"conv_pw_{i}", int(c_out * alpha))
        g.batchnorm(f"conv_pw_{i}_bn", eps)
        g.relu6(f"conv_pw_{i}_relu")
    _head(g, config, "conv_preds", "predictions")
    return Graph(g.nodes, (resolution, resolution, 3), config)


def v2_channels(c, alpha, convention):
    """A V2 block's output channels: Keras truncates c * alpha to an int before rounding to a
    multiple of 8; torchvision and TF-slim round c * alpha itself. (They differ at some alphas.)"""
    return make_divisible(int(c * alpha) if convention == "keras" else c * alpha)


def mobilenet_v2(alpha=1.0, resolution=224, classes=None, *, include_top=True, pooling=None,
                 convention="keras", output=None):
    """MobileNetV2 (Sandler et al. 2018, Table 2) at width multiplier alpha; output as in
    mobilenet_v1."""
    config = _check_args("mobilenet_v2", alpha, resolution, classes, include_top, pooling, convention,
                         output=output)
    first_pad, _, dw_pad = _STRIDE2_PADS[convention]
    eps = CONVENTIONS[convention]["eps"]
    g = Builder((resolution, resolution, 3))
    _conv_bn_relu(g, "Conv1", "bn_Conv1", "Conv1_relu", eps, make_divisible(32 * alpha), 3, 2, first_pad)
    block_id = 0
    for expand, c, repeats, first_stride in V2_BLOCKS:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            block_in = g.last
            c_in = g.shapes[block_in][-1]
            c_out = v2_channels(c, alpha, convention)
            prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
            if expand != 1:
                g.pointwise(f"{prefix}expand", c_in * expand)
                g.batchnorm(f"{prefix}expand_BN", eps)
                g.relu6(f"{prefix}expand_relu")
            g.depthwise(f"{prefix}depthwise", 3, stride, dw_pad if stride == 2 else pad_symmetric)
            g.batchnorm(f"{prefix}depthwise_BN", eps)
            g.relu6(f"{prefix}depthwise_relu")
            g.pointwise(f"{prefix}project", c_out)
            g.batchnorm(f"{prefix}project_BN", eps)  # linear bottleneck: no ReLU6 here
            if stride == 1 and c_in == c_out:
                g.residual(f"{prefix}add", block_in, g.last)
            block_id += 1
    # The last 1x1 conv keeps 1280 channels below alpha 1 ("no alpha applied", Keras and the paper).
    last = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    g.pointwise("Conv_1", last)
    g.batchnorm("Conv_1_bn", eps)
    g.relu6("out_relu")
    _head(g, config, "predictions", "predictions_softmax")
    return Graph(g.nodes, (resolution, resolution, 3), config)


ARCHITECTURES = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2}


def random_params(graph, seed=0):
    """Random weights for `graph`: He-scaled convolutions and *randomised* batch-norm statistics.

    BN's default statistics (mean 0, var 1, gamma 1, beta 0) make it the identity, which hides
    every BN bug (a wrong eps, swapped mean and var); parity tests and benchmarks use these.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in graph.param_shapes().items():
        kind = key.rsplit(".", 1)[1]
        if kind == "w":
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 2 else shape[0]
            if len(shape) == 3:  # depthwise: each output channel sees k*k inputs
                fan_in = shape[0] * shape[1]
            a = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif kind in ("gamma", "var"):
            a = rng.uniform(0.5, 1.5, shape)
        else:  # b, beta, mean
            a = 0.1 * rng.standard_normal(shape)
        params[key] = a.astype(np.float32)
    return params
