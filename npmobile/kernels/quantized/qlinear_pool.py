"""ONNX (com.microsoft) QLinearGlobalAveragePool: the mean over the map, requantized in float32.

Input and output have their own scales and zero points (TFLite's pool keeps one). ONNX Runtime
(MLAS, x86) sums the stored integers, removes the zero point once per sum and requantizes the sum
with one float32 scale that also divides by the pixel count:

    S      = float32(s_x / float32(s_y * float32(h * w)))          (once per layer)
    acc    = sum_{i, j} x[n, i, j, c] - x_zero * h * w             (an int32)
    y[n,c] = saturate(rint(float32(float32(acc) * S)) + y_zero)

with qlinear.py's rounding (float32 product, halves to even). The runtime refuses a map of 2^24
pixels or more and an S outside [2^-32, 256); so does this kernel.

Layout: x NHWC 8-bit -> y (n, c) of the same dtype. Cost: no MACs; one add per element of x.
"""

import numpy as np

from .. import Kernel
from .._jit import jit
from ._qchecks import as_q8, check_zero, q_output, type_range
from .epilogue import requantize_float
from .qlinear import requantize_float_ref


def pool_scale(x_scale, y_scale, count):
    """S = float32(s_x / float32(s_y * float32(count))), checked against the runtime's range."""
    for name, v in (("x_scale", x_scale), ("y_scale", y_scale)):
        v = float(v)
        if not (np.isfinite(v) and v > 0 and np.isfinite(np.float32(v))):
            raise ValueError(f"{name}: expected a finite float32 scale > 0, found {v}")
    if not 1 <= count < 1 << 24:
        raise ValueError(f"x: expected a map of 1 .. 2^24 - 1 pixels, found {count}")
    scale = np.float32(x_scale) / (np.float32(y_scale) * np.float32(count))
    if not 2.0 ** -32 <= scale < 256:
        raise ValueError(f"x_scale, y_scale: s_x / (s_y * {count}) = {scale}, outside the runtime's [2^-32, 256)")
    return np.float32(scale)


def qlinear_global_avg_pool_ref(x, *, x_scale, x_zero, y_scale, y_zero):
    """The oracle: an int64 sum minus the zero points, requantize_float_ref."""
    x = np.asarray(x)
    count = x.shape[1] * x.shape[2]
    acc = x.astype(np.int64).sum(axis=(1, 2)) - int(x_zero) * count
    return requantize_float_ref(acc, pool_scale(x_scale, y_scale, count), y_zero, x.dtype)


def check_qlinear_global_avg_pool(x, *, x_scale, x_zero, y_scale, y_zero, out=None):
    """The arguments of run_qlinear_global_avg_pool, checked."""
    x = as_q8("x", x, ndim=4)
    count = x.shape[1] * x.shape[2]
    scale = pool_scale(x_scale, y_scale, count)
    x_zero, y_zero = check_zero("x_zero", x_zero, x.dtype), check_zero("y_zero", y_zero, x.dtype)
    lo, hi = type_range(x.dtype)
    y = q_output(out, (x.shape[0], x.shape[3]), x.dtype)
    return x, -x_zero * count, scale, y_zero, lo, hi, np.empty(x.shape[3], dtype=np.int64), y


def run_qlinear_global_avg_pool(x, bias, scale, y_zero, lo, hi, acc, y):
    _qlinear_pool_jit(x, bias, scale, y_zero, lo, hi, acc, y)
    return y


def qlinear_global_avg_pool(x, *, x_scale, x_zero, y_scale, y_zero, out=None):
    """The fast kernel: (n, h, w, c) -> (n, c), integer sums over the pixels."""
    return run_qlinear_global_avg_pool(*check_qlinear_global_avg_pool(x, x_scale=x_scale, x_zero=x_zero,
                                                                      y_scale=y_scale, y_zero=y_zero, out=out))


@jit
def _qlinear_pool_jit(x, bias, scale, y_zero, lo, hi, acc, y):
    n, h, w, c = x.shape
    for i in range(n):
        acc[:] = bias
        for r in range(h):
            for col in range(w):
                for k in range(c):
                    acc[k] += x[i, r, col, k]
        for k in range(c):
            y[i, k] = requantize_float(acc[k], scale, y_zero, lo, hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qlinear_global_avg_pool", qlinear_global_avg_pool, qlinear_global_avg_pool_ref,
                  check_qlinear_global_avg_pool, run_qlinear_global_avg_pool),)
