"""Layer 1 for the integer kernels: every fast kernel equals its int64 oracle exactly (no
tolerance) on shapes, zero points, scales and activation ranges drawn by hypothesis, for uint8
files (asymmetric per-tensor weights) and int8 files (symmetric per-channel weights); and the
fixed-point helpers' two forms (scalar for the loops, array for the oracles) agree, on random
int32s and on the edges where rounding and saturation happen."""

import math

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npmobile.kernels import _simd as simd
from npmobile.kernels.quantized import QKERNELS, add_multipliers, softmax_params
from npmobile.kernels.quantized import fixedpoint as fp
from npmobile.kernels.quantized import exact
from npmobile.kernels.quantized.exact import exact_chunks

CHANNELS = st.integers(1, 40)
KERNEL_SIDE = st.sampled_from([1, 3, 5, 7])
SCALE = st.floats(-12, 2).map(lambda e: float(np.float32(2.0 ** e)))  # log-uniform, 2^-12 .. 4


@st.composite
def quantization(draw, c_out):
    """(dtype, x_zero, w_zero (c_out,), y_zero, multiplier, shift, clamp, rng) for a layer."""
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    info = np.iinfo(dtype)
    zero = st.integers(int(info.min), int(info.max))
    x_zero, y_zero = draw(zero), draw(zero)
    if dtype == np.uint8:  # TFLite uint8 files: one asymmetric zero point for the whole tensor
        w_zero = np.full(c_out, draw(zero), dtype=np.int32)
        w_scales = [draw(SCALE)] * c_out
    else:  # int8 files: symmetric weights (zero point 0), one scale per output channel
        w_zero = np.zeros(c_out, dtype=np.int32)
        w_scales = [draw(SCALE) for _ in range(c_out)]
    x_scale, y_scale = draw(SCALE), draw(SCALE)
    multiplier, shift = fp.conv_multipliers(x_scale, w_scales, y_scale)
    kind = draw(st.sampled_from([None, "relu", "relu6"]))
    clamp = fp.activation_range(kind, y_scale, y_zero, info.min, info.max)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dtype, dict(x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier, shift=shift,
                       clamp=clamp), rng


def _ints(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _bias(draw, rng, c_out):
    return rng.integers(-(1 << 20), 1 << 20, c_out).astype(np.int32) if draw(st.booleans()) else None


def _assert_exact(name, *args, **attrs):
    kernel = QKERNELS[name]
    y = kernel.fast(*args, **attrs)
    ref = kernel.ref(*args, **attrs)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)


@st.composite
def conv_case(draw, depthwise=False):
    k_h = draw(KERNEL_SIDE)
    k_w = draw(st.one_of(st.just(k_h), KERNEL_SIDE))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    top, bottom, left, right = pad
    n = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, k_h - top - bottom), 12))
    w = draw(st.integers(max(1, k_w - left - right), 12))
    c_in = draw(CHANNELS)
    c_out = c_in * draw(st.integers(1, 3)) if depthwise else draw(CHANNELS)
    dtype, attrs, rng = draw(quantization(c_out))
    x = _ints(rng, (n, h, w, c_in), dtype)
    weights = _ints(rng, (k_h, k_w, c_out) if depthwise else (k_h, k_w, c_in, c_out), dtype)
    return x, weights, _bias(draw, rng, c_out), dict(attrs, stride=draw(st.sampled_from([1, 2])), pad=pad)


@given(conv_case())
def test_qconv2d(case):
    x, w, b, attrs = case
    _assert_exact("qconv2d", x, w, b, **attrs)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv_case(depthwise=True))
