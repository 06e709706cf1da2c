"""Exact integer sums on float32 kernels: how the integer convolutions reach BLAS speed.

A quantized convolution's accumulator is a sum of products (x - x_zero) * (w - w_zero) of
integers of at most 9 bits (|.| <= 255), so every product is an integer below 2^16, exact in
float32. A float32 sum of integers is exact while every partial sum stays within 2^24 in
magnitude, whatever order the kernel adds in. For output channel o every partial sum is bounded
by

    max|x - x_zero| * sum_k |w[k, o] - w_zero[o]|

so where that bound is <= 2^24 the float32 kernels (sgemm for pointwise, the float depthwise and
im2col convolutions) compute the integer accumulator exactly, in float32, at float speed; the
epilogue converts it back to an integer, adds the int32 bias and requantizes. Where the bound
does not hold, a pointwise product splits its input channels into chunks that each keep it
(`exact_chunks`), and the depthwise and standard convolutions run their integer loops. For
MobileNet's layers the bound holds in one chunk except for some wide 1x1 layers.
"""

import numpy as np

from .._checks import check_pad, check_stride, conv_output_size
from .._jit import jit
from ._qchecks import check_zero, q_output, requant_args, type_range
from .epilogue import FIXED_POINT, constants, epilogue_rows
from .fixedpoint import requantize_params

EXACT_FLOAT32 = 1 << 24  # every integer of magnitude <= 2^24 is a float32


def x_bound(x_zero, dtype):
    """The largest |x - x_zero| an 8-bit input of this type and zero point can have."""
    lo, hi = type_range(dtype)
    return max(x_zero - lo, hi - x_zero)


def exact_in_float32(ws, bound):
    """True when every output channel's partial sums stay within 2^24: ws is (taps, c_out), the
    weights minus their zero points, bound = x_bound(...)."""
    return float(np.abs(ws.astype(np.float64)).sum(axis=0).max(initial=0) * bound) <= EXACT_FLOAT32


def exact_chunks(ws, bound):
    """Split the rows of ws (c_in, c_out) into the fewest consecutive chunks [k0, k1) that each
    keep bound * sum_k |ws[k, o]| <= 2^24 for every column o. Returns the chunk boundaries
    [0, ..., c_in]."""
    bounds, running = [0], np.zeros(ws.shape[1], dtype=np.float64)
    for k, row in enumerate(np.abs(ws.astype(np.float64))):
        if k > bounds[-1] and ((running + row) * bound).max() > EXACT_FLOAT32:
            bounds.append(k)
            running[:] = 0
        running += row
    return bounds + [ws.shape[0]]


@jit
def minus_zero(x, x_zero, xf):
    """xf = x - x_zero as float32 (exact small integers): the float kernel's input. Flat arrays."""
    for i in range(x.shape[0]):
        xf[i] = np.float32(np.int32(x[i]) - x_zero)


def check_on_float32(check_float, run_float, x, x_zero, ws, b, kind, y_zero, lo, hi, y, *, rq=None, real=None,
                     **attrs):
    """The arguments of run_on_float32: the float kernel (check_float / run_float, e.g. the float
    depthwise convolution) checked once on float32 buffers for x - x_zero and the weights ws
    (already minus their zero points), plus the epilogue's (epilogue.py: kind, and rq or real)."""
    xf = np.empty(x.shape, dtype=np.float32)
    yf = np.empty(y.shape, dtype=np.float32)
    float_args = check_float(xf, ws.astype(np.float32), None, **attrs, out=yf)
    c = y.shape[-1]
    rq, real = constants(c, rq, real)
    return (run_float, float_args, x.reshape(-1), x_zero, xf.reshape(-1), yf.reshape(-1, c), b.astype(np.int64),
            kind, rq, real, y_zero, lo, hi, y.reshape(-1, c), y)


def run_on_float32(run_float, float_args, x_flat, x_zero, xf_flat, sums, b, kind, rq, real, y_zero, lo, hi,
                   y_rows, y):
    """x - x_zero into float32, the float kernel (exact: every sum an integer within 2^24), then
    the integer epilogue: bias and requantization (on numba's threads, as the float kernel)."""
    minus_zero(x_flat, x_zero, xf_flat)
    run_float(*float_args)
    epilogue_rows(kind, sums, b, rq, real, y_zero, lo, hi, y_rows)
    return y


def check_windowed(x, w, c_out, float_kernel, int_loop, *, b, x_zero, w_zero, y_zero, multiplier, shift, stride, pad,
                   clamp, out, lanes=None):
    """The checks qconv2d and qdepthwise_conv2d share once the weights' shape is checked (w is
    (k_h, k_w, ..., c_out)): zero points, the epilogue's arrays, stride, pads and the output.
    Returns the arguments of run_windowed, which choose the loop once: `lanes`, a kernel's own
    integer loop on SIMD lanes as (check, run), where its check returns arguments (not None);
    else float_kernel (the float kernel's (check, run)) on exact integers where the bound above
    holds; else int_loop, called as int_loop(x, x_zero, ws, b, rq, y_zero, lo, hi, stride,
    pad_top, pad_left, acc, y). The first two return y."""
    x_zero = check_zero("x_zero", x_zero, x.dtype)
    b, w_zero, multiplier, shift, y_zero, lo, hi = requant_args(
        c_out, x.dtype, b=b, w_zero=w_zero, multiplier=multiplier, shift=shift, y_zero=y_zero, clamp=clamp)
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    h_out = conv_output_size("w (kernel height)", x.shape[1], w.shape[0], stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", x.shape[2], w.shape[1], stride, left, right)
    y = q_output(out, (x.shape[0], h_out, w_out, c_out), x.dtype)
    ws = w.astype(np.int32) - w_zero
    rq = requantize_params(multiplier, shift)  # per-channel constants of the epilogue
    lanes_args = None if lanes is None else lanes[0](x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, y)
    if lanes_args is not None:
        return True, lanes[1], lanes_args
    if exact_in_float32(ws.reshape(-1, c_out), x_bound(x_zero, x.dtype)):
        return True, run_on_float32, check_on_float32(*float_kernel, x, x_zero, ws, b, FIXED_POINT, y_zero, lo, hi, y,
                                                      rq=rq, stride=stride, pad=(top, bottom, left, right))
    acc = np.empty(y.shape[1:], dtype=np.int32)  # one image's int32 accumulators
    return False, int_loop, (x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, acc, y)


def run_windowed(returns_y, loop, args):
    """The loop chosen once at check (check_windowed): one that returns y (returns_y), or the
    integer loop (whose last argument is the output)."""
    if returns_y:
        return loop(*args)
    loop(*args)
    return args[-1]
