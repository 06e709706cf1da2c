"""Quantized standard convolution (TFLite CONV_2D on uint8/int8, ONNX QLinearConv's arithmetic).

Every tensor holds integers q meaning real = scale * (q - zero_point). With x_zero the input's
zero point, w_zero[o] the weights' (one per tensor for uint8 files, 0 per channel for int8
symmetric ones) and b an int32 bias with scale s_x * s_w[o] and zero point 0:

    acc[n, i, j, o] = b[o] + sum_{p, q, c} (x_pad[n, i*s + p, j*s + q, c] - x_zero) * (w[p, q, c, o] - w_zero[o])
    y[n, i, j, o]   = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + y_zero, lo, hi)

x_pad is x padded with x_zero (real 0), i.e. taps outside the image add nothing. The multiplier
and shift encode M[o] = s_x * s_w[o] / s_y (fixedpoint.conv_multipliers); the rounding is
fixedpoint's: SRDHM rounds (a*b)/2^31 half up, the shift rounds halves away from zero. [lo, hi]
is the fused activation (fixedpoint.activation_range), within the type's range. acc is an int32:
8-bit products are below 2^16, so 2^15 taps cannot overflow it.

Layout: x NHWC uint8/int8; w HWIO of the same kind of 8-bit type; b, w_zero, multiplier, shift
(c_out,) int32. The output has x's dtype.

Cost: the float convolution's, n * h_out * w_out * c_out * k_h * k_w * c_in MACs, in integers.
The fast kernel runs, on a CPU with VNNI, vnni.py's product on the windows read straight from x
(check_windows); elsewhere the float convolution (im2col + sgemm) on x - x_zero and w - w_zero
when that is exact (exact.py: MobileNet's first layer, 27 taps), else its own integer loop.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import Kernel, _simd
from .._jit import jit, num_threads
from ..conv2d import check_conv2d, run_conv2d
from ._qchecks import as_q8
from . import vnni
from .epilogue import FIXED_POINT, constants
from .exact import check_windowed, run_windowed
from .fixedpoint import output_ref, requantize


def qconv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                clamp=None):
    """The oracle: the equations above in int64 NumPy, one einsum over every window."""
    x = np.asarray(x)
    k_h, k_w = w.shape[:2]
    top, bottom, left, right = pad
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = sliding_window_view(xs, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    ws = np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)
    acc = np.einsum("nhwcpq,pqco->nhwo", windows, ws)
    return output_ref(acc, b, multiplier, shift, y_zero, clamp, x.dtype)


def check_qconv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0), clamp=None,
                  out=None):
    """The arguments of run_qconv2d (= exact.run_windowed), checked."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=4)
    c_in = x.shape[3]
    w_c_in, c_out = w.shape[2:]
    if w_c_in != c_in:
        raise ValueError(f"w: expected input channels (axis 2) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    return check_windowed(x, w, c_out, (check_conv2d, run_conv2d), _qconv2d_jit, b=b, x_zero=x_zero, w_zero=w_zero,
                          y_zero=y_zero, multiplier=multiplier, shift=shift, stride=stride, pad=pad, clamp=clamp,
                          out=out, lanes=(check_windows, run_windows))


def check_windows(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, y, kind=FIXED_POINT, real=None):
    """The arguments of run_windows, on a CPU with VNNI (None otherwise): the weights in the
    windows' order (k_h runs of k_w * c_in taps) packed for vnni.py, and the geometry by which it
    reads each window straight from x. kind is the
    epilogue's (epilogue.py: FIXED_POINT with rq, or FLOAT_SCALE with real, ONNX's QLinearConv)."""
    k_h, k_w, c_in, c_out = ws.shape
    geo = vnni.windows(*x.shape, k_h, k_w, stride, top, left, y.shape[1], y.shape[2])
    run = geo[-1]
    if not _simd.USE_VNNI or not vnni.fits(k_h * run):
        return None
    rq, real = constants(c_out, rq, real)
    packed, lanes, col_term, flip, ones, sums_col = vnni.pack(ws.reshape(k_h, k_w * c_in, c_out), run, x_zero,
                                                              x.dtype == np.int8, b, rq, real)
    rows = y.shape[0] * y.shape[1] * y.shape[2]
    return (x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi,
            y.reshape(rows, c_out), y)


def run_windows(*args):
    """The windows' product with the weights on VNNI, requantized in registers (vnni.py);
    returns y (the last argument)."""
    run = vnni.product_jit if num_threads() > 1 else vnni.product_serial_jit
    run(*args[:-1])
    return args[-1]


run_qconv2d = run_windowed


def qconv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0), clamp=None,
            out=None):
    """The fast kernel: vnni.py's product on the windows where the CPU has VNNI; else the float
    convolution on exact integers where exact.py's bound holds, else a numba loop over output
    pixels with an int32 accumulator per channel. The weights minus their zero point are
    computed once, here, not per pixel."""
    return run_qconv2d(*check_qconv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                      shift=shift, stride=stride, pad=pad, clamp=clamp, out=out))


@jit
def _qconv2d_jit(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, pad_top, pad_left, acc, y):
    n, h, width, c_in = x.shape
    k_h, k_w, _, c_out = ws.shape
    for i in range(n):
        for oy in range(y.shape[1]):
            for ox in range(y.shape[2]):
                a = acc[oy, ox]  # this pixel's int32 accumulators
                a[:] = b
                for p in range(k_h):
                    iy = oy * stride - pad_top + p
                    if iy < 0 or iy >= h:
                        continue  # a tap in the padding adds (x_zero - x_zero) * w = 0
                    for q in range(k_w):
                        ix = ox * stride - pad_left + q
                        if ix < 0 or ix >= width:
                            continue
                        for c in range(c_in):
                            xv = np.int32(x[i, iy, ix, c]) - x_zero
                            w_row = ws[p, q, c]
                            for o in range(c_out):
                                a[o] += xv * w_row[o]
                for o in range(c_out):
                    y[i, oy, ox, o] = requantize(a[o], rq, o, y_zero, lo, hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qconv2d", qconv2d, qconv2d_ref, check_qconv2d, run_qconv2d),)