def test_qdepthwise_conv2d(vnni_path, case):
    x, w, b, attrs = case
    args = QKERNELS["qdepthwise_conv2d"].check(x, w, b, **attrs)
    assert (args[1].__name__ == "run_lanes") == (vnni_path and w.shape[2] == x.shape[3])
    _assert_exact("qdepthwise_conv2d", x, w, b, **attrs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("shape, stride, pad", [((1, 20, 23, 144), 1, (1, 1, 1, 1)), ((1, 21, 20, 96), 2, (0, 1, 0, 1)),
                                                ((3, 7, 5, 40), 2, (1, 1, 1, 1))])
def test_depthwise_on_layer_shapes(shape, stride, pad, dtype, threads, vnni_path):
    # the depthwise loops on shapes the drawn layers are too small for: MobileNet's channel
    # counts (whole groups of 16 and a remainder), odd widths, stride 2 with TFLite's SAME
    # padding, batches, on the serial loop and the parallel one
    rng = np.random.default_rng(shape[1] * shape[3] + stride)
    c = shape[3]
    x, w = _ints(rng, shape, dtype), _ints(rng, (3, 3, c), dtype)
    info = np.iinfo(dtype)
    w_zero = np.full(c, 131 if dtype == np.uint8 else 0, np.int32)
    multiplier, shift = fp.conv_multipliers(0.03, rng.uniform(2.0 ** -10, 2.0 ** -5, c), 0.05)
    attrs = dict(x_zero=int(info.min) + 100, w_zero=w_zero, y_zero=int(info.min) + 9, multiplier=multiplier, shift=shift,
                 stride=stride, pad=pad, clamp=(int(info.min) + 9, int(info.max) - 20))
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _assert_exact("qdepthwise_conv2d", x, w, rng.integers(-5000, 5000, c).astype(np.int32), **attrs)
    finally:
        numba.set_num_threads(saved)


@given(conv_case(), conv_case(depthwise=True))
def test_windowed_integer_loops(case, depthwise_case):
    # The integer loops that run where a layer's sums could leave float32's exact range: forced
    # here (no layer passes a bound of -1), since drawn layers are mostly small enough not to.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact, "EXACT_FLOAT32", -1)
        x, w, b, attrs = case
        _assert_exact("qconv2d", x, w, b, **attrs)
        x, w, b, attrs = depthwise_case
        _assert_exact("qdepthwise_conv2d", x, w, b, **attrs)


@pytest.mark.parametrize("pad", [(0, 0, 0, 1), (1, 0, 0, 0), (1, 1, 1, 1), (0, 0, 0, 0)])
def test_one_by_one_windows_with_padding(pad, vnni_path):
    # a 1x1 filter over 1x1 images is a matrix's rows only without padding: with it, the
    # windows in the padding read x_zero (found by hypothesis: the VNNI loop once took them for
    # rows of a matrix and read past the image)
    rng = np.random.default_rng(sum(pad))
    for dtype in (np.uint8, np.int8):
        x, w = _ints(rng, (3, 1, 1, 5), dtype), _ints(rng, (1, 1, 5, 7), dtype)
        info = np.iinfo(dtype)
        multiplier, shift = fp.conv_multipliers(0.02, [0.01] * 7, 0.03)
        _assert_exact("qconv2d", x, w, rng.integers(-99, 99, 7).astype(np.int32), x_zero=int(info.min) + 60,
                      w_zero=np.full(7, 3 if dtype == np.uint8 else 0, np.int32), y_zero=1, multiplier=multiplier,
                      shift=shift, pad=pad)


@given(conv_case())
def test_qpointwise_conv2d(case):
    x, w, b, attrs = case
    del attrs["stride"], attrs["pad"]
    _assert_exact("qpointwise_conv2d", x, w[0, 0], b, **attrs)


@given(conv_case())
def test_qdense(case):
    x, w, b, attrs = case
    del attrs["stride"], attrs["pad"]
    _assert_exact("qdense", x[:, 0, 0, :], w[0, 0], b, **attrs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_qpointwise_splits_long_sums_and_stays_exact(dtype, vnni_path):
    # The worst case for float32: every product at its largest magnitude (255 * 255 for uint8
    # zero points at the ends of the range), 1000 of them: 65 million, far past 2^24. On sgemm
    # the kernel must split the sum into chunks that each stay exact; on VNNI the weights are
    # shifted into int8 (e = -127 for every column) and the row sums taken back out.
    info = np.iinfo(dtype)
    x = np.full((1, 2, 3, 1000), info.max, dtype=dtype)
    w = np.full((1000, 4), info.min, dtype=dtype)
    w_zero = np.full(4, info.max, dtype=np.int32)
    attrs = dict(x_zero=int(info.min), w_zero=w_zero, y_zero=0, multiplier=np.full(4, 1 << 30, np.int32),
                 shift=np.full(4, -31, np.int32), clamp=None)
    assert len(exact_chunks(np.full((1000, 4), 255.0, np.float32), 255)) - 1 == 4  # 258 terms per chunk
    assert QKERNELS["qpointwise_conv2d"].check(x, w, None, **attrs)[0] == vnni_path
    _assert_exact("qpointwise_conv2d", x, w, None, **attrs)


@st.composite
def add_case(draw):
    shape = tuple(draw(st.integers(1, 6)) for _ in range(3)) + (draw(CHANNELS),)
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    info = np.iinfo(dtype)
    zero = st.integers(int(info.min), int(info.max))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    s_a, s_b, s_y = draw(SCALE), draw(SCALE), draw(SCALE)
    y_zero = draw(zero)
    clamp = fp.activation_range(draw(st.sampled_from([None, "relu6"])), s_y, y_zero, info.min, info.max)
    return _ints(rng, shape, dtype), _ints(rng, shape, dtype), dict(
        a_zero=draw(zero), b_zero=draw(zero), y_zero=y_zero, **add_multipliers(s_a, s_b, s_y), clamp=clamp)


@given(add_case())
def test_qadd(case):
    a, b, attrs = case
    _assert_exact("qadd", a, b, **attrs)


@given(conv_case())
def test_qglobal_avg_pool(case):
    x, _, _, attrs = case
    _assert_exact("qglobal_avg_pool", x, clamp=attrs["clamp"])


@given(conv_case(), SCALE, SCALE)
def test_qmean(case, x_scale, y_scale):
    # MEAN's own output scale: the rescaling and 1/(h*w) folded into one multiplier
    x, _, _, attrs = case
    multiplier, shift = fp.rescale_multiplier(x_scale, y_scale)
    _assert_exact("qmean", x, x_zero=attrs["x_zero"], y_zero=attrs["y_zero"], multiplier=multiplier, shift=shift)


@given(st.integers(1, 3000), st.integers(0, 2**32 - 1), st.sampled_from([np.uint8, np.int8]),
       st.sampled_from([np.uint8, np.int8]), SCALE, st.one_of(SCALE, st.just(None)))
def test_rescale(size, seed, x_dtype, y_dtype, x_scale, y_scale):
    # QUANTIZE between 8-bit quantizations: a new scale, or (y_scale None) the same scale with the
    # zero point moved by 128, as an int8 file with uint8 ends has
    rng = np.random.default_rng(seed)
    x_info, y_info = np.iinfo(x_dtype), np.iinfo(y_dtype)
    x_zero = int(rng.integers(x_info.min, int(x_info.max) + 1))
    if y_scale is None:
        y_scale, y_zero = x_scale, int(np.clip(x_zero + int(y_info.min) - int(x_info.min), y_info.min, y_info.max))
    else:
        y_zero = int(rng.integers(y_info.min, int(y_info.max) + 1))
    multiplier, shift = fp.rescale_multiplier(x_scale, y_scale)
    _assert_exact("rescale", _ints(rng, (size,), x_dtype), x_zero=x_zero, y_zero=y_zero, multiplier=multiplier,
                  shift=shift, dtype=y_dtype)


def test_mean_multiplier_folds_the_count_into_the_multiplier():
    # s_x == s_y: M = 2^30 * 2^(1-31); over a 7x7 map e = 5 bits move into the multiplier:
    # m' = floor(2^35 / 49), shift' = -4
    assert fp.rescale_multiplier(0.1, 0.1) == (1 << 30, 1)
    from npmobile.kernels.quantized.qmean import mean_multiplier
    assert mean_multiplier(1 << 30, 1, 49) == ((1 << 35) // 49, -4)
    # and the mean is rounded twice: a sum of 169 (mean 3.449) gives 3; 170 (mean 3.469, which
    # rounds to 3) gives 4, as SRDHM first makes 170 * m' / 2^31 = 55.51 the integer 56, and the
    # shift then rounds 56 / 16 = 3.5 up
    x = np.full((1, 7, 7, 1), 3, np.int8)
    x[0, 0, 0, 0] = 3 + 22
    assert QKERNELS["qmean"].fast(x, x_zero=0, y_zero=0, multiplier=1 << 30, shift=1)[0, 0] == 3
    x[0, 0, 0, 0] += 1
    assert QKERNELS["qmean"].fast(x, x_zero=0, y_zero=0, multiplier=1 << 30, shift=1)[0, 0] == 4


@st.composite
def softmax_case(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int8]))
    rows, classes = draw(st.integers(1, 4)), draw(st.integers(1, 1100))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _ints(rng, (rows, classes), dtype)
    if draw(st.booleans()):  # a narrow spread: many classes near the maximum, the sum is large
        x = (x // 16 + np.iinfo(dtype).max // 2).astype(dtype)
    # input scales from 1/512 (the sum nearly uniform) to 1 (every difference but 0 underflows)
    return x, softmax_params(draw(st.floats(-9, 0).map(lambda e: float(np.float32(2.0 ** e)))))


@given(softmax_case())
def test_qsoftmax(case):
    x, params = case
    _assert_exact("qsoftmax", x, **params)


@given(st.integers(1, 5000), st.integers(0, 2**32 - 1), st.sampled_from([np.uint8, np.int8]),
       st.sampled_from(["away", "even"]), SCALE)
def test_quantize_and_dequantize(size, seed, dtype, rounding, scale):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    zero = int(rng.integers(info.min, int(info.max) + 1))
    # values on and next to the rounding halves, and beyond the type's range (saturation)
    x = ((rng.integers(-300, 300, size) + rng.choice([0.5, 0.0, 0.49999997, 0.5000001], size)) * scale)
    x = x.astype(np.float32)
    _assert_exact("quantize", x, scale=scale, zero_point=zero, dtype=dtype, rounding=rounding)
    _assert_exact("dequantize", _ints(rng, (size,), dtype), scale=scale, zero_point=zero)


def test_quantize_rounding_rules():
    # halves: TFLite rounds away from zero, ONNX to even; beyond the range: saturation
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1000.0, -1000.0], np.float32)
    away = QKERNELS["quantize"].fast(x, scale=1.0, zero_point=0, dtype=np.int8)
    even = QKERNELS["quantize"].fast(x, scale=1.0, zero_point=0, dtype=np.int8, rounding="even")
    assert away.tolist() == [1, 2, 3, -1, -3, 127, -128]
    assert even.tolist() == [0, 2, 2, 0, -2, 127, -128]


