"""Bad arguments to the integer kernels give a ValueError naming the argument, what was expected and
what was found, never a wrap-around or a crash inside a numba loop."""

import numpy as np
import pytest

from npmobile.kernels.quantized import QKERNELS
from npmobile.kernels.quantized.fixedpoint import requantize_params

X = np.zeros((1, 4, 4, 3), np.uint8)
F32 = X.astype(np.float32)
W = np.zeros((3, 3, 3, 5), np.uint8)
REQUANT = dict(x_zero=0, w_zero=0, y_zero=0, multiplier=np.full(5, 1 << 30), shift=np.full(5, -3))


@pytest.mark.parametrize("call, match", [
    (lambda: QKERNELS["qconv2d"].fast(F32, W, **REQUANT), r"x: expected a uint8 or int8 array, found dtype float32"),
    (lambda: QKERNELS["qconv2d"].fast(X, W[:, :, :2], **REQUANT), r"w: expected input channels \(axis 2\) = 3"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, **dict(REQUANT, x_zero=300)),
     r"x_zero: expected a zero point in \[0, 255\]"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, **dict(REQUANT, multiplier=np.full(4, 1 << 30))),
     r"multiplier: expected shape \(5,\)"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, **dict(REQUANT, shift=np.full(5, 40))),
     r"shift: expected values in \[-31, 30\]"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, **dict(REQUANT, clamp=(0, 300))),
     r"clamp: expected 0 <= lo <= hi <= 255"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, np.zeros(5, np.float32), **REQUANT),
     r"b: expected integers, found dtype float32"),
    (lambda: QKERNELS["qdepthwise_conv2d"].fast(X, W[:, :, 0, :4], **dict(REQUANT, multiplier=np.full(4, 1 << 30),
                                                                          shift=np.full(4, -3))),
     r"w: expected the channel axis to be a multiple of x's 3 channels"),
    (lambda: QKERNELS["qpointwise_conv2d"].fast(X, W[0, 0, :2], **REQUANT),
     r"w: expected input channels \(axis 0\) = 3"),
    (lambda: QKERNELS["qadd"].fast(X, X.astype(np.int8), a_zero=0, b_zero=0, y_zero=0, a_multiplier=1 << 30, a_shift=0,
                                   b_multiplier=1 << 30, b_shift=0, y_multiplier=1 << 30, y_shift=0),
     r"a, b: expected one shape and dtype"),
    (lambda: QKERNELS["qsoftmax"].fast(X[0, 0], multiplier=5, left_shift=3, diff_min=-10),
     r"multiplier: expected an integer in \[1073741824, 2147483647\]"),
    (lambda: QKERNELS["quantize"].fast(np.array([np.nan], np.float32), scale=0.1, zero_point=0, dtype=np.uint8),
     r"x: expected finite values"),
    (lambda: QKERNELS["quantize"].fast(np.zeros(3, np.float32), scale=0.0, zero_point=0, dtype=np.uint8),
     r"scale: expected a finite scale > 0"),
    (lambda: QKERNELS["qconv2d"].fast(X, W, **REQUANT, out=np.empty((1, 2, 2, 5), np.float32)),
     r"out: expected a C-contiguous uint8 array of shape \(1, 2, 2, 5\)"),
    (lambda: requantize_params(np.array([-1]), np.array([0])), r"multiplier: expected values >= 0"),
])
def test_bad_arguments_name_what_was_expected_and_found(call, match):
    with pytest.raises(ValueError, match=match):
        call()
