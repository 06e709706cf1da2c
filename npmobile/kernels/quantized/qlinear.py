"""ONNX's QLinear convolutions and matrix product, with ONNX Runtime's float requantization.

ONNX QLinearConv and QLinearMatMul compute the same integer accumulator as TFLite's CONV_2D:

    acc[r, o] = b[o] + sum_k (x[r, k] - x_zero) * (w[k, o] - w_zero[o])            (an int32)

but bring it to the output's scale in float32, not in fixed point. ONNX Runtime (MLAS'
MlasRequantizeOutput and the symmetric convolution kernels, on x86) does, per output channel o:

    S[o] = float32(float32(s_x * s_w[o]) / s_y)                   (once, when the layer is set up)
    y    = saturate(rint(float32(float32(acc) * S[o])) + y_zero)

float32(acc) rounds an accumulator above 2^24 to nearest (even), the product is one float32
multiplication (rounded to nearest), rint rounds halves to even, and saturate clamps to the
8-bit type (the runtime clamps the float to [min - y_zero, max - y_zero] before rounding: the
same thing, as the bounds are integers). TFLite instead multiplies by an int32 multiplier and
shifts, rounding twice, halves away from zero (fixedpoint.py); docs/quantized.md compares them.

Kernels here, each with its oracle (`_ref`, exact: int64 accumulators and a float64 product that
is exact before its one rounding to float32):
- qlinear_matmul: QLinearMatMul, x (n, c_in) @ w (c_in, c_out), per-column scales;
- qlinear_pointwise_conv2d: a 1x1 QLinearConv on NHWC rows;
- qlinear_conv2d: any other QLinearConv with group 1: on VNNI, qconv2d's product on the windows
  read straight from x; elsewhere a gather of every k x k patch (im2col, padded with x_zero)
  followed by the same product.
All three run the product in qproduct.py: on 8-bit VNNI where the CPU has it (vnni.py), else
exactly on float32 sgemm (exact.py), in chunks of input channels where one float32 sum could
exceed 2^24. Layout: x uint8 or int8 (NHWC, or (n, c_in)); w uint8 or
int8, HWIO / IO; b, w_zero (c_out,) int32; scale (c_out,) float32 = S. The output has x's dtype.

Cost: rows * c_in * c_out MACs (times k * k for qlinear_conv2d), plus one multiply per output.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import Kernel
from .._checks import check_pad, check_stride, conv_output_size
from ._qchecks import as_channel_int32, as_q8, check_zero, q_output, type_range
from .epilogue import FLOAT_SCALE
from .qconv2d import check_windows, run_windows
from .qproduct import check_product, run_product


def output_scales(x_scale, w_scales, y_scale):
    """S[o] = float32(float32(s_x * s_w[o]) / s_y), the product and the quotient each rounded
    to float32 as ONNX Runtime computes them (C++ float arithmetic)."""
    product = np.float32(x_scale) * np.asarray(w_scales, dtype=np.float32).reshape(-1)
    return (product / np.float32(y_scale)).astype(np.float32)


def check_scale(name, scale, c):
    """Per-channel float32 scales (a scalar is broadcast): finite and > 0."""
    scale = np.asarray(scale)
    if scale.dtype.kind != "f":
        raise ValueError(f"{name}: expected float32 scales, found dtype {scale.dtype}")
    scale = np.broadcast_to(scale.astype(np.float32), (c,)) if scale.ndim == 0 else scale.astype(np.float32)
    if scale.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},) (one per output channel), found {scale.shape}")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"{name}: expected finite scales > 0, found [{scale.min()}, {scale.max()}]")
    return np.ascontiguousarray(scale)


# --- the requantization's oracle (its scalar form, for the loops: epilogue.requantize_float) ---

def requantize_float_ref(acc, scale, y_zero, dtype):
    """The oracle: acc wrapped to int32 (the runtime's accumulator), converted to float32 by
    NumPy, multiplied in float64 (exact: two 24-bit significands) and rounded once to float32;
    np.rint (halves to even); the zero point; np.clip to the type."""
    acc32 = np.asarray(acc, dtype=np.int64).astype(np.int32)
    product = (acc32.astype(np.float32).astype(np.float64) * np.asarray(scale, np.float64)).astype(np.float32)
    lo, hi = type_range(dtype)
    return np.clip(np.rint(product.astype(np.float64)) + y_zero, lo, hi).astype(dtype)


# --- the product on rows: QLinearMatMul and the 1x1 QLinearConv ------------------------------

def qlinear_matmul_ref(x, w, b=None, *, x_zero, w_zero, y_zero, scale):
    """The oracle: an int64 einsum, the bias, requantize_float_ref."""
    x = np.asarray(x)
    ws = np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)
    acc = np.einsum("...c,co->...o", x.astype(np.int64) - x_zero, ws)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    return requantize_float_ref(acc, scale, y_zero, x.dtype)


def check_rows(x_rows, w, b, x_zero, w_zero, y_zero, scale, y_rows, y):
    """The checks shared by the three kernels, x_rows (r, c_in) -> y_rows (r, c_out): the
    arguments of run_rows."""
    c_in, c_out = w.shape
    if x_rows.shape[1] != c_in:
        raise ValueError(f"w: expected input channels (axis 0) = {x_rows.shape[1]}, found w of shape {w.shape}")
    x_zero = check_zero("x_zero", x_zero, x_rows.dtype)
    y_zero = check_zero("y_zero", y_zero, x_rows.dtype)
    w_zero = as_channel_int32("w_zero", w_zero, c_out, *type_range(w.dtype))
    b = np.zeros(c_out, np.int64) if b is None else as_channel_int32("b", b, c_out).astype(np.int64)
    scale = check_scale("scale", scale, c_out)
    lo, hi = type_range(x_rows.dtype)
    return check_product(np.ascontiguousarray(x_rows), x_zero, w.astype(np.int32) - w_zero, b, FLOAT_SCALE, y_zero,
                         lo, hi, y_rows, y, real=scale)


# The product (qproduct.py: VNNI or sgemm), then the float requantization (epilogue.py:
# FLOAT_SCALE, requantize_float).
run_rows = run_product


def check_qlinear_matmul(x, w, b=None, *, x_zero, w_zero, y_zero, scale, out=None):
    """The arguments of run_qlinear_matmul, checked."""
    x, w = as_q8("x", x, ndim=2), as_q8("w", w, ndim=2)
    y = q_output(out, (x.shape[0], w.shape[1]), x.dtype)
    return check_rows(x, w, b, x_zero, w_zero, y_zero, scale, y, y)


run_qlinear_matmul = run_rows


def qlinear_matmul(x, w, b=None, *, x_zero, w_zero, y_zero, scale, out=None):
    """The fast kernel: (n, c_in) -> (n, c_out), exact integer products (qproduct.py)."""
    return run_rows(*check_qlinear_matmul(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, scale=scale,
                                          out=out))


def qlinear_pointwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, scale):
    """The oracle of the 1x1 convolution: the matmul oracle on the last axis of NHWC."""
    return qlinear_matmul_ref(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, scale=scale)


def check_qlinear_pointwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, out=None):
    """The arguments of run_qlinear_pointwise_conv2d, checked."""
    x, w = as_q8("x", x, ndim=4), as_q8("w", w, ndim=2)
    y = q_output(out, (*x.shape[:3], w.shape[1]), x.dtype)
    return check_rows(x.reshape(-1, x.shape[3]), w, b, x_zero, w_zero, y_zero, scale, y.reshape(-1, w.shape[1]), y)


run_qlinear_pointwise_conv2d = run_rows


def qlinear_pointwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, out=None):
    """The fast kernel: every pixel's channels are a row of the product."""
    return run_rows(*check_qlinear_pointwise_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero,
                                                    scale=scale, out=out))


