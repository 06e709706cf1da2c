"""ONNX's QLinear integer kernels (kernels/quantized/qlinear*.py).

Layer 1: every fast kernel equals its oracle exactly on shapes, dtypes (uint8/int8 activations,
int8/uint8 weights), zero points and scales drawn by hypothesis; the float32 FMA equals an exact
rational FMA, ties included. Layer 2: each kernel equals ONNX Runtime's own kernel byte for byte
on one-node models (weights within [-64, 63], so that AVX2 machines without VNNI, whose u8 x s8
products saturate pairs at 16 bits, compute the true sum too)."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npmobile.kernels.quantized import QKERNELS, output_scales
from npmobile.kernels.quantized.qlinear_add import _fma32_ref, _round_fraction, fma32

SCALE = st.floats(-12, 0).map(lambda e: float(np.float32(2.0 ** e)))
CHANNELS = st.integers(1, 40)


def _ints(rng, shape, dtype, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


@st.composite
def layer(draw, c_out):
    """(x dtype, w dtype, attrs, rng): zero points in range, per-tensor or per-channel scales."""
    x_dtype, w_dtype = draw(st.sampled_from([np.uint8, np.int8])), draw(st.sampled_from([np.int8, np.uint8]))
    xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
    per_channel = draw(st.booleans())
    w_scales = [draw(SCALE) for _ in range(c_out)] if per_channel else [draw(SCALE)] * c_out
    w_zero = np.full(c_out, 0 if w_dtype == np.int8 else draw(st.integers(0, 255)), np.int32)
    attrs = dict(x_zero=draw(st.integers(int(xi.min), int(xi.max))), y_zero=draw(st.integers(int(xi.min), int(xi.max))),
                 w_zero=w_zero, scale=output_scales(draw(SCALE), w_scales, draw(SCALE) / 64))
    return x_dtype, w_dtype, attrs, np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _assert_exact(name, *args, **attrs):
    kernel = QKERNELS[name]
    y, ref = kernel.fast(*args, **attrs), kernel.ref(*args, **attrs)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)
    return y


@st.composite
def conv_case(draw, depthwise=False):
    k = draw(st.sampled_from([1, 3, 5]))
    pad = tuple(draw(st.integers(0, k - 1)) for _ in range(4))
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(k, 10)), draw(st.integers(k, 10))
    c_in = draw(CHANNELS)
    c_out = c_in * draw(st.integers(1, 2)) if depthwise else draw(CHANNELS)
    x_dtype, w_dtype, attrs, rng = draw(layer(c_out))
    x = _ints(rng, (n, h, w, c_in), x_dtype)
    weights = _ints(rng, (k, k, c_out) if depthwise else (k, k, c_in, c_out), w_dtype)
    b = rng.integers(-(1 << 16), 1 << 16, c_out).astype(np.int32) if draw(st.booleans()) else None
    return x, weights, b, dict(attrs, stride=draw(st.sampled_from([1, 2])), pad=pad)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_case())
def test_qlinear_conv2d(vnni_path, case):
    # both ways: the windows read from x on VNNI with ONNX Runtime's float requantization in
    # registers, and im2col into exact float32 sgemm
    x, w, b, attrs = case
    assert (QKERNELS["qlinear_conv2d"].check(x, w, b, **attrs)[0].__name__ == "run_windows") == vnni_path
    _assert_exact("qlinear_conv2d", x, w, b, **attrs)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_case(depthwise=True))
def test_qlinear_depthwise_conv2d(vnni_path, case):
    # both ways: qdepthwise's loop on lanes with ONNX Runtime's float requantization (VNNI, depth
    # multiplier 1), and the float depthwise kernel on exact integers
    x, w, b, attrs = case
    args = QKERNELS["qlinear_depthwise_conv2d"].check(x, w, b, **attrs)
    assert (args[1].__name__ == "run_lanes") == (vnni_path and w.shape[2] == x.shape[3])
    _assert_exact("qlinear_depthwise_conv2d", x, w, b, **attrs)


@given(conv_case())
def test_qlinear_pointwise_conv2d_and_matmul(case):
    x, w, b, attrs = case
    del attrs["stride"], attrs["pad"]
    _assert_exact("qlinear_pointwise_conv2d", x, w[0, 0], b, **attrs)
    _assert_exact("qlinear_matmul", x[:, 0, 0, :], w[0, 0], b, **attrs)


def test_qlinear_matmul_splits_long_sums_and_stays_exact():
    # 2000 products of 255 * 255: far past 2^24, so the sum runs in chunks; every output is used.
    x = np.full((2, 2000), 255, np.uint8)
    w = np.full((2000, 3), -127, np.int8)
    attrs = dict(x_zero=0, w_zero=np.zeros(3, np.int32), y_zero=128, scale=np.full(3, 2.0 ** -20, np.float32))
    assert (_assert_exact("qlinear_matmul", x, w, **attrs) == 128 + round(-2000 * 255 * 127 / 2 ** 20)).all()


@st.composite
def add_case(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    info = np.iinfo(dtype)
    zero = st.integers(int(info.min), int(info.max))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b_shape = shape[-1:] if draw(st.booleans()) else shape
    attrs = dict(a_scale=draw(SCALE), a_zero=draw(zero), b_scale=draw(SCALE), b_zero=draw(zero),
                 y_scale=draw(SCALE), y_zero=draw(zero))
    return _ints(rng, shape, dtype), _ints(rng, b_shape, dtype), attrs


@given(add_case())
def test_qlinear_add(case):
    a, b, attrs = case
    _assert_exact("qlinear_add", a, b, **attrs)


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), CHANNELS, st.sampled_from([np.uint8, np.int8]),
       SCALE, SCALE, st.integers(0, 2**32 - 1))
def test_qlinear_global_avg_pool(n, h, w, c, dtype, x_scale, y_scale, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    zeros = rng.integers(info.min, int(info.max) + 1, 2)
    x = _ints(rng, (n, h, w, c), dtype)
    y_scale = max(y_scale, x_scale / (h * w * 255))  # inside the runtime's range, S < 256
    _assert_exact("qlinear_global_avg_pool", x, x_scale=x_scale, x_zero=int(zeros[0]), y_scale=y_scale,
                  y_zero=int(zeros[1]))


# --- the float32 FMA QLinearAdd rounds with ------------------------------------------------------

def _fma_exact(u, v, w):
    return _round_fraction(Fraction(float(u)) * Fraction(float(v)) + Fraction(float(w)))


def test_fma32_on_ties_and_random_operands():
    one, ulp = np.float32(1), np.float32(2.0 ** -23)
    # u * v + w exactly halfway between two float32s, or a hair off it: a double rounding (sum in
    # float64, then float32) gets these wrong; one rounding does not.
    # First: u * v = 2^-24 - 2^-70, so u * v + w is a hair below the midpoint 1 + 2^-23 + 2^-24;
    # in float64 it lands on the midpoint, and float32's ties-to-even then goes up, wrongly.
    cases = [(np.float32(2.0 ** -24 * (1 + 2.0 ** -23)), np.float32(1 - 2.0 ** -23), one + ulp),
             (np.float32(2.0 ** -24), np.float32(1 + 2.0 ** -23), one), (np.float32(2.0 ** -24), one, one),
             (np.float32(2.0 ** -24), np.float32(1 - 2.0 ** -24), one), (np.float32(-2.0 ** -25), one, one + ulp),
             (np.float32(3 * 2.0 ** -25), np.float32(1 + 2.0 ** -22), one + ulp)]
    rng = np.random.default_rng(0)
    cases += [tuple(np.float32(v) for v in rng.standard_normal(3) * 2.0 ** rng.integers(-30, 30, 3))
              for _ in range(2000)]
    for u, v, w in cases:
        expected = _fma_exact(u, v, w)
        assert fma32(u, v, w) == expected, (u, v, w)
        assert _fma32_ref(u, v, w) == expected, (u, v, w)
    assert fma32(*cases[0]) != np.float32(float(cases[0][0]) * float(cases[0][1]) + float(cases[0][2]))


# --- layer 2: each kernel against ONNX Runtime's, one node at a time -----------------------------

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _run_ort(node, inputs, initializers, out_type):
    from onnx import TensorProto, helper, numpy_helper
    types = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(k, types[v.dtype], v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], out_type, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def _conv_vs_ort(rng, group, k, stride, pads, c_in, c_out, per_channel):
    from onnx import TensorProto, helper
    x = _ints(rng, (2, c_in, 11, 9), np.uint8)
    w = _ints(rng, (c_out, c_in // group, k, k), np.int8, -64, 63)
    w_scale = (rng.uniform(0.5, 2, c_out if per_channel else 1) * 2.0 ** -7).astype(np.float32)
    b = rng.integers(-3000, 3000, c_out).astype(np.int32)
    s_x, s_y = np.float32(0.0186), np.float32(0.05)
    inits = dict(xs=s_x, xz=np.uint8(114), w=w, ws=w_scale, wz=np.zeros(w_scale.shape, np.int8), ys=s_y,
                 yz=np.uint8(7), b=b)
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], group=group,
                            kernel_shape=[k, k], strides=[stride, stride], pads=list(pads))
    expected = _run_ort(node, {"x": x}, inits, TensorProto.UINT8).transpose(0, 2, 3, 1)
    attrs = dict(x_zero=114, y_zero=7, w_zero=np.zeros(c_out, np.int32),
                 scale=output_scales(s_x, np.broadcast_to(w_scale, (c_out,)), s_y))
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    window = dict(stride=stride, pad=(pads[0], pads[2], pads[1], pads[3]))
    if group == c_in:
        y = QKERNELS["qlinear_depthwise_conv2d"].fast(xh, w[:, 0].transpose(1, 2, 0), b, **attrs, **window)
    elif k == 1 and stride == 1 and not any(pads):
        y = QKERNELS["qlinear_pointwise_conv2d"].fast(xh, w[:, :, 0, 0].T, b, **attrs)
    else:
        y = QKERNELS["qlinear_conv2d"].fast(xh, w.transpose(2, 3, 1, 0), b, **attrs, **window)
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("group, k, stride, pads, c_in, c_out, per_channel", [
    (1, 3, 2, (1, 1, 1, 1), 3, 16, True),      # MobileNet's first layer
    (1, 3, 1, (0, 1, 2, 0), 5, 7, False),
    (24, 3, 1, (1, 1, 1, 1), 24, 24, True),    # depthwise
    (24, 3, 2, (1, 0, 1, 0), 24, 24, False),
    (1, 1, 1, (0, 0, 0, 0), 32, 40, True),     # pointwise
])
def test_qlinear_conv_equals_onnxruntime(group, k, stride, pads, c_in, c_out, per_channel):
    _conv_vs_ort(np.random.default_rng(c_in * k), group, k, stride, pads, c_in, c_out, per_channel)


def test_qlinear_matmul_add_and_pool_equal_onnxruntime():
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    x = _ints(rng, (4, 300), np.uint8)
    w = _ints(rng, (300, 50), np.int8, -64, 63)
    ws = (rng.uniform(0.5, 2, 50) * 2.0 ** -8).astype(np.float32)
    inits = dict(xs=np.float32(0.019), xz=np.uint8(3), w=w, ws=ws, wz=np.zeros(50, np.int8), ys=np.float32(0.16),
                 yz=np.uint8(76))
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    expected = _run_ort(node, {"x": x}, inits, TensorProto.UINT8)
    y = QKERNELS["qlinear_matmul"].fast(x, w, x_zero=3, w_zero=np.zeros(50, np.int32), y_zero=76,
                                        scale=output_scales(0.019, ws, 0.16))
    np.testing.assert_array_equal(y, expected)

    a, b = _ints(rng, (2, 24, 5, 7), np.uint8), _ints(rng, (2, 24, 5, 7), np.uint8)
    for s_a, s_b, s_y in [(0.0397, 0.0461, 0.058), (0.16, 0.00108, 0.1601), (0.2, 0.2, 0.01)]:
        inits = dict(sa=np.float32(s_a), za=np.uint8(107), sb=np.float32(s_b), zb=np.uint8(127), sy=np.float32(s_y),
                     zy=np.uint8(125))
        node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                                domain="com.microsoft")
        expected = _run_ort(node, {"a": a, "b": b}, inits, TensorProto.UINT8)
        y = QKERNELS["qlinear_add"].fast(a, b, a_scale=s_a, a_zero=107, b_scale=s_b, b_zero=127, y_scale=s_y,
                                         y_zero=125)
        np.testing.assert_array_equal(y, expected)

    x = _ints(rng, (2, 40, 7, 7), np.uint8)
    inits = dict(xs=np.float32(0.0235), xz=np.uint8(9), ys=np.float32(0.0191), yz=np.uint8(4))
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                            channels_last=0)
    expected = _run_ort(node, {"x": x}, inits, TensorProto.UINT8)[:, :, 0, 0]
    y = QKERNELS["qlinear_global_avg_pool"].fast(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), x_scale=0.0235,
                                                 x_zero=9, y_scale=0.0191, y_zero=4)
    np.testing.assert_array_equal(y, expected)


def test_quantize_linear_equals_onnxruntime_ties_included():
    from onnx import TensorProto, helper
    from npmobile.kernels.quantized import quantize
    rng = np.random.default_rng(2)
    scale = np.float32(0.018658448)
    x = np.concatenate([rng.standard_normal(5000) * 2, (np.arange(-300, 300) + 0.5) * scale]).astype(np.float32)
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(np.uint8(114), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize(x, scale=scale, zero_point=114, dtype=np.uint8, rounding="even"), expected)
