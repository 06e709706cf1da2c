"""ONNX QLinearConv with group = channels: the depthwise convolution, requantized in float32.

One k x k filter per channel (output channel o reads input channel o // m, m the depth
multiplier), the integer accumulator of TFLite's depthwise kernel, and ONNX Runtime's float
requantization (qlinear.py):

    acc[n, i, j, o] = b[o] + sum_{p, q} (x_pad[n, i*s + p, j*s + q, o // m] - x_zero) * (w[p, q, o] - w_zero[o])
    y[n, i, j, o]   = saturate(rint(float32(float32(acc) * S[o])) + y_zero)

x_pad is x padded with x_zero. Layout: x NHWC uint8/int8; w HWC (k_h, k_w, c_out) uint8/int8;
b, w_zero (c_out,) int32; scale (c_out,) float32. The output has x's dtype.

Cost: n * h_out * w_out * c_out * k_h * k_w MACs. The fast kernel runs, on a CPU with VNNI and a
depth multiplier of 1, qdepthwise.py's integer loop on lanes with this requantization; else the
float depthwise kernel on x - x_zero and w - w_zero, exact in float32 while every sum stays within
2^24 (exact.py): always for up to 258 taps (16 x 16 filters) of 8-bit values. Larger filters are
refused.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import Kernel
from .._checks import check_pad, check_stride, conv_output_size
from ..depthwise import check_depthwise_conv2d, run_depthwise_conv2d
from ._qchecks import as_channel_int32, as_q8, check_zero, q_output, type_range
from .epilogue import FLOAT_SCALE
from .exact import check_on_float32, exact_in_float32, run_on_float32, run_windowed, x_bound
from .qdepthwise import check_lanes, run_lanes
from .qlinear import check_scale, requantize_float_ref


def qlinear_depthwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0)):
    """The oracle: the equations above in int64 NumPy over every window."""
    x = np.asarray(x)
    k_h, k_w, c_out = w.shape
    c_in = x.shape[3]
    top, bottom, left, right = pad
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = sliding_window_view(xs, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    ws = (np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)).reshape(k_h, k_w, c_in, -1)
    acc = np.einsum("nhwcpq,pqcm->nhwcm", windows, ws).reshape(*windows.shape[:3], c_out)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    return requantize_float_ref(acc, scale, y_zero, x.dtype)


def check_qlinear_depthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0),
                                   out=None):
    """The arguments of run_qlinear_depthwise_conv2d, checked."""
    x, w = as_q8("x", x, ndim=4), as_q8("w", w, ndim=3)
    c_in, c_out = x.shape[3], w.shape[2]
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    x_zero = check_zero("x_zero", x_zero, x.dtype)
    y_zero = check_zero("y_zero", y_zero, x.dtype)
    w_zero = as_channel_int32("w_zero", w_zero, c_out, *type_range(w.dtype))
    b = np.zeros(c_out, np.int32) if b is None else as_channel_int32("b", b, c_out)
    scale = check_scale("scale", scale, c_out)
    ws = w.astype(np.int32) - w_zero
    if not exact_in_float32(ws.reshape(-1, c_out), x_bound(x_zero, x.dtype)):
        raise ValueError(f"w: a {w.shape[0]}x{w.shape[1]} filter's sums can exceed 2^24, beyond what this kernel "
                         "computes exactly (at most 258 taps of 8-bit values)")
    # The float kernel checks stride, pads and the output size; `out` must fit its result.
    y = q_output(out, (x.shape[0], *_out_size(x, w, stride, pad), c_out), x.dtype)
    lo, hi = type_range(x.dtype)
    top, _, left, _ = check_pad(pad)
    lanes = check_lanes(x, x_zero, ws, b, None, y_zero, lo, hi, check_stride(stride), top, left, y, kind=FLOAT_SCALE,
                        real=scale)
    if lanes is not None:
        return True, run_lanes, lanes
    return True, run_on_float32, check_on_float32(check_depthwise_conv2d, run_depthwise_conv2d, x, x_zero, ws, b,
                                                  FLOAT_SCALE, y_zero, lo, hi, y, real=scale, stride=stride, pad=pad)


def _out_size(x, w, stride, pad):
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    return (conv_output_size("w (kernel height)", x.shape[1], w.shape[0], stride, top, bottom),
            conv_output_size("w (kernel width)", x.shape[2], w.shape[1], stride, left, right))


# qdepthwise's integer loop on lanes (VNNI), or: x - x_zero into float32, the float depthwise kernel
# (exact), the float requantization.
run_qlinear_depthwise_conv2d = run_windowed


def qlinear_depthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0), out=None):
    """The fast kernel: qdepthwise's loop on lanes, or the float depthwise kernel on exact
    integers, then the requantization."""
    return run_qlinear_depthwise_conv2d(*check_qlinear_depthwise_conv2d(
        x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, scale=scale, stride=stride, pad=pad, out=out))


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qlinear_depthwise_conv2d", qlinear_depthwise_conv2d, qlinear_depthwise_conv2d_ref,
                  check_qlinear_depthwise_conv2d, run_qlinear_depthwise_conv2d),)
