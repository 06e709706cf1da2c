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

from ._checks import as_bias, as_float32, check_fused_clamp, check_window, inside_range, output, zeros_aligned
from ._product import product
from numba import prange

from ._jit import jit, num_threads, parallel_jit

# The direct kernel of MobileNet's first layer reads its weights as 27 rows of ROW floats
# (`pack_first_layer`): it takes layers of up to ROW output channels (48 at alpha 1.4), in whole
# SIMD vectors of 16 channels (alpha 0.35, 0.5, 1.0, 1.4; 24 and 40 channels go through im2col:
# computing 16 channels of a pixel twice, or in a second pass, was slower than the patch matrix).
ROW = 64


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
    transposed matrix that `_im2col_by_tap_jit` fills (few channels), a 6-d one `_im2col_jit`'s.
    A 1-d one is no patch matrix but the weights of MobileNet's first layer as the direct
    kernel reads them (`pack_first_layer`): that layer is computed without one."""
    if patches.ndim == 1:
        return run_first_layer(x, w_rows, patches, b, stride, top, left, has_clamp, lo, hi, y)
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
    if (k_h, k_w, c_in) == (3, 3, 3) and c_out % 16 == 0 and 16 <= c_out <= ROW:  # MobileNet's first layer
        return x, w.reshape(-1, c_out), b, stride, top, left, has_clamp, lo, hi, pack_first_layer(w), y
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

    MobileNet's own first layer (3x3 windows over 3 channels, 16, 32, 48 or 64 outputs) skips
    the patch matrix altogether: `run_first_layer` computes each output directly from the 27
    window values (below). That is a quarter faster on one thread than the patch matrix and the
    sgemm, and needs one parallel loop instead of two.
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


# MobileNet's first layer (3x3 windows over the 3 channels of an RGB image, stride 2, 16 to 64
# output channels, a multiple of 16) computed directly, without a patch matrix. Each output
# pixel's 27 window values are read once into registers, and one pass over its output channels
# computes each of them as a single expression: the bias, the 27 products and the clamp, written
# once to y. That pass is an elementwise loop over c_out, contiguous in NHWC, which LLVM turns
# into SIMD instructions (16 channels per AVX-512 instruction). The windows that cross the
# padding (one row and one column of the output) go through `_first_layer_border_jit`, the
# equation tap by tap.
#
# Tried and dropped (V2's layer, one thread, against this version): adding each tap's products
# into y in memory (y[o] += x * w[t, o], 27 passes per pixel) 3-4x slower: a store and a load of
# y per tap, and LLVM's 64-channel vector body never ran on 32 channels; weights indexed
# w[p, q, c, o] 1.6x (27 overlap checks per pixel, one per row of w); flat 1-d offsets for x or
# y 2x (numba's negative-index check turned the stores into scatters); x read inside the channel
# loop 1.9x (27 overlap checks); the last 16 channels computed again for 24 and 40 channels
# 1.06x and 1.18x the patch matrix; the patches of a block of rows built right before that
# block's sgemm in one parallel loop 1.06x the separate passes (gathering 27 values per pixel
# costs its index arithmetic, not memory); FMA contraction 0.95x, but fastmath stays off.

def pack_first_layer(w):
    """w (3, 3, 3, c_out) as the direct kernel reads it: 27 rows of ROW floats, row
    (p * 3 + q) * 3 + c holding w[p, q, c, :], zeros after c_out. The rows' fixed length lets
    LLVM see that all 27 weight loads come from one block of memory: one overlap check against
    y per pixel instead of 27 (a third of the time, measured). Aligned to 64 bytes: each SIMD
    load of weights then reads one cache line, not two (a quarter of the time)."""
    packed = zeros_aligned((27, ROW))
    packed[:, :w.shape[3]] = w.reshape(27, w.shape[3])
    return packed.reshape(-1)


def run_first_layer(x, w_rows, w_packed, b, stride, top, left, has_clamp, lo, hi, y):
    """All output rows, shared out across numba's threads; on one thread the rows are run in a
    plain loop (a parallel loop costs 1-2 us to start even on one thread). Each row's result
    does not depend on which thread computed it: the same bits on any number of threads."""
    args = (x, w_rows, w_packed, b, stride, top, left, has_clamp, lo, hi, y)
    if num_threads() == 1:
        _first_layer_rows_jit(*args, 0, y.shape[0] * y.shape[1])
    else:
        _first_layer_jit(*args)
    return y


@parallel_jit
def _first_layer_jit(x, w_rows, w_packed, b, stride, top, left, has_clamp, lo, hi, y):
    """The output rows of every image, one at a time, across numba's threads."""
    for row in prange(y.shape[0] * y.shape[1]):
        _first_layer_rows_jit(x, w_rows, w_packed, b, stride, top, left, has_clamp, lo, hi, y, row, row + 1)