# --- the fixed-point helpers -----------------------------------------------------------------

EDGES = [fp.INT32_MIN, fp.INT32_MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, fp.INT32_MAX]


INT32 = st.integers(fp.INT32_MIN, fp.INT32_MAX)


@given(st.lists(st.tuples(INT32, INT32), min_size=1, max_size=50))
def test_srdhm_scalar_equals_array_form(pairs):
    pairs += [(p, q) for p in EDGES for q in EDGES]  # every pair of edge values too
    a, b = np.array([p for p, _ in pairs]), np.array([q for _, q in pairs])
    scalar = [fp.srdhm(int(p), int(q)) for p, q in zip(a, b)]
    np.testing.assert_array_equal(scalar, fp.srdhm_ref(a, b))


def test_srdhm_known_values():
    assert fp.srdhm(fp.INT32_MIN, fp.INT32_MIN) == fp.INT32_MAX  # the one saturating product
    assert fp.srdhm(1 << 30, 1 << 30) == 1 << 29  # 0.5 * 0.5 = 0.25
    assert fp.srdhm(3, 1 << 30) == 2 and fp.srdhm(-3, 1 << 30) == -1  # 1.5 -> 2, -1.5 -> -1: halves up


@given(st.lists(st.integers(fp.INT32_MIN, fp.INT32_MAX), min_size=1, max_size=50), st.integers(0, 31))
def test_rounding_divide_by_pot_scalar_equals_array_form(x, e):
    x = np.array(x + EDGES)
    np.testing.assert_array_equal([fp.rounding_divide_by_pot(int(v), e) for v in x],
                                  fp.rounding_divide_by_pot_ref(x, e))
    assert fp.rounding_divide_by_pot(5, 1) == 3 and fp.rounding_divide_by_pot(-5, 1) == -3  # away from zero


