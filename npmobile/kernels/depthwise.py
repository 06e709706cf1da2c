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

Read the oracle first (what is computed), then the general loop (the same equation, in float32
and skipping the padding), then MobileNet's case (3x3, m = 1): each output row split into the
pixels whose window lies inside x, computed two at a time (stride 1 or 2) or alone, and the
border around them; rows shared out between numba's threads in blocks.
"""

import numba
import numpy as np
from numba import prange
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import as_bias, as_float32, check_fused_clamp, check_window, inside_range, output
from ._jit import jit, parallel_jit


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


@jit
def _depthwise_conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y):
    """The equation, for any kernel size and depth multiplier m. A tap that lands in the zero
    padding adds nothing, so only the taps inside x are visited (no padded copy of x)."""
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = w.shape
    m = c_out // c_in
    for i in range(n):
        for oy in range(y.shape[1]):
            iy = oy * stride - top  # the window's top-left corner in x
            for ox in range(y.shape[2]):
                ix = ox * stride - left
                out = y[i, oy, ox]  # a view: the c_out outputs of this pixel
                out[:] = b
                for p in range(max(0, -iy), min(k_h, h - iy)):
                    for q in range(max(0, -ix), min(k_w, width - ix)):
                        x_pix = x[i, iy + p, ix + q]
                        w_tap = w[p, q]
                        # Unit stride over channels in both x and w (that is why the layout is
                        # NHWC and HWC): LLVM turns this loop into SIMD instructions.
                        for c in range(c_out):
                            out[c] += x_pix[c // m] * w_tap[c]
                if has_clamp:
                    for c in range(c_out):
                        out[c] = min(max(out[c], lo), hi)


def check_depthwise_conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None, out=None):
    """The arguments of run_depthwise_conv2d, checked and coerced."""
    x = as_float32("x", x, ndim=4)
    w = as_float32("w", w, ndim=3)
    n, c_in = x.shape[0], x.shape[3]
    k_h, k_w, c_out = w.shape
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    b = as_bias(b, c_out)
    has_clamp, lo, hi = check_fused_clamp(clamp)
    stride, top, left, h_out, w_out = check_window(x, k_h, k_w, stride, pad)
    taps = taps_3x3(w, b, c_in)
    return x, w, b, taps, stride, top, left, has_clamp, lo, hi, output(out, (n, h_out, w_out, c_out))


def run_depthwise_conv2d(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y):
    """The loop for this layer: MobileNet's (3x3, one filter per channel) or the general one."""
    if w.shape[0] == 3 and w.shape[1] == 3 and w.shape[2] == x.shape[3]:
        if numba.get_num_threads() == 1:  # the same rows in the same order, without a parallel launch
            _depthwise_3x3_rows_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y, 0, y.shape[0] * y.shape[1])
        else:
            _depthwise_3x3_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y)
    else:
        _depthwise_conv2d_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y)
    return y


def depthwise_conv2d(x, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp=None, out=None):
    """The fast kernel: float32 in, float32 out; same arguments and result as the oracle
    (plus `out`, a preallocated output the engine reuses)."""
    return run_depthwise_conv2d(*check_depthwise_conv2d(x, w, b, stride=stride, pad=pad, clamp=clamp, out=out))


# The pair paths read the weights and the bias from one flat array, `taps`, whose rows (tap
# p * 3 + q, then the bias) lie a constant TAPS_STRIDE floats apart. Why: before a vectorised
# channel loop LLVM checks at run time that y overlaps none of the arrays the loop reads, one
# check per pair of pointers whose distance it does not know; w[p, q, c] gives nine pointers c
# floats apart (c known only at run time), taps one group. With the rows summed first (below),
# a quarter off the 112x112x32 layer, whose channel loops are two vectors long; with taps as a
# (10, c) array the checks cost more than they did on w. The 16 extra floats keep the ten rows
# in different L1 cache sets. Wider layers (c > MAX_TAPS) take the single-pixel path on w.
MAX_TAPS = 2048
TAPS_STRIDE = MAX_TAPS + 16
# Tried and not kept (time against these paths, one thread): 3 or 4 pixels per pass at stride 1,
# 1.2-2.9x on 32-192 channels (the overlap checks grow as stores x loads: 4 x 28 pointers); 4 per
# pass at stride 2, not vectorised at all (3-5x); channel blocks of 16 with a compile-time trip
# count, not vectorised either (LLVM will not pay the checks for 16 iterations; 3.7x); on up to 32
# channels, runs of whole pixels in one flat channel loop (float k reads x at k, k + c, k + 2c of
# three rows, w repeated along the run): 0.61-0.88x of the pairs called alone, but 1.2-1.35x on
# the first layer inside a model (the engine's buffers), so not kept; two output rows per run,
# 1.3-1.5x on a whole 112x112x32 image though 0.63x on twelve rows in cache.


