"""Depthwise convolution: one k x k filter per channel, no mixing across channels.

    y[n, i, j, c] = b[c] + sum_{p < k_h, q < k_w} x_pad[n, i*s + p, j*s + q, c // m] * w[p, q, c]

where x_pad is x with (top, bottom, left, right) zero padding, s the stride and m the depth
multiplier: input channel c_in feeds the m output channels c_in*m .. c_in*m + m - 1, so
c_out = c_in * m (Keras' DepthwiseConv2D order, and torch's Conv2d with groups = c_in).

Layout: x is NHWC (n, h, w, c_in); w is HWC (k_h, k_w, c_out); b is (c_out,).

Cost: n * h_out * w_out * c_out * k_h * k_w MACs, where h_out = (h + top + bottom - k_h) // s + 1.
That is the "D_K * D_K * M * D_F * D_F" of the MobileNet paper: a standard convolution costs c_out
times more (every output channel reads every input channel), which is where the
1/N + 1/D_K^2 saving of a depthwise-separable convolution comes from. Each input value is read
k_h * k_w times but used in a single multiply each time: the kernel is bound by its loads, not
by its multiplies, so its time ratio to a standard convolution is worse than its MAC ratio.

Read the oracle first (what is computed), then the fast kernel (how it is computed quickly).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import as_bias, as_float32, check_clamp, check_pad, check_stride, conv_output_size, output
from ._jit import fast_kernel, jit


def depthwise_conv2d_ref(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None):
    """The oracle: the equation above in float64, written to be read, not to be fast."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    k_h, k_w, c_out = w.shape
    c_in = x.shape[3]
    m = c_out // c_in
    top, bottom, left, right = pad
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    # Every k_h x k_w window of every channel: (n, h_out, w_out, c_in, k_h, k_w) after striding.
    windows = sliding_window_view(x_pad, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    # Output channel c = ci * m + j reads input channel ci with its own filter w[:, :, c].
    filters = w.reshape(k_h, k_w, c_in, m)
    y = np.einsum("nhwcpq,pqcm->nhwcm", windows, filters)
    y = y.reshape(y.shape[0], y.shape[1], y.shape[2], c_out)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    if clamp is not None:
        y = np.clip(y, clamp[0], clamp[1])
    return y


@fast_kernel
def depthwise_conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None, out=None):
    """The fast kernel: float32 in, float32 out; same arguments and result as the oracle
    (plus `out`, a preallocated output the engine reuses)."""
    x = as_float32("x", x, ndim=4)
    w = as_float32("w", w, ndim=3)
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = w.shape
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    b = as_bias(b, c_out)
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    has_clamp, lo, hi = check_clamp(clamp)
    h_out = conv_output_size("w (kernel height)", h, k_h, stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", width, k_w, stride, left, right)
    y = output(out, (n, h_out, w_out, c_out))

    def run():
        _depthwise_conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y)
        return y
    return run