@given(st.lists(st.integers(-(1 << 24), 1 << 24), min_size=1, max_size=50), SCALE, SCALE, SCALE)
def test_multiply_by_quantized_multiplier_scalar_equals_array_form_and_the_real_product(acc, s_x, s_w, s_y):
    (m,), (shift,) = fp.conv_multipliers(s_x, [s_w], s_y)
    acc = np.array(acc)
    scalar = np.array([fp.multiply_by_quantized_multiplier(int(v), int(m), int(shift)) for v in acc])
    np.testing.assert_array_equal(scalar, fp.multiply_by_quantized_multiplier_ref(acc, m, shift))
    real = acc * (m * 2.0 ** (shift - 31))  # what the two roundings approximate
    fits = np.abs(real) < 2.0 ** 30  # beyond int32 the runtime's product wraps around, as C does
    assert np.all(np.abs(scalar - real)[fits] <= 1.0)


@given(st.floats(2.0 ** -40, 2.0 ** 20))
def test_quantize_multiplier(real):
    m, shift = fp.quantize_multiplier(real)
    if shift == 0 and m == 0:  # flushed to zero: below 2^-32
        assert real < 2.0 ** -31
        return
    assert 1 << 30 <= m < 1 << 31
    assert abs(m * 2.0 ** (shift - 31) - real) <= real * 2.0 ** -31  # half a unit in the last place
    assert fp.quantize_multiplier(0.75) == (3 << 29, 0)
    assert fp.quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)  # rounds up to 2^31: renormalised