def taps_3x3(w, b, c_in):
    """w (3, 3, c) and b laid out once per layer for the pair paths: row p * 3 + q of the flat
    (10 * TAPS_STRIDE,) array holds w[p, q], row 9 the bias.
    Empty unless the layer is MobileNet's case (3x3, m = 1) with at most MAX_TAPS channels."""
    k_h, k_w, c = w.shape
    if (k_h, k_w) != (3, 3) or c != c_in or c > MAX_TAPS:
        return np.zeros(0, dtype=np.float32)
    taps = np.zeros((10, TAPS_STRIDE), dtype=np.float32)
    taps[:9, :c] = w.reshape(9, c)
    taps[9, :c] = b
    return taps.reshape(-1)


@parallel_jit
def _depthwise_3x3_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y):
    """MobileNet's depthwise layers (3x3, m = 1) on numba's threads: the output rows (of all
    images) cut into blocks (`prange`), each computed by `_depthwise_3x3_rows_jit`. The blocks
    depend on the shape only, and each output is computed the same way in any block."""
    rows = y.shape[0] * y.shape[1]
    step = _rows_per_block(y)
    for k in prange((rows + step - 1) // step):
        _depthwise_3x3_rows_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y, k * step, min(rows, k * step + step))


@jit
def _rows_per_block(y):
    """Output rows per parallel block: at least 4096 outputs (a few microseconds of work, against
    about one to hand a block to a thread), and at least 8 blocks to share between threads."""
    return max(1, min(-(-4096 // (y.shape[2] * y.shape[3])), y.shape[0] * y.shape[1] // 8))


@jit
def _depthwise_3x3_rows_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y, r0, r1):
    """Output rows r0 .. r1 - 1 (counted over all images). This is where a path is chosen: the
    outputs whose window lies inside x two at a time (stride 1 or 2) and an odd last one alone
    (all alone when c > MAX_TAPS); the others, whose window crosses the padding, by the border
    path."""
    h, width = x.shape[1], x.shape[2]
    h_out, w_out = y.shape[1], y.shape[2]
    ox0, ox1 = inside_range(width, w_out, 3, stride, left)  # windows whose columns are inside x
    # The pairs cover ox0 .. ox2 - 1, the single-pixel path the rest of the inside.
    ox2 = ox0 + (ox1 - ox0) // 2 * 2 if taps.size else ox0
    for row in range(r0, r1):
        i, oy = row // h_out, row % h_out
        iy = oy * stride - top
        if not 0 <= iy <= h - 3:
            _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, oy, 0, w_out)
            continue
        _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, oy, 0, ox0)
        if stride == 1:
            _depthwise_3x3_pairs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox2)
        else:
            _depthwise_3x3_stride2_pairs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox2)
        _depthwise_3x3_inside_jit(x, w, b, stride, left, has_clamp, lo, hi, y, i, oy, iy, ox2, ox1)
        _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, oy, ox1, w_out)


@jit
def _depthwise_3x3_inside_jit(x, w, b, stride, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox1):
    """Outputs ox0 .. ox1 - 1 of row oy, windows inside x, one pixel at a time over all channels.
    The general loop reads and writes y once per tap, 9 times; here the 9 taps of a channel are
    one expression, so the running sum stays in a SIMD register and y is written once (the idea
    of XNNPACK's 3x3 micro-kernels). Each row of taps is summed first, then added to the bias:
    the border path's order, so every path gives the same bits. Plain 4-d indexing, not a view
    per pixel: a view costs a reference count update per pixel."""
    for ox in range(ox0, ox1):
        ix = ox * stride - left
        for c in range(y.shape[3]):
            v = (b[c]
                 + (x[i, iy, ix, c] * w[0, 0, c] + x[i, iy, ix + 1, c] * w[0, 1, c] + x[i, iy, ix + 2, c] * w[0, 2, c])
                 + (x[i, iy + 1, ix, c] * w[1, 0, c] + x[i, iy + 1, ix + 1, c] * w[1, 1, c]
                    + x[i, iy + 1, ix + 2, c] * w[1, 2, c])
                 + (x[i, iy + 2, ix, c] * w[2, 0, c] + x[i, iy + 2, ix + 1, c] * w[2, 1, c]
                    + x[i, iy + 2, ix + 2, c] * w[2, 2, c]))
            y[i, oy, ox, c] = min(max(v, lo), hi) if has_clamp else v