@jit
def _depthwise_conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y):
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = w.shape
    m = c_out // c_in
    h_out, w_out = y.shape[1], y.shape[2]
    # MobileNet's depthwise convolutions are all 3x3 with m = 1, and take the first three
    # branches below: two pixels at a time at stride 1, one pixel inside the image, one pixel
    # at the border. Every other k and m takes the last, general one.
    fast_3x3 = k_h == 3 and k_w == 3 and m == 1
    for i in range(n):
        for oy in range(h_out):
            iy = oy * stride - top  # the window's top-left corner in x
            rows_inside = fast_3x3 and 0 <= iy <= h - 3
            ox = 0
            while ox < w_out:
                ix = ox * stride - left
                if rows_inside and stride == 1 and 0 <= ix <= width - 4 and ox + 1 < w_out:
                    # Two neighbouring outputs at stride 1 share two of their three columns:
                    # computed together they load 12 input values instead of 18, and each
                    # weight once for both. A quarter off the stride-1 layers. (Each output is
                    # one expression over its 9 taps, as in the single-pixel branch below.)
                    for c in range(c_out):
                        w00, w01, w02 = w[0, 0, c], w[0, 1, c], w[0, 2, c]
                        w10, w11, w12 = w[1, 0, c], w[1, 1, c], w[1, 2, c]
                        w20, w21, w22 = w[2, 0, c], w[2, 1, c], w[2, 2, c]
                        a1, a2 = x[i, iy, ix + 1, c], x[i, iy, ix + 2, c]
                        b1, b2 = x[i, iy + 1, ix + 1, c], x[i, iy + 1, ix + 2, c]
                        c1, c2 = x[i, iy + 2, ix + 1, c], x[i, iy + 2, ix + 2, c]
                        v0 = (b[c] + x[i, iy, ix, c] * w00 + a1 * w01 + a2 * w02
                              + x[i, iy + 1, ix, c] * w10 + b1 * w11 + b2 * w12
                              + x[i, iy + 2, ix, c] * w20 + c1 * w21 + c2 * w22)
                        v1 = (b[c] + a1 * w00 + a2 * w01 + x[i, iy, ix + 3, c] * w02
                              + b1 * w10 + b2 * w11 + x[i, iy + 1, ix + 3, c] * w12
                              + c1 * w20 + c2 * w21 + x[i, iy + 2, ix + 3, c] * w22)
                        if has_clamp:
                            v0, v1 = min(max(v0, lo), hi), min(max(v1, lo), hi)
                        y[i, oy, ox, c] = v0
                        y[i, oy, ox + 1, c] = v1
                    ox += 2
                    continue
                if rows_inside and 0 <= ix <= width - 3:
                    # The general loop below reads and writes y once per tap, 9 times. Here the
                    # 9 taps of a channel are one expression, so the running sum stays in a SIMD
                    # register and y is written once (the idea of XNNPACK's 3x3 micro-kernels).
                    # Plain 4-d indexing, not a view per tap: a view costs a reference count
                    # update per pixel, a third of the time on the 112x112 layers.
                    for c in range(c_out):
                        v = (b[c]
                             + x[i, iy, ix, c] * w[0, 0, c] + x[i, iy, ix + 1, c] * w[0, 1, c]
                             + x[i, iy, ix + 2, c] * w[0, 2, c]
                             + x[i, iy + 1, ix, c] * w[1, 0, c] + x[i, iy + 1, ix + 1, c] * w[1, 1, c]
                             + x[i, iy + 1, ix + 2, c] * w[1, 2, c]
                             + x[i, iy + 2, ix, c] * w[2, 0, c] + x[i, iy + 2, ix + 1, c] * w[2, 1, c]
                             + x[i, iy + 2, ix + 2, c] * w[2, 2, c])
                        if has_clamp:
                            v = min(max(v, lo), hi)
                        y[i, oy, ox, c] = v
                    ox += 1
                    continue
                if fast_3x3:
                    # The border of a 3x3 layer: the taps inside the image form a rectangle of
                    # rows p0..p1 and columns q0..q1. Each row is one pass over the channels, so a
                    # border pixel costs at most three passes instead of nine.
                    p0, p1 = max(0, -iy), min(3, h - iy)
                    q0, q1 = max(0, -ix), min(3, width - ix)
                    for c in range(c_out):
                        y[i, oy, ox, c] = b[c]
                    for p in range(p0, p1):
                        r = iy + p
                        if q1 - q0 == 3:
                            for c in range(c_out):
                                y[i, oy, ox, c] += (x[i, r, ix, c] * w[p, 0, c] + x[i, r, ix + 1, c] * w[p, 1, c]
                                                    + x[i, r, ix + 2, c] * w[p, 2, c])
                        elif q1 - q0 == 2:
                            for c in range(c_out):
                                y[i, oy, ox, c] += (x[i, r, ix + q0, c] * w[p, q0, c]
                                                    + x[i, r, ix + q0 + 1, c] * w[p, q0 + 1, c])
                        else:
                            for q in range(q0, q1):
                                for c in range(c_out):
                                    y[i, oy, ox, c] += x[i, r, ix + q, c] * w[p, q, c]
                    if has_clamp:
                        for c in range(c_out):
                            y[i, oy, ox, c] = min(max(y[i, oy, ox, c], lo), hi)
                    ox += 1
                    continue
                # Any k and m, near the border too. A tap that lands in the zero padding adds
                # nothing, so it is skipped instead of materialising a padded copy.
                out = y[i, oy, ox]  # a view: the c_out outputs of this pixel
                out[:] = b
                for p in range(k_h):
                    if iy + p < 0 or iy + p >= h:
                        continue
                    for q in range(k_w):
                        if ix + q < 0 or ix + q >= width:
                            continue
                        x_pix = x[i, iy + p, ix + q]
                        w_tap = w[p, q]
                        # Unit stride over channels in both x and w (that is why the layout is
                        # NHWC and HWC): LLVM turns this loop into SIMD instructions.
                        if m == 1:  # no integer division in the common case
                            for c in range(c_out):
                                out[c] += x_pix[c] * w_tap[c]
                        else:
                            for c in range(c_out):
                                out[c] += x_pix[c // m] * w_tap[c]
                if has_clamp:
                    for c in range(c_out):
                        out[c] = min(max(out[c], lo), hi)
                ox += 1
