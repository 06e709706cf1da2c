"""Quantized pointwise (1x1) convolution and fully connected layer, in integers.

    acc[r, o] = b[o] + sum_{c < c_in} (x[r, c] - x_zero) * (w[c, o] - w_zero[o])
    y[r, o]   = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + y_zero, lo, hi)

where r runs over the pixels (n * h * w of them; TFLite CONV_2D 1x1) or over the batch
(FULLY_CONNECTED, `qdense`). Rounding as in fixedpoint.py.

Layout: x NHWC (pointwise) or (n, c_in) (dense), uint8/int8; w IO (c_in, c_out) of the same kind;
b, w_zero, multiplier, shift (c_out,) int32. The output has x's dtype.

Cost: rows * c_in * c_out MACs: most of a MobileNet's work. qproduct.py runs it (the same loop
for every quantized 1x1 layer, with each runtime's epilogue): on 8-bit operands with VNNI where
the CPU has it (vnni.py: integers throughout, the requantization in registers), else exactly on
float32 sgemm (exact.py says why that is exact, and how the input channels are split into chunks
where one float32 sum would not be).
"""

import numpy as np

from .. import Kernel
from ._qchecks import as_q8, check_zero, q_output, requant_args
from .fixedpoint import output_ref, requantize_params
from .epilogue import FIXED_POINT
from .qproduct import check_product, run_product


def qpointwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None):
    """The oracle: the equations above in int64 NumPy (an einsum, no BLAS, no float)."""
    x = np.asarray(x)
    xs = x.astype(np.int64) - x_zero
    ws = np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)
    acc = np.einsum("...c,co->...o", xs, ws)
    return output_ref(acc, b, multiplier, shift, y_zero, clamp, x.dtype)


def check_rows(x_rows, w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp, y_rows, y):
    """The checks shared by qpointwise_conv2d and qdense, x_rows (r, c_in) -> y_rows (r, c_out):
    the arguments of run_rows (qproduct.run_product)."""
    c_out = w.shape[1]
    x_zero = check_zero("x_zero", x_zero, x_rows.dtype)
    b, w_zero, multiplier, shift, y_zero, lo, hi = requant_args(
        c_out, x_rows.dtype, b=b, w_zero=w_zero, multiplier=multiplier, shift=shift, y_zero=y_zero, clamp=clamp)
    ws = w.astype(np.int32) - w_zero
    return check_product(np.ascontiguousarray(x_rows), x_zero, ws, b, FIXED_POINT, y_zero, lo, hi, y_rows, y,
                         rq=requantize_params(multiplier, shift))


# The product and its integer epilogue (qproduct.py: on VNNI, or on float32 sgemm).
run_rows = run_product


def check_qpointwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """The arguments of run_qpointwise_conv2d, checked."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=2)
    n, h, width, c_in = x.shape
    if w.shape[0] != c_in:
        raise ValueError(f"w: expected input channels (axis 0) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    y = q_output(out, (n, h, width, w.shape[1]), x.dtype)
    return check_rows(x.reshape(-1, c_in), w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp,
                      y.reshape(-1, w.shape[1]), y)


run_qpointwise_conv2d = run_rows


def qpointwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """The fast kernel: exact integer products (see the module docstring)."""
    return run_rows(*check_qpointwise_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero,
                                             multiplier=multiplier, shift=shift, clamp=clamp, out=out))


def qdense_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None):
    """The oracle of the fully connected layer: the pointwise oracle on (n, c_in) rows."""
    return qpointwise_conv2d_ref(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                 shift=shift, clamp=clamp)


def check_qdense(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """The arguments of run_qdense, checked."""
    x = as_q8("x", x, ndim=2)
    w = as_q8("w", w, ndim=2)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w: expected input channels (axis 0) = {x.shape[1]} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    y = q_output(out, (x.shape[0], w.shape[1]), x.dtype)
    return check_rows(x, w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp, y, y)


run_qdense = run_rows


def qdense(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """FULLY_CONNECTED: (n, c_in) -> (n, c_out), the pointwise kernel's rows."""
    return run_rows(*check_qdense(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                  shift=shift, clamp=clamp, out=out))


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qpointwise_conv2d", qpointwise_conv2d, qpointwise_conv2d_ref, check_qpointwise_conv2d,
                  run_qpointwise_conv2d),
           Kernel("qdense", qdense, qdense_ref, check_qdense, run_qdense))