def test_activation_ranges():
    # relu6 on scale 6/255, zero point 0: 0 .. 255; on scale 0.1, zero point 10: 10 .. 70
    assert fp.activation_range("relu6", 6 / 255, 0, 0, 255) == (0, 255)
    assert fp.activation_range("relu6", 0.1, 10, 0, 255) == (10, 70)
    assert fp.activation_range("relu", 0.1, -5, -128, 127) == (-5, 127)
    assert fp.activation_range(None, 0.1, 3, -128, 127) == (-128, 127)


def test_exp_and_reciprocal_approximate_the_real_functions():
    # gemmlowp's fixed-point exp (Q5.26 in, Q0.31 out) and 1 / (1 + x), against math
    for real in [-31.9, -8.0, -1.0, -0.25, -0.1, -1e-6]:
        raw = int(round(real * 2 ** 26))
        error = abs(fp.exp_on_negative_values(raw, 5) / 2 ** 31 - math.exp(raw / 2 ** 26))
        assert error < 2.0 ** -21  # gemmlowp's polynomial is good to about 2^-23
    for real in [0.0, 0.25, 0.5, 0.999]:
        assert abs(fp.one_over_one_plus_x(int(real * 2 ** 31)) / 2 ** 31 - 1 / (1 + real)) < 1e-8
    r, bits = fp.get_reciprocal(3 << 19, 12)  # 3.0 in Q12.19
    assert abs(r / 2 ** 31 / 2 ** bits - 1 / 3) < 1e-8


@given(st.lists(INT32, min_size=1, max_size=40), st.integers(1 << 30, fp.INT32_MAX), st.integers(-31, 30),
       st.integers(-128, 255))
def test_requantize_without_branches_equals_the_runtime_rounding(acc, multiplier, shift, y_zero):
    # the epilogue of every convolution kernel (SIMD-friendly form) against the oracle's form,
    # over the whole int32 accumulator range, negative values and left shifts included
    rq = fp.requantize_params(np.array([multiplier]), np.array([shift]))
    fast = [fp.requantize(a, rq, 0, y_zero, -(1 << 40), 1 << 40) for a in acc]
    ref = fp.requantize_ref(np.array(acc), multiplier, shift, y_zero, -(1 << 40), 1 << 40)
    np.testing.assert_array_equal(fast, ref)


