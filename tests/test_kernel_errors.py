"""Bad input: a ValueError naming the argument, what was expected and what was found; never a
crash inside numba and never a silently wrong answer. Plus dtype rules and BN folding."""

import numpy as np
import pytest

from npmobile.kernels import KERNELS, fold_batchnorm

f32 = np.float32
X = np.ones((1, 6, 6, 4), f32)
W_CONV = np.ones((3, 3, 4, 8), f32)
W_DW = np.ones((3, 3, 4), f32)
W_PW = np.ones((4, 8), f32)

conv2d = KERNELS["conv2d"].fast
depthwise = KERNELS["depthwise_conv2d"].fast
pointwise = KERNELS["pointwise_conv2d"].fast

BAD_CALLS = {
    "wrong rank of x": (lambda: conv2d(X[0], W_CONV), "x", "4-d"),
    "wrong rank of w": (lambda: depthwise(X, W_CONV), "w", "3-d"),
    "conv channel mismatch": (lambda: conv2d(X, np.ones((3, 3, 5, 8), f32)), "w", "= 4"),
    "depthwise channel mismatch": (lambda: depthwise(X, np.ones((3, 3, 6), f32)), "w", "multiple of"),
    "pointwise channel mismatch": (lambda: pointwise(X, np.ones((3, 8), f32)), "w", "= 4"),
    "dense channel mismatch": (lambda: KERNELS["dense"].fast(X[:, 0, 0], np.ones((5, 2), f32)), "w", "= 4"),
    "integer input": (lambda: depthwise(X.astype(np.int32), W_DW), "x", "int32"),
    "uint8 weights": (lambda: conv2d(X, W_CONV.astype(np.uint8)), "w", "uint8"),
    "complex input": (lambda: pointwise(X.astype(np.complex64), W_PW), "x", "complex64"),
    "boolean input": (lambda: KERNELS["clamp"].fast(X > 0), "x", "bool"),
    "kernel larger than padded input": (lambda: conv2d(X, np.ones((7, 7, 4, 8), f32)), "w", "7 > padded input 6"),
    "depthwise kernel larger than padded input": (lambda: depthwise(X, np.ones((9, 1, 4), f32), pad=(1, 1, 0, 0)), "w", "9 > padded input 8"),
    "stride 0": (lambda: depthwise(X, W_DW, stride=0), "stride", "found 0"),
    "negative stride": (lambda: conv2d(X, W_CONV, stride=-1), "stride", "found -1"),
    "fractional stride": (lambda: conv2d(X, W_CONV, stride=1.5), "stride", "found 1.5"),
    "negative padding": (lambda: depthwise(X, W_DW, pad=(1, -1, 0, 0)), "pad", "found (1, -1, 0, 0)"),
    "three pad sides": (lambda: conv2d(X, W_CONV, pad=(1, 1, 1)), "pad", "4 integers"),
    "negative zero_pad": (lambda: KERNELS["zero_pad"].fast(X, pad=(0, 0, -2, 0)), "pad", ">= 0"),
    "bias of the wrong length": (lambda: pointwise(X, W_PW, np.ones(7, f32)), "b", "(8,)"),
    "clamp with lo > hi": (lambda: conv2d(X, W_CONV, clamp=(6, 0)), "clamp", "lo <= hi"),
    "batchnorm stats of the wrong length": (lambda: KERNELS["batchnorm"].fast(X, *np.ones((4, 3), f32), eps=1e-3), "gamma", "(4,)"),
    "residual shapes differ": (lambda: KERNELS["add"].fast(X, X[:, :5]), "x2", "(1, 5, 6, 4)"),
    "empty feature map": (lambda: KERNELS["global_avg_pool"].fast(X[:, :0]), "x", "non-empty"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_names_argument_expected_and_found(case):
    call, argument, found = BAD_CALLS[case]
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert message.split(":")[0].split(" (")[0] == argument, message
    assert "expected" in message and found in message, message


def test_float64_in_is_computed_in_float32():
    x64, w64 = X.astype(np.float64), W_DW.astype(np.float64)
    y = depthwise(x64, w64, stride=2, pad=(0, 1, 0, 1))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, depthwise(X, W_DW, stride=2, pad=(0, 1, 0, 1)))


@pytest.mark.parametrize("name", ["conv2d", "depthwise_conv2d", "pointwise_conv2d"])
def test_float32_in_float32_out_for_every_conv(name):
    w = {"conv2d": W_CONV, "depthwise_conv2d": W_DW, "pointwise_conv2d": W_PW}[name]
    assert KERNELS[name].fast(X, w).dtype == np.float32


def test_non_contiguous_input_is_accepted():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 8, 8)).astype(f32)[:, ::2, :, ::2]  # strided view
    w = rng.standard_normal((3, 3, 4)).astype(f32)
    np.testing.assert_allclose(depthwise(x, w, pad=(1, 1, 1, 1)),
                               KERNELS["depthwise_conv2d"].ref(x, w, pad=(1, 1, 1, 1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["conv2d", "depthwise_conv2d", "pointwise_conv2d"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fold_batchnorm_equals_conv_then_batchnorm(layer, with_bias):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 7, 7, 5))
    w = {"conv2d": rng.standard_normal((3, 3, 5, 6)), "depthwise_conv2d": rng.standard_normal((3, 3, 10)),
         "pointwise_conv2d": rng.standard_normal((5, 6))}[layer]
    c_out = w.shape[-1]
    b = rng.standard_normal(c_out) if with_bias else None
    gamma, beta, mean = rng.standard_normal((3, c_out))
    var = rng.uniform(0.1, 2.0, c_out)
    kernel = KERNELS[layer]
    unfused = KERNELS["batchnorm"].ref(kernel.ref(x, w, b), gamma, beta, mean, var, eps=1e-3)
    w_folded, b_folded = fold_batchnorm(w, b, gamma, beta, mean, var, eps=1e-3)
    assert w_folded.dtype == b_folded.dtype == np.float32
    np.testing.assert_allclose(kernel.ref(x, w_folded, b_folded), unfused, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel.fast(x.astype(f32), w_folded, b_folded), unfused, rtol=1e-4, atol=1e-4)


def test_out_is_written_and_checked():
    y = np.empty((1, 6, 6, 4), f32)
    got = depthwise(X, W_DW, pad=(1, 1, 1, 1), out=y)
    assert got is y
    np.testing.assert_array_equal(y, depthwise(X, W_DW, pad=(1, 1, 1, 1)))
    for bad in (np.empty((1, 6, 6, 5), f32), np.empty((1, 6, 6, 4), np.float64), np.empty((1, 6, 6, 8), f32)[..., ::2]):
        with pytest.raises(ValueError, match="out: expected a C-contiguous float32 array of shape"):
            depthwise(X, W_DW, pad=(1, 1, 1, 1), out=bad)


# Issue 11: sizes that make index arithmetic overflow int64 (a 746-byte ONNX file carried
# strides 2**62 - 1 and pads 2**63 - 3; the depthwise test `iy + 3 <= h` wrapped and read rows
# before the input). Each is refused by the argument checks, before any loop runs.
HUGE = {
    "depthwise stride and pad from the crafted ONNX file":
        (lambda: depthwise(X, W_DW, stride=2**62 - 1, pad=(0, 0, 2**63 - 3, 0)), "stride"),
    "depthwise top pad 2**63 - 3": (lambda: depthwise(X, W_DW, pad=(2**63 - 3, 0, 0, 0)), "pad"),
    "conv2d left pad 2**63 - 3": (lambda: conv2d(X, W_CONV, pad=(0, 0, 2**63 - 3, 0)), "pad"),
    "conv2d stride 2**62 - 1": (lambda: conv2d(X, W_CONV, stride=2**62 - 1), "stride"),
    "padded input past 2**31 - 1": (lambda: depthwise(X, W_DW, pad=(2**31 - 1, 1, 0, 0)), "w"),
    "zero_pad to 2**31 + 5 rows": (lambda: KERNELS["zero_pad"].fast(X, pad=(2**31 - 1, 0, 0, 0)), "pad"),
    "output too large to allocate": (lambda: KERNELS["zero_pad"].fast(X, pad=(2**30, 2**30 - 7, 2**30, 0)), "out"),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_sizes_that_would_overflow_are_refused(case):
    call, argument = HUGE[case]
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert message.split(":")[0].split(" (")[0] == argument and "expected" in message, message


W_DW_M2 = np.arange(1, 73, dtype=f32).reshape(3, 3, 8) / 10  # depth multiplier 2: the general loop
W_DW_5 = np.arange(1, 101, dtype=f32).reshape(5, 5, 4) / 10  # 5x5: the general loop


@pytest.mark.parametrize("name, w", [("depthwise_conv2d", W_DW), ("depthwise_conv2d", W_DW_M2),
                                     ("depthwise_conv2d", W_DW_5), ("conv2d", W_CONV)])
def test_largest_pads_and_strides_read_only_inside_the_input(name, w):
    """Pads and strides near 2**31 are accepted and computed exactly: a window wholly in the
    padding gives the bias, the next one (one column of padding) what a pad of 1 gives."""
    kernel = KERNELS[name]
    x = np.random.default_rng(2).standard_normal((1, 6, 6, 4)).astype(f32)
    b = np.arange(w.shape[-1], dtype=f32)
    k = w.shape[0]
    left = 2**31 - 8
    stride = left - 1  # the second window starts one column left of the input
    y = kernel.fast(x, w, b, stride=stride, pad=(0, 0, left, 0))
    assert y.shape == (1, 1, 2, w.shape[-1])
    np.testing.assert_array_equal(y[0, 0, 0], b)  # all padding: the bias, no garbage
    near = kernel.ref(x, w, b, pad=(0, 0, 1, 0))[:, :1, :1]  # the same window, found the small way
    np.testing.assert_allclose(y[:, :, 1:], near, rtol=1e-5, atol=1e-5 * k * k)
