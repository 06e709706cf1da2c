"""Quantized global average pooling (TFLite AVERAGE_POOL_2D over the whole map, uint8/int8).

TFLite requires the pool's input and output to share scale and zero point, so the average is
taken on the stored integers and rounded to the nearest, halves away from zero:

    y[n, c] = clamp(round_half_away(sum_{i, j} x[n, i, j, c] / (h * w)), lo, hi)

(the runtime computes (acc + count / 2) / count with C's truncating division, and its mirror for
a negative acc: the same thing). [lo, hi] is the fused activation, usually the whole type.

Layout: x NHWC 8-bit -> y (n, c) of the same dtype. Cost: no MACs; one add per element of x.
"""

import numpy as np

from .. import Kernel
from .._jit import jit
from ._qchecks import as_q8, check_int_clamp, q_output


def qglobal_avg_pool_ref(x, *, clamp=None):
    """The oracle: an int64 sum, then rounding of |sum| / count half up, sign put back."""
    x = np.asarray(x)
    total = x.astype(np.int64).sum(axis=(1, 2))
    count = x.shape[1] * x.shape[2]
    y = np.sign(total) * ((2 * np.abs(total) + count) // (2 * count))
    info = np.iinfo(x.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return np.clip(y, lo, hi).astype(x.dtype)


def check_qglobal_avg_pool(x, *, clamp=None, out=None):
    """The arguments of run_qglobal_avg_pool, checked."""
    x = as_q8("x", x, ndim=4)
    if x.shape[1] * x.shape[2] == 0:
        raise ValueError(f"x: expected a non-empty feature map, found shape {x.shape}")
    lo, hi = check_int_clamp(clamp, x.dtype)
    y = q_output(out, (x.shape[0], x.shape[3]), x.dtype)
    return x, lo, hi, np.empty(x.shape[3], dtype=np.int32), y


def run_qglobal_avg_pool(x, lo, hi, acc, y):
    _qavg_jit(x, lo, hi, acc, y)
    return y


def qglobal_avg_pool(x, *, clamp=None, out=None):
    """The fast kernel: (n, h, w, c) 8-bit -> (n, c), int32 sums over the pixels."""
    return run_qglobal_avg_pool(*check_qglobal_avg_pool(x, clamp=clamp, out=out))


@jit
def pixel_sums(image, acc):
    """acc[k] = the int32 sum of channel k over the pixels of one (h, w, c) image."""
    acc[:] = 0
    for r in range(image.shape[0]):
        for col in range(image.shape[1]):
            for k in range(image.shape[2]):
                acc[k] += image[r, col, k]


@jit
def _qavg_jit(x, lo, hi, acc, y):
    n, h, w, c = x.shape
    count = h * w
    for i in range(n):
        pixel_sums(x[i], acc)
        for k in range(c):
            a = acc[k]
            # C's '/' truncates toward zero: nudge by half the count away from zero first.
            if a > 0:
                v = (a + count // 2) // count
            else:
                v = -((-a + count // 2) // count)
            y[i, k] = min(max(v, lo), hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qglobal_avg_pool", qglobal_avg_pool, qglobal_avg_pool_ref, check_qglobal_avg_pool,
                  run_qglobal_avg_pool),)