@given(conv_case())
def test_qfully_connected(case):
    # an int8 FULLY_CONNECTED: the exact product, then one double rounding (halves away from 0)
    x, w, b, attrs = case
    rng = np.random.default_rng(int(w.sum()) % 2**32)
    real = rng.uniform(0, 2.0 ** -8, w.shape[-1])
    _assert_exact("qfully_connected", x[:, 0, 0, :], w[0, 0], b, x_zero=attrs["x_zero"], w_zero=attrs["w_zero"],
                  y_zero=attrs["y_zero"], real_multiplier=real, clamp=attrs["clamp"])


def test_qfully_connected_rounds_once_where_the_fixed_point_route_rounds_twice():
    # the corpus' case: acc = 343906, M = s_x s_w / s_y ~ 0.000292224, acc * M = 100.49999:
    # one rounding gives 100, MultiplyByQuantizedMultiplier's two give 101
    from npmobile.kernels.quantized.qfully_connected import real_multipliers
    m = real_multipliers(0.023336083, [0.0008910043], 0.10314182)
    multiplier, shift = fp.quantize_multiplier(float(m[0]))
    acc = int(round(100.49999 / m[0]))
    assert int(fp.multiply_by_quantized_multiplier_ref(np.array([acc]), multiplier, shift)[0]) == 101
    x = np.zeros((1, 1), np.int8)
    y = QKERNELS["qfully_connected"].fast(x, np.zeros((1, 1), np.int8), np.array([acc], np.int32), x_zero=0,
                                          w_zero=np.zeros(1, np.int32), y_zero=0, real_multiplier=m)
    assert y[0, 0] == 100


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, c_in, c_out", [(1, 40, 300), (3, 20, 50), (5000, 24, 144), (700, 600, 40),
                                               (9, 8, 5), (61, 96, 1001)])
def test_products_in_blocks_and_chunks_are_exact(rows, c_in, c_out, threads, vnni_path):
    # qproduct.py's shapes the drawn layers above are too small to reach: a one-row product
    # (sgemv, in column blocks), fewer rows than columns, many row blocks, and sums long and
    # large enough to be split into chunks (weights at the ends of the int8 range, 600 taps);
    # on VNNI (vnni.py) blocks of columns, rows past a multiple of 4, columns padded to 48;
    # each runtime's epilogue, on the serial loop (1 thread) and the parallel one (2).
    import numba

    from npmobile.kernels.quantized import qproduct
    from npmobile.kernels.quantized.qfully_connected import real_multipliers

    rng = np.random.default_rng(rows + c_in)
    x = rng.integers(0, 256, (rows, c_in)).astype(np.uint8)
    w = rng.choice(np.array([-128, 127], np.int8), (c_in, c_out))
    b = rng.integers(-(1 << 20), 1 << 20, c_out).astype(np.int32)
    y = np.empty((rows, c_out), np.uint8)
    on_vnni, args, _ = qproduct.check_product(x, 0, w.astype(np.int32), b, 0, 0, 0, 255, y, y)
    assert on_vnni == vnni_path
    if not on_vnni:
        assert (len(args[3]) > 2) == (c_in == 600)  # the chunks of input channels
    scales = rng.uniform(2.0 ** -20, 2.0 ** -12, c_out).astype(np.float32)
    multiplier, shift = fp.conv_multipliers(0.02, scales, 0.5, double_product=True)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        for name, attrs in (("qdense", dict(multiplier=multiplier, shift=shift, clamp=(0, 200))),
                            ("qfully_connected", dict(real_multiplier=real_multipliers(0.02, scales, 0.5))),
                            ("qlinear_matmul", dict(scale=scales))):
            xs = x.view(np.int8) if name != "qdense" else x  # int8 files' activations are int8
            # zero points at the ends of the range: |x - x_zero| up to 255, as in the chunk count above
            zero = dict(x_zero=127 if name != "qdense" else 0, w_zero=np.zeros(c_out, np.int32), y_zero=5)
            _assert_exact(name, xs, w if name != "qdense" else w.view(np.uint8), b, **zero, **attrs)
    finally:
        numba.set_num_threads(saved)



