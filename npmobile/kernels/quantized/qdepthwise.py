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

from .._checks import check_pad, check_stride, conv_output_size
from .._jit import jit
from ..depthwise import check_depthwise_conv2d, run_depthwise_conv2d
from ._qchecks import as_q8, check_zero, q_output, requant_args
from .exact import check_on_float32, exact_in_float32, run_on_float32, x_bound
from .fixedpoint import requantize, requantize_params, requantize_ref


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
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    info = np.iinfo(x.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return requantize_ref(acc, multiplier, shift, y_zero, lo, hi).astype(x.dtype)


def check_qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                            clamp=None, out=None):
    """The arguments of run_qdepthwise_conv2d, checked: (exact, args), exact choosing the loop."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=3)
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = w.shape
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    x_zero = check_zero("x_zero", x_zero, x.dtype)
    b, w_zero, multiplier, shift, y_zero, lo, hi = requant_args(
        c_out, x.dtype, b=b, w_zero=w_zero, multiplier=multiplier, shift=shift, y_zero=y_zero, clamp=clamp)
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    h_out = conv_output_size("w (kernel height)", h, k_h, stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", width, k_w, stride, left, right)
    y = q_output(out, (n, h_out, w_out, c_out), x.dtype)
    ws = w.astype(np.int32) - w_zero
    rq = requantize_params(multiplier, shift)  # per-channel constants of the epilogue
    if exact_in_float32(ws.reshape(-1, c_out), x_bound(x_zero, x.dtype)):
        return True, check_on_float32(check_depthwise_conv2d, run_depthwise_conv2d, x, x_zero, ws, b, rq,
                                      y_zero, lo, hi, y, stride=stride, pad=(top, bottom, left, right))
    acc = np.empty(c_out, dtype=np.int32)
    xs = np.empty((h, width, c_in), dtype=np.int32)  # one image minus its zero point
    return False, (x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, xs, acc, y)


def run_qdepthwise_conv2d(exact, args):
    """This layer's loop, chosen once at check: the float kernel on exact integers, or the
    integer loop."""
    if exact:
        return run_on_float32(*args)
    _qdepthwise_jit(*args)
    return args[-1]


def qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                      clamp=None, out=None):
    """The fast kernel: the float kernel on exact integers where exact.py's bound holds (every
    MobileNet layer), else an integer loop with int32 accumulators per pixel."""
    args = check_qdepthwise_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                   shift=shift, stride=stride, pad=pad, clamp=clamp, out=out)
    return run_qdepthwise_conv2d(*args)


@jit
def _qdepthwise_jit(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, pad_top, pad_left, xs, acc, y):
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = ws.shape
    m = c_out // c_in
    for i in range(n):
        # Subtract the zero point once per input value, not once per tap (k_h * k_w times).
        for r in range(h):
            for col in range(width):
                for c in range(c_in):
                    xs[r, col, c] = np.int32(x[i, r, col, c]) - x_zero
        for oy in range(y.shape[1]):
            for ox in range(y.shape[2]):
                acc[:] = b
                for p in range(k_h):
                    iy = oy * stride - pad_top + p
                    if iy < 0 or iy >= h:
                        continue
                    for q in range(k_w):
                        ix = ox * stride - pad_left + q
                        if ix < 0 or ix >= width:
                            continue
                        x_pix = xs[iy, ix]
                        w_tap = ws[p, q]
                        if m == 1:
                            for o in range(c_out):
                                acc[o] += x_pix[o] * w_tap[o]
                        else:
                            for o in range(c_out):
                                acc[o] += x_pix[o // m] * w_tap[o]
                for o in range(c_out):
                    y[i, oy, ox, o] = requantize(acc[o], rq, o, y_zero, lo, hi)