# --- any other group-1 convolution: gather the patches, then the same product ----------------

def _windows(x_pad, k_h, k_w, stride):
    """Every k_h x k_w window of a padded NHWC batch: (n, h_out, w_out, c, k_h, k_w), a view."""
    return sliding_window_view(x_pad, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]


def qlinear_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0)):
    """The oracle: the equations in int64 NumPy, one einsum over every window (padded with
    x_zero, which adds nothing)."""
    x = np.asarray(x)
    top, bottom, left, right = pad
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ws = np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)
    acc = np.einsum("nhwcpq,pqco->nhwo", _windows(xs, *w.shape[:2], stride), ws)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    return requantize_float_ref(acc, scale, y_zero, x.dtype)


def check_qlinear_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0), out=None):
    """The arguments of run_qlinear_conv2d, checked: on a CPU with VNNI, qconv2d's product on the
    windows read straight from x (check_windows) with this requantization; else a padded copy of
    x (its border x_zero), the patch matrix the windows are gathered into, and the product's
    arguments (im2col)."""
    x, w = as_q8("x", x, ndim=4), as_q8("w", w, ndim=4)
    n, h, width, c_in = x.shape
    k_h, k_w, w_c_in, c_out = w.shape
    if w_c_in != c_in:
        raise ValueError(f"w: expected input channels (axis 2) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    h_out = conv_output_size("w (kernel height)", h, k_h, stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", width, k_w, stride, left, right)
    y = q_output(out, (n, h_out, w_out, c_out), x.dtype)
    direct = check_windows(x, check_zero("x_zero", x_zero, x.dtype),
                           w.astype(np.int32) - as_channel_int32("w_zero", w_zero, c_out, *type_range(w.dtype)),
                           np.zeros(c_out, np.int64) if b is None else as_channel_int32("b", b, c_out),
                           None, check_zero("y_zero", y_zero, x.dtype), *type_range(x.dtype), stride, top, left, y,
                           kind=FLOAT_SCALE, real=check_scale("scale", scale, c_out))
    if direct is not None:
        return run_windows, direct
    x_pad = np.full((n, h + top + bottom, width + left + right, c_in), check_zero("x_zero", x_zero, x.dtype),
                    dtype=x.dtype)
    inner = x_pad[:, top:top + h, left:left + width]
    cols = np.empty((n, h_out, w_out, c_in, k_h, k_w), dtype=x.dtype)  # rows ordered (c, p, q), as w_rows
    w_rows = np.ascontiguousarray(w.transpose(2, 0, 1, 3).reshape(-1, c_out))
    rows = check_rows(cols.reshape(n * h_out * w_out, -1), w_rows, b, x_zero, w_zero, y_zero, scale,
                      y.reshape(-1, c_out), y)
    return run_im2col, (x, inner, cols, _windows(x_pad, k_h, k_w, stride), rows)