@numba.njit
def _requantize_16_lanes(acc, params):
    """fixedpoint.requantize_lanes on 16 accumulators, params (5, 16) int32 (lane_params)."""
    p, out = params.ctypes.data, np.empty(16, np.int32)
    v = fp.requantize_lanes(simd.load(acc.ctypes.data), simd.load(p), simd.load(p + 64), simd.load(p + 128),
                            simd.load(p + 192), simd.load(p + 256))
    simd.store(out.ctypes.data, v)
    return out


@given(st.lists(INT32, min_size=16, max_size=16), st.lists(st.integers(1 << 30, fp.INT32_MAX), min_size=16,
       max_size=16), st.lists(st.integers(-31, 30), min_size=16, max_size=16))
def test_requantize_on_16_lanes_equals_the_runtime_rounding(acc, multipliers, shifts):
    # the VNNI product's epilogue (16 lanes, 64-bit products of the even and odd lanes, gemmlowp's
    # mask and threshold) against the oracle, lane by lane, over the whole int32 range and every
    # shift, and on the values where each rounding step turns
    rq = fp.requantize_params(np.array(multipliers), np.array(shifts))
    params = fp.lane_params(rq)
    for values in (acc, [(1 << 30) >> max(0, -s) for s in shifts], [-(1 << (max(0, -s) - 1 + 16)) for s in shifts]):
        values = np.array(values, np.int64)
        ref = fp.multiply_by_quantized_multiplier_ref(values, np.array(multipliers), np.array(shifts))
        np.testing.assert_array_equal(_requantize_16_lanes(values.astype(np.int32), params), ref)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 70), st.integers(1, 96), st.integers(1, 120), st.sampled_from([np.uint8, np.int8]),
       st.integers(0, 2**32 - 1), st.sampled_from([1, 2]))
def test_vnni_products_equal_their_oracles(vnni_path, rows, c_in, c_out, dtype, seed, threads):
    # every quantized 1x1 layer on both ways (VNNI where this CPU has it): rows that are not a
    # multiple of 4, columns padded to 48, input channels rounded up to 4 (the last row read
    # from a copy: its bytes past x are not read), per-column weight zero points anywhere in the
    # type's range (so that columns need different shifts into int8, e != 0), each runtime's
    # epilogue
    import numba

    from npmobile.kernels.quantized.qfully_connected import real_multipliers

    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    x, w = _ints(rng, (rows, c_in), dtype), _ints(rng, (c_in, c_out), dtype)
    b = rng.integers(-(1 << 20), 1 << 20, c_out).astype(np.int32)
    zeros = dict(x_zero=int(rng.integers(info.min, int(info.max) + 1)), y_zero=int(rng.integers(info.min, 10)),
                 w_zero=rng.integers(info.min, int(info.max) + 1, c_out).astype(np.int32))
    scales = rng.uniform(2.0 ** -16, 2.0 ** -8, c_out).astype(np.float32)
    multiplier, shift = fp.conv_multipliers(0.02, scales, 0.5, double_product=True)
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        assert QKERNELS["qdense"].check(x, w, b, **zeros, multiplier=multiplier, shift=shift)[0] == vnni_path
        _assert_exact("qdense", x, w, b, **zeros, multiplier=multiplier, shift=shift, clamp=(info.min + 3, info.max - 5))
        if dtype == np.int8:  # LiteRT's int8 FULLY_CONNECTED (double multipliers)
            _assert_exact("qfully_connected", x, w, b, **zeros, real_multiplier=real_multipliers(0.02, scales, 0.5))
        _assert_exact("qlinear_matmul", x, w, b, **zeros, scale=scales)
    finally:
        numba.set_num_threads(saved)