@jit
def _depthwise_3x3_pairs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox1):
    """Stride 1, windows inside x: outputs ox0 .. ox1 - 1 (an even count) two at a time. Two
    neighbours share two of their three columns: computed together they load 12 input values
    instead of 18, and each weight (from `taps`) once for both."""
    t = TAPS_STRIDE
    for ox in range(ox0, ox1, 2):
        ix = ox - left
        for c in range(y.shape[3]):
            w00, w01, w02, w10, w11 = taps[c], taps[t + c], taps[2 * t + c], taps[3 * t + c], taps[4 * t + c]
            w12, w20, w21, w22, bias = taps[5 * t + c], taps[6 * t + c], taps[7 * t + c], taps[8 * t + c], taps[9 * t + c]
            a1, a2 = x[i, iy, ix + 1, c], x[i, iy, ix + 2, c]
            b1, b2 = x[i, iy + 1, ix + 1, c], x[i, iy + 1, ix + 2, c]
            c1, c2 = x[i, iy + 2, ix + 1, c], x[i, iy + 2, ix + 2, c]
            v0 = (bias + (x[i, iy, ix, c] * w00 + a1 * w01 + a2 * w02)
                  + (x[i, iy + 1, ix, c] * w10 + b1 * w11 + b2 * w12)
                  + (x[i, iy + 2, ix, c] * w20 + c1 * w21 + c2 * w22))
            v1 = (bias + (a1 * w00 + a2 * w01 + x[i, iy, ix + 3, c] * w02)
                  + (b1 * w10 + b2 * w11 + x[i, iy + 1, ix + 3, c] * w12)
                  + (c1 * w20 + c2 * w21 + x[i, iy + 2, ix + 3, c] * w22))
            if has_clamp:
                v0, v1 = min(max(v0, lo), hi), min(max(v1, lo), hi)
            y[i, oy, ox, c] = v0
            y[i, oy, ox + 1, c] = v1


@jit
def _depthwise_3x3_stride2_pairs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox1):
    """Stride 2, windows inside x: outputs ox0 .. ox1 - 1 (an even count) two at a time. Two
    neighbours share their middle column: 15 input values instead of 18, and each weight (from
    `taps`) once for both."""
    t = TAPS_STRIDE
    for ox in range(ox0, ox1, 2):
        ix = 2 * ox - left
        for c in range(y.shape[3]):
            w00, w01, w02, w10, w11 = taps[c], taps[t + c], taps[2 * t + c], taps[3 * t + c], taps[4 * t + c]
            w12, w20, w21, w22, bias = taps[5 * t + c], taps[6 * t + c], taps[7 * t + c], taps[8 * t + c], taps[9 * t + c]
            a2, b2, c2 = x[i, iy, ix + 2, c], x[i, iy + 1, ix + 2, c], x[i, iy + 2, ix + 2, c]
            v0 = (bias + (x[i, iy, ix, c] * w00 + x[i, iy, ix + 1, c] * w01 + a2 * w02)
                  + (x[i, iy + 1, ix, c] * w10 + x[i, iy + 1, ix + 1, c] * w11 + b2 * w12)
                  + (x[i, iy + 2, ix, c] * w20 + x[i, iy + 2, ix + 1, c] * w21 + c2 * w22))
            v1 = (bias + (a2 * w00 + x[i, iy, ix + 3, c] * w01 + x[i, iy, ix + 4, c] * w02)
                  + (b2 * w10 + x[i, iy + 1, ix + 3, c] * w11 + x[i, iy + 1, ix + 4, c] * w12)
                  + (c2 * w20 + x[i, iy + 2, ix + 3, c] * w21 + x[i, iy + 2, ix + 4, c] * w22))
            if has_clamp:
                v0, v1 = min(max(v0, lo), hi), min(max(v1, lo), hi)
            y[i, oy, ox, c] = v0
            y[i, oy, ox + 1, c] = v1


@jit
def _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, oy, ox0, ox1):
    """Outputs ox0 .. ox1 - 1 of row oy, windows that cross the padding. The taps inside x form
    a rectangle of rows p0 .. p1 - 1 and columns q0 .. q1 - 1; each row is one pass over the
    channels, so a border pixel costs at most three passes instead of nine."""
    h, width = x.shape[1], x.shape[2]
    iy = oy * stride - top
    p0, p1 = max(0, -iy), min(3, h - iy)
    for ox in range(ox0, ox1):
        ix = ox * stride - left
        q0, q1 = max(0, -ix), min(3, width - ix)
        for c in range(y.shape[3]):
            y[i, oy, ox, c] = b[c]
        for p in range(p0, p1):
            r = iy + p
            if q1 - q0 == 3:
                for c in range(y.shape[3]):
                    y[i, oy, ox, c] += (x[i, r, ix, c] * w[p, 0, c] + x[i, r, ix + 1, c] * w[p, 1, c]
                                        + x[i, r, ix + 2, c] * w[p, 2, c])
            elif q1 - q0 == 2:
                for c in range(y.shape[3]):
                    y[i, oy, ox, c] += (x[i, r, ix + q0, c] * w[p, q0, c]
                                        + x[i, r, ix + q0 + 1, c] * w[p, q0 + 1, c])
            else:
                for q in range(q0, q1):
                    for c in range(y.shape[3]):
                        y[i, oy, ox, c] += x[i, r, ix + q, c] * w[p, q, c]
        if has_clamp:
            for c in range(y.shape[3]):
                y[i, oy, ox, c] = min(max(y[i, oy, ox, c], lo), hi)