def run_im2col(x, inner, cols, windows, rows):
    """Copy x into the padded buffer, gather every window into the patch matrix, multiply."""
    np.copyto(inner, x)
    np.copyto(cols, windows)
    return run_rows(*rows)


def run_qlinear_conv2d(run, args):
    """The route chosen at check: the windows on VNNI (qconv2d.run_windows) or im2col."""
    return run(*args)


def qlinear_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, scale, stride=1, pad=(0, 0, 0, 0), out=None):
    """The fast kernel: the windows' product on VNNI (qconv2d.check_windows), or im2col, then exact
    integer products (qproduct.py; MobileNet's first layer: k * k * c_in = 27 taps per output)."""
    return run_qlinear_conv2d(*check_qlinear_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero,
                                                    scale=scale, stride=stride, pad=pad, out=out))


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qlinear_conv2d", qlinear_conv2d, qlinear_conv2d_ref, check_qlinear_conv2d, run_qlinear_conv2d),
           Kernel("qlinear_pointwise_conv2d", qlinear_pointwise_conv2d, qlinear_pointwise_conv2d_ref,
                  check_qlinear_pointwise_conv2d, run_qlinear_pointwise_conv2d),
           Kernel("qlinear_matmul", qlinear_matmul, qlinear_matmul_ref, check_qlinear_matmul, run_qlinear_matmul))
