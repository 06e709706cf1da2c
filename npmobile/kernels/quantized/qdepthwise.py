"""Quantized depthwise convolution (TFLite DEPTHWISE_CONV_2D on uint8/int8).

One k x k filter per channel, in integers. With m the depth multiplier (output channel o reads
input channel o // m), x_zero, w_zero[o], y_zero the zero points and b an int32 bias:

    acc[n, i, j, o] = b[o] + sum_{p, q} (x_pad[n, i*s + p, j*s + q, o // m] - x_zero) * (w[p, q, o] - w_zero[o])
    y[n, i, j, o]   = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + y_zero, lo, hi)

x_pad is x padded with x_zero (a tap in the padding adds nothing). Rounding as in fixedpoint.py
(TFLite's reference depthwise kernel uses the same MultiplyByQuantizedMultiplier as CONV_2D).

Layout: x NHWC; w HWC (k_h, k_w, c_out) of the same 8-bit kind; b, w_zero, multiplier, shift
(c_out,) int32. The output has x's dtype.

Cost: n * h_out * w_out * c_out * k_h * k_w MACs, as the float kernel. The fast kernel runs the
float depthwise kernel on x - x_zero and w - w_zero when that is exact (exact.py: always for a
3x3 filter, 9 * 255 * 255 < 2^24), then converts, adds the bias and requantizes; otherwise its own
integer loop.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import Kernel
from .._jit import jit
from ..depthwise import check_depthwise_conv2d, run_depthwise_conv2d
from ._qchecks import as_q8
from .exact import check_windowed, run_windowed
from .fixedpoint import output_ref, requantize


def qdepthwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1,
                          pad=(0, 0, 0, 0), clamp=None):
    """The oracle: the equations above in int64 NumPy over every window."""
    x = np.asarray(x)
    k_h, k_w, c_out = w.shape
    c_in = x.shape[3]
    m = c_out // c_in
    top, bottom, left, right = pad
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = sliding_window_view(xs, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    ws = (np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)).reshape(k_h, k_w, c_in, m)
    acc = np.einsum("nhwcpq,pqcm->nhwcm", windows, ws).reshape(*windows.shape[:3], c_out)
    return output_ref(acc, b, multiplier, shift, y_zero, clamp, x.dtype)


def check_qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                            clamp=None, out=None):
    """The arguments of run_qdepthwise_conv2d (= exact.run_windowed), checked."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=3)
    c_in, c_out = x.shape[3], w.shape[2]
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    return check_windowed(x, w, c_out, (check_depthwise_conv2d, run_depthwise_conv2d), _qdepthwise_jit, b=b,
                          x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier, shift=shift,
                          stride=stride, pad=pad, clamp=clamp, out=out)


run_qdepthwise_conv2d = run_windowed


def qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                      clamp=None, out=None):
    """The fast kernel: the float kernel on exact integers where exact.py's bound holds (every
    MobileNet layer), else an integer loop, tap by tap, over an int32 accumulator map."""
    args = check_qdepthwise_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                   shift=shift, stride=stride, pad=pad, clamp=clamp, out=out)
    return run_qdepthwise_conv2d(*args)


@jit
def _qdepthwise_jit(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, pad_top, pad_left, acc, y):
    """Tap by tap: each of the k_h * k_w taps adds its shifted, weighted copy of the image to
    acc, the (h_out, w_out, c_out) int32 accumulator map of one image."""
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = ws.shape
    m = c_out // c_in
    h_out, w_out = y.shape[1], y.shape[2]
    for i in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                acc[oy, ox] = b
        for p in range(k_h):
            for q in range(k_w):
                for oy in range(h_out):
                    iy = oy * stride - pad_top + p
                    if 0 <= iy < h:  # a tap in the padding adds (x_zero - x_zero) * w = 0
                        for ox in range(w_out):
                            ix = ox * stride - pad_left + q
                            if 0 <= ix < width:
                                for o in range(c_out):
                                    acc[oy, ox, o] += (np.int32(x[i, iy, ix, o // m]) - x_zero) * ws[p, q, o]
        for oy in range(h_out):
            for ox in range(w_out):
                for o in range(c_out):
                    y[i, oy, ox, o] = requantize(acc[oy, ox, o], rq, o, y_zero, lo, hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qdepthwise_conv2d", qdepthwise_conv2d, qdepthwise_conv2d_ref, check_qdepthwise_conv2d,
                  run_qdepthwise_conv2d),)
