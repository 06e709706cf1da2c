"""Quantized mean over the pixels, with its own output scale (TFLite MEAN over H and W, uint8/int8).

Keras' GlobalAveragePooling2D becomes MEAN, and unlike AVERAGE_POOL_2D (qpool.py) its output may
have another scale than its input. TFLite folds the rescaling and the division by the count
n = h * w into one fixed-point multiplier, in integers (reference_ops::QuantizedMeanOrSum):

    multiplier, shift = QuantizeMultiplier(s_x / s_y)              (rescale_multiplier, at load)
    e = min(floor(log2 n), 32, 31 + shift)                          (as many bits as n allows)
    multiplier' = floor(multiplier * 2^e / n),  shift' = shift - e  (mean_multiplier)
    y[b, c] = clamp(MultiplyByQuantizedMultiplier(sum_{i,j} x[b, i, j, c] - n * x_zero,
                                                  multiplier', shift') + y_zero, type min, type max)

So the mean is rounded once, by fixedpoint.py's two roundings, and 1/n is truncated to the
multiplier's 31 bits first: it is not round(real mean / s_y). (LiteRT's default interpreter
computes a MEAN that keeps its dims with other, optimized arithmetic: docs/quantized.md says how
often that differs.)

Layout: x NHWC 8-bit -> y (n, c) of the same dtype. Cost: no MACs; one add per element of x.
"""

import numpy as np

from .. import Kernel
from .._jit import jit
from ._qchecks import as_q8, check_multiplier, check_zero, q_output, type_range
from .fixedpoint import multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_ref
from .qpool import pixel_sums


def mean_multiplier(multiplier, shift, count):
    """(multiplier', shift'): the rescaling (multiplier, shift) with 1/count folded in, as the
    runtime does it: count's leading power of two moves from the shift into the multiplier,
    the rest divides the multiplier (truncated)."""
    e = min(count.bit_length() - 1, 32, 31 + shift)
    return int((multiplier << e) // count), shift - e


def qmean_ref(x, *, x_zero, y_zero, multiplier, shift):
    """The oracle: an int64 sum, then the equations above on int64 arrays."""
    x = np.asarray(x)
    count = x.shape[1] * x.shape[2]
    total = x.astype(np.int64).sum(axis=(1, 2)) - count * x_zero
    m, s = mean_multiplier(multiplier, shift, count)
    lo, hi = type_range(x.dtype)
    return np.clip(multiply_by_quantized_multiplier_ref(total, m, s) + y_zero, lo, hi).astype(x.dtype)


def check_qmean(x, *, x_zero, y_zero, multiplier, shift, out=None):
    """The arguments of run_qmean, checked; the count folded into the multiplier once, here."""
    x = as_q8("x", x, ndim=4)
    count = x.shape[1] * x.shape[2]
    if count == 0:
        raise ValueError(f"x: expected a non-empty feature map, found shape {x.shape}")
    x_zero, y_zero = check_zero("x_zero", x_zero, x.dtype), check_zero("y_zero", y_zero, x.dtype)
    m, s = mean_multiplier(*check_multiplier(multiplier, shift), count)
    lo, hi = type_range(x.dtype)
    y = q_output(out, (x.shape[0], x.shape[3]), x.dtype)
    return x, count * x_zero, y_zero, m, s, lo, hi, np.empty(x.shape[3], dtype=np.int32), y


def run_qmean(x, zero_sum, y_zero, multiplier, shift, lo, hi, acc, y):
    _qmean_jit(x, zero_sum, y_zero, multiplier, shift, lo, hi, acc, y)
    return y


def qmean(x, *, x_zero, y_zero, multiplier, shift, out=None):
    """The fast kernel: (n, h, w, c) 8-bit -> (n, c), int32 sums over the pixels, then one
    fixed-point multiplication per channel."""
    return run_qmean(*check_qmean(x, x_zero=x_zero, y_zero=y_zero, multiplier=multiplier, shift=shift, out=out))


@jit
def _qmean_jit(x, zero_sum, y_zero, multiplier, shift, lo, hi, acc, y):
    for i in range(x.shape[0]):
        pixel_sums(x[i], acc)
        for k in range(x.shape[3]):
            v = multiply_by_quantized_multiplier(acc[k] - zero_sum, multiplier, shift) + y_zero
            y[i, k] = min(max(v, lo), hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qmean", qmean, qmean_ref, check_qmean, run_qmean),)
