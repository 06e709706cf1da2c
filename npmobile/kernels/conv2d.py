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

from ._checks import as_bias, as_float32, check_clamp, check_pad, check_stride, conv_output_size
from ._jit import jit


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


def conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None):
    """The fast kernel: float32 in, float32 out; same arguments and result as the oracle."""
    x = as_float32("x", x, ndim=4)
    w = as_float32("w", w, ndim=4)
    n, h, width, c_in = x.shape
    k_h, k_w, w_c_in, c_out = w.shape
    if w_c_in != c_in:
        raise ValueError(f"w: expected input channels (axis 2) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    b = as_bias(b, c_out)
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    has_clamp, lo, hi = check_clamp(clamp)
    h_out = conv_output_size("w (kernel height)", h, k_h, stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", width, k_w, stride, left, right)
    y = np.empty((n, h_out, w_out, c_out), dtype=np.float32)
    _conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y)
    return y


@jit
def _conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y):
    n, h, width, c_in = x.shape
    k_h, k_w, _, c_out = w.shape
    h_out, w_out = y.shape[1], y.shape[2]
    for i in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                acc = y[i, oy, ox]
                acc[:] = b
                for p in range(k_h):
                    iy = oy * stride - top + p
                    if iy < 0 or iy >= h:  # zero padding contributes nothing
                        continue
                    for q in range(k_w):
                        ix = ox * stride - left + q
                        if ix < 0 or ix >= width:
                            continue
                        for c in range(c_in):
                            # One input value times a row of w: the inner loop runs over
                            # output channels, unit stride in HWIO, so it vectorises.
                            x_val = x[i, iy, ix, c]
                            w_row = w[p, q, c]
                            for o in range(c_out):
                                acc[o] += x_val * w_row[o]
                if has_clamp:
                    for o in range(c_out):
                        acc[o] = min(max(acc[o], lo), hi)
