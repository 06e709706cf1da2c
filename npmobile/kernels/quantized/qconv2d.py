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
The fast kernel runs the float convolution (im2col + sgemm) on x - x_zero and w - w_zero when
that is exact (exact.py: MobileNet's first layer, 27 taps), else its own integer loop.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._checks import check_pad, check_stride, conv_output_size
from .._jit import jit
from ..conv2d import check_conv2d, run_conv2d
from ._qchecks import as_q8, check_zero, q_output, requant_args
from .exact import check_on_float32, exact_in_float32, run_on_float32, x_bound
from .fixedpoint import requantize, requantize_params, requantize_ref


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
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    info = np.iinfo(x.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return requantize_ref(acc, multiplier, shift, y_zero, lo, hi).astype(x.dtype)


def check_qconv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0), clamp=None,
                  out=None):
    """The arguments of run_qconv2d, checked: (exact, args), exact choosing the loop."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=4)
    n, h, width, c_in = x.shape
    k_h, k_w, w_c_in, c_out = w.shape
    if w_c_in != c_in:
        raise ValueError(f"w: expected input channels (axis 2) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
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
        return True, check_on_float32(check_conv2d, run_conv2d, x, x_zero, ws, b, rq, y_zero, lo, hi, y,
                                      stride=stride, pad=(top, bottom, left, right))
    acc = np.empty(c_out, dtype=np.int32)
    return False, (x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, acc, y)


def run_qconv2d(exact, args):
    """This layer's loop, chosen once at check: the float kernel on exact integers, or the
    integer loop."""
    if exact:
        return run_on_float32(*args)
    _qconv2d_jit(*args)
    return args[-1]


def qconv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0), clamp=None,
            out=None):
    """The fast kernel: the float convolution on exact integers where exact.py's bound holds, else
    a numba loop over output pixels with an int32 accumulator per channel. The weights minus
    their zero point are computed once, here, not per pixel."""
    return run_qconv2d(*check_qconv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                      shift=shift, stride=stride, pad=pad, clamp=clamp, out=out))


@jit
def _qconv2d_jit(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, pad_top, pad_left, acc, y):
    n, h, width, c_in = x.shape
    k_h, k_w, _, c_out = ws.shape
    for i in range(n):
        for oy in range(y.shape[1]):
            for ox in range(y.shape[2]):
                acc[:] = b
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
                                acc[o] += xv * w_row[o]
                for o in range(c_out):
                    y[i, oy, ox, o] = requantize(acc[o], rq, o, y_zero, lo, hi)
