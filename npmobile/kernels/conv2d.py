"""Standard convolution: every output channel filters and combines every input channel at once.

    y[n, i, j, o] = b[o] + sum_{p < k_h, q < k_w, c < c_in} x_pad[n, i*s + p, j*s + q, c] * w[p, q, c, o]

where x_pad is x with (top, bottom, left, right) zero padding and s the stride.

Layout: x is NHWC (n, h, w, c_in); w is HWIO (k_h, k_w, c_in, c_out), as Keras stores it; b is
(c_out,).

Cost: n * h_out * w_out * c_out * k_h * k_w * c_in MACs, where
h_out = (h + top + bottom - k_h) // s + 1: the paper's D_K * D_K * M * N * D_F * D_F. In
MobileNet only the first layer (3x3, stride 2, 3 -> 32 channels) is a standard convolution;
every other one is split into a depthwise and a pointwise convolution.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import as_bias, as_float32, check_fused_clamp, check_window, output
from ._product import product
from numba import prange

from ._jit import jit, parallel_jit


def conv2d_ref(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None):
    """The oracle: the equation above in float64, one einsum over every window."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    k_h, k_w = w.shape[:2]
    top, bottom, left, right = pad
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    # (n, h_out, w_out, c_in, k_h, k_w): every window, then every s-th of them.
    windows = sliding_window_view(x_pad, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    y = np.einsum("nhwcpq,pqco->nhwo", windows, w)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    if clamp is not None:
        y = np.clip(y, clamp[0], clamp[1])
    return y


def run_conv2d(x, w_rows, b, stride, top, left, has_clamp, lo, hi, patches, y):
    """Fill the patch matrix, one sgemm, the epilogue; returns y. A 4-d `patches` is the
    transposed matrix that `_im2col_by_tap_jit` fills (few channels), a 6-d one `_im2col_jit`'s."""
    rows = y.reshape(-1, y.shape[3])
    if patches.ndim == 4:
        _im2col_by_tap_jit(x, stride, top, left, y.shape[1], y.shape[2], patches)
        product(patches.reshape(-1, rows.shape[0]), True, w_rows, b, has_clamp, lo, hi, rows)  # sgemm reads the transpose at no cost
    else:
        _im2col_jit(x, stride, top, left, patches)
        product(patches.reshape(rows.shape[0], -1), False, w_rows, b, has_clamp, lo, hi, rows)
    return y


def check_conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None, out=None):
    """The arguments of run_conv2d, with the patch matrix allocated here, once per binding:
    a plan reuses it on every call."""
    x = as_float32("x", x, ndim=4)
    w = as_float32("w", w, ndim=4)
    n, c_in = x.shape[0], x.shape[3]
    k_h, k_w, w_c_in, c_out = w.shape
    if w_c_in != c_in:
        raise ValueError(f"w: expected input channels (axis 2) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    b = as_bias(b, c_out)
    has_clamp, lo, hi = check_fused_clamp(clamp)
    stride, top, left, h_out, w_out = check_window(x, k_h, k_w, stride, pad)
    y = output(out, (n, h_out, w_out, c_out))
    by_tap = k_w * c_in <= 16  # short window rows: gather tap by tap (measured crossover: c_in ~ 6)
    shape = (k_h, k_w, c_in, n * h_out * w_out) if by_tap else (n, h_out, w_out, k_h, k_w, c_in)
    return x, w.reshape(-1, c_out), b, stride, top, left, has_clamp, lo, hi, np.empty(shape, np.float32), y


def conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None, out=None):
    """The fast kernel: float32 in, float32 out; same arguments and result as the oracle
    (plus `out`, a preallocated output the engine reuses).

    It lowers the convolution to one matrix product ("im2col"): each output pixel's window,
    k_h * k_w * c_in values, becomes a row of a patch matrix, and the product of that matrix
    with w seen as (k_h * k_w * c_in, c_out) is the output, computed by BLAS sgemm like a
    pointwise convolution. The patch matrix costs k_h * k_w times the input's memory, cheap for
    MobileNet's only standard convolution (c_in = 3).

    How the patch matrix is filled depends on how long a window row is. With many channels it is
    k_w * c_in consecutive floats of x, copied as one run per window row (`_im2col_jit`, the
    general loop). With few channels (the first layer: 3 taps of 3 channels, 9 floats) the runs
    are too short to copy well, so each tap is gathered across all pixels instead, into the
    transposed matrix (`_im2col_by_tap_jit`). That halves the copy on the first layer, and would
    double it on a wide one.
    """
    return run_conv2d(*check_conv2d(x, w, b, stride=stride, pad=pad, clamp=clamp, out=out))


@jit
def _im2col_jit(x, stride, top, left, patches):
    """patches[i, oy, ox, p, q, :] = x_pad[i, oy*s + p, ox*s + q, :] (zeros in the padding)."""
    n, h, width, c_in = x.shape
    h_out, w_out, k_h, k_w = patches.shape[1:5]
    # In NHWC the k_w taps of one window row are k_w * c_in consecutive floats of x: copy them as
    # one run when the whole row is inside the image, tap by tap only at the border. Flat arrays
    # and explicit offsets keep this inner copy free of per-element bookkeeping.
    run = k_w * c_in
    src = x.reshape(-1)
    dst = patches.reshape(-1)
    d = 0  # offset of the current window row in dst
    for i in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                ix0 = ox * stride - left
                for p in range(k_h):
                    iy = oy * stride - top + p
                    if iy < 0 or iy >= h:
                        dst[d:d + run] = 0
                    elif 0 <= ix0 <= width - k_w:
                        s = ((i * h + iy) * width + ix0) * c_in
                        for j in range(run):
                            dst[d + j] = src[s + j]
                    else:
                        for q in range(k_w):
                            ix = ix0 + q
                            for c in range(c_in):
                                dst[d + q * c_in + c] = x[i, iy, ix, c] if 0 <= ix < width else np.float32(0)
                    d += run


@parallel_jit
def _im2col_by_tap_jit(x, stride, top, left, h_out, w_out, patches_t):
    """patches_t[p, q, c, pixel] = x_pad[i, oy*s + p, ox*s + q, c], where
    pixel = (i*h_out + oy)*w_out + ox (zeros in the padding)."""
    n, h, width, c_in = x.shape
    k_h, k_w = patches_t.shape[:2]
    for tap in prange(k_h * k_w * c_in):  # the rows are independent: shared out across threads
        p, q, c = tap // (k_w * c_in), tap // c_in % k_w, tap % c_in
        # One tap of one channel across every pixel: a contiguous row to write, read from x
        # every stride * c_in floats.
        row = patches_t[p, q, c]
        for i in range(n):
            for oy in range(h_out):
                iy = oy * stride - top + p
                start = (i * h_out + oy) * w_out
                for ox in range(w_out):
                    ix = ox * stride - left + q
                    inside = 0 <= iy < h and 0 <= ix < width
                    row[start + ox] = x[i, iy, ix, c] if inside else np.float32(0)