@jit
def _first_layer_rows_jit(x, w_rows, w_packed, b, stride, top, left, has_clamp, lo, hi, y, r0, r1):
    """Output rows r0 .. r1 - 1 (counted across the batch): the pixels oy0 <= oy < oy1,
    ox0 <= ox < ox1, whose windows lie inside x, by `_first_layer_inside_jit`; the others tap
    by tap."""
    h_out, w_out = y.shape[1], y.shape[2]
    oy0, oy1 = inside_range(x.shape[1], h_out, 3, stride, top)
    ox0, ox1 = inside_range(x.shape[2], w_out, 3, stride, left)
    for row in range(r0, r1):
        i, oy = row // h_out, row % h_out
        if not oy0 <= oy < oy1:
            _first_layer_border_jit(x, w_rows, b, stride, top, left, has_clamp, lo, hi, y, i, oy, 0, w_out)
            continue
        _first_layer_border_jit(x, w_rows, b, stride, top, left, has_clamp, lo, hi, y, i, oy, 0, ox0)
        iy = oy * stride - top
        _first_layer_inside_jit(x, w_packed, b, stride, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox1)
        _first_layer_border_jit(x, w_rows, b, stride, top, left, has_clamp, lo, hi, y, i, oy, ox1, w_out)


@jit
def _first_layer_border_jit(x, w_rows, b, stride, top, left, has_clamp, lo, hi, y, i, oy, ox0, ox1):
    """Outputs ox0 .. ox1 - 1 of row oy, windows that may cross the padding: the equation, tap
    by tap. A tap in the zero padding adds nothing, so only the taps inside x are visited; each
    adds its products with a row of w (w_rows[(p * 3 + q) * c_in + c] = w[p, q, c, :]) to the
    pixel's c_out outputs, a loop over contiguous channels."""
    h, width, c_in = x.shape[1], x.shape[2], x.shape[3]
    iy = oy * stride - top
    for ox in range(ox0, ox1):
        ix = ox * stride - left
        out = y[i, oy, ox]
        out[:] = b
        for p in range(max(0, -iy), min(3, h - iy)):
            for q in range(max(0, -ix), min(3, width - ix)):
                for c in range(c_in):
                    v = x[i, iy + p, ix + q, c]
                    w_tap = w_rows[(p * 3 + q) * c_in + c]
                    for o in range(out.shape[0]):
                        out[o] += v * w_tap[o]
        if has_clamp:
            for o in range(out.shape[0]):
                out[o] = min(max(out[o], lo), hi)


@jit
def _first_layer_inside_jit(x, w_packed, b, stride, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox1):
    """Outputs ox0 .. ox1 - 1 of row oy, whose windows start at row iy and lie inside x (c_out a
    multiple of 16). The 27 window values are read into registers (u: the window's upper row,
    m: middle, d: lower; 3 pixels of 3 channels each), then each output is one expression: the
    sum of each pixel's 3 channels, of a row's 3 pixels, of the 3 rows (a tree: short chains of
    dependent additions). x and y are indexed in 4-d: the indices other than o stay fixed in the
    channel loop, so numba's negative-index checks run once per pixel, outside it."""
    c_out = y.shape[3] // 16 * 16  # a multiple of the SIMD width, as LLVM now sees: no scalar remainder loop
    for ox in range(ox0, ox1):
        ix = ox * stride - left
        u0, u1, u2, u3, u4, u5, u6, u7, u8 = _window_row(x, i, iy, ix)
        m0, m1, m2, m3, m4, m5, m6, m7, m8 = _window_row(x, i, iy + 1, ix)
        d0, d1, d2, d3, d4, d5, d6, d7, d8 = _window_row(x, i, iy + 2, ix)
        for o in range(c_out):
            v = (b[o]
                 + ((_tap(u0, u1, u2, w_packed, 0, o) + _tap(u3, u4, u5, w_packed, 3, o))
                    + _tap(u6, u7, u8, w_packed, 6, o))
                 + ((_tap(m0, m1, m2, w_packed, 9, o) + _tap(m3, m4, m5, w_packed, 12, o))
                    + _tap(m6, m7, m8, w_packed, 15, o))
                 + ((_tap(d0, d1, d2, w_packed, 18, o) + _tap(d3, d4, d5, w_packed, 21, o))
                    + _tap(d6, d7, d8, w_packed, 24, o)))
            if has_clamp:
                v = min(max(v, lo), hi)
            y[i, oy, ox, o] = v


@jit
def _window_row(x, i, r, ix):
    """The 9 values of x a window row reads: pixels ix .. ix + 2 of row r, 3 channels each."""
    return (x[i, r, ix, 0], x[i, r, ix, 1], x[i, r, ix, 2], x[i, r, ix + 1, 0], x[i, r, ix + 1, 1],
            x[i, r, ix + 1, 2], x[i, r, ix + 2, 0], x[i, r, ix + 2, 1], x[i, r, ix + 2, 2])


@jit
def _tap(x0, x1, x2, w_packed, t, o):
    """One window pixel's 3 channels times their weights for output channel o: rows t .. t + 2
    of the packed weights."""
    return x0 * w_packed[t * ROW + o] + x1 * w_packed[(t + 1) * ROW + o] + x2 * w_packed[(t + 2) * ROW + o]
