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
pixels whose window lies inside x and the border around them; the inside ones at stride 1 in runs
of whole pixels, two output rows at once, at stride 2 two pixels at a time; rows shared out
between numba's threads in blocks.
"""

import numpy as np
from numba import prange
from numpy.lib.stride_tricks import sliding_window_view

from ._checks import as_bias, as_float32, check_fused_clamp, check_window, inside_range, output, zeros_aligned
from ._jit import jit, num_threads, parallel_jit


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
        if num_threads() == 1:  # the same rows in the same order, without a parallel launch
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


# The fast paths read the weights and the bias from one flat array, `taps`, whose rows (tap
# p * 3 + q, then the bias) lie a constant TAPS_STRIDE floats apart. Why: before a vectorised
# channel loop LLVM checks at run time that y overlaps none of the arrays the loop reads, one
# check per pair of pointers whose distance it does not know; w[p, q, c] gives nine pointers c
# floats apart (c known only at run time), taps one group. With the rows summed first (below),
# a quarter off the 112x112x32 layer, whose channel loops are two vectors long; with taps as a
# (10, c) array the checks cost more than they did on w. The 16 extra floats keep the ten rows
# in different L1 cache sets. Wider layers (c > MAX_TAPS) take the single-pixel path on w.
# Each row holds w[p, q] repeated along the row: the stride-1 runs (below) read a whole run of
# pixels with one channel loop. taps starts on a page (zeros_aligned): unaligned, each of
# its 64-byte loads straddled two cache lines (8-15% slower on V2's large layers, one thread).
MAX_TAPS = 2048
TAPS_STRIDE = MAX_TAPS + 16
# Floats per stride-1 run: 10 rows of 256 floats (10 KiB) stay in L1 beside the input rows. Two
# rows at once, one thread, against runs of 512: 0.84-0.91x on 32-960 channels; 1024 took
# 1.12-1.31x, 128 up to 1.47x (144 channels in shares of 72, not whole vectors); runs of 2048
# floats (80 KiB of taps) were 1.2-1.35x slower than pairs of pixels on V2's first layer.
RUN_FLOATS = 256
# Tried and not kept (time against these paths, one thread): 3 or 4 pixels per pass at stride 1,
# 1.2-2.9x on 32-192 channels (the overlap checks grow as stores x loads: 4 x 28 pointers); 4 per
# pass at stride 2, not vectorised at all (3-5x), nor 2x2 per pass at stride 2 (two rows of
# pairs sharing an input row: 3-3.8x); channel blocks of 16 with a compile-time trip count, not
# vectorised either (LLVM will not pay the checks for 16 iterations; 3.7x); the left and right
# border pixels of inside rows in one pass of six taps (w[p, q0 + q] for a q0 known at run
# time) instead of the border path's five passes: 1.02-1.07x.


@jit
def run_pixels(c):
    """Pixels per stride-1 run: as many whole pixels of c channels as fit RUN_FLOATS, at least one."""
    return max(1, RUN_FLOATS // c)


def taps_3x3(w, b, c_in):
    """w (3, 3, c) and b laid out once per layer for the fast paths: row p * 3 + q of the flat
    (10 * TAPS_STRIDE,) array holds w[p, q] as often as it fits MAX_TAPS floats, row 9 the bias.
    Empty unless the layer is MobileNet's case (3x3, m = 1) with at most MAX_TAPS channels.
    (The runs read only RUN_FLOATS floats of each row: the layout serves any run length, so the
    run length is the loops' choice alone, never a contract between this and the loops.)"""
    k_h, k_w, c = w.shape
    if (k_h, k_w) != (3, 3) or c != c_in or c > MAX_TAPS:
        return np.zeros(0, dtype=np.float32)
    reps = MAX_TAPS // c
    taps = zeros_aligned((10, TAPS_STRIDE))
    taps[:9, :reps * c] = np.tile(w.reshape(9, c), reps)
    taps[9, :reps * c] = np.tile(b, reps)
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
    about one to hand a block to a thread), and at least 8 blocks to share between threads; an
    even count where that still leaves 8 blocks, so that the stride-1 runs take the rows of a
    block two at a time (14 rows in 7 blocks of 2 were 4 against 3 on two threads: no faster)."""
    total = y.shape[0] * y.shape[1]
    rows = max(1, min(-(-4096 // (y.shape[2] * y.shape[3])), total // 8))
    return rows + 1 if rows % 2 and total // (rows + 1) >= 8 else rows


@jit
def _depthwise_3x3_rows_jit(x, w, b, taps, stride, top, left, has_clamp, lo, hi, y, r0, r1):
    """Output rows r0 .. r1 - 1 (counted over all images). This is where a path is chosen: rows
    whose windows cross the top or bottom padding by the border path; in the others the outputs
    whose window crosses the left or right padding by the border path too, and the inside ones
    by runs of whole pixels at stride 1 (two rows at once when the next row of the block is
    inside as well), two at a time at stride 2 with an odd last one alone, or all alone when
    c > MAX_TAPS."""
    h, width = x.shape[1], x.shape[2]
    h_out, w_out = y.shape[1], y.shape[2]
    oy0, oy1 = inside_range(h, h_out, 3, stride, top)  # rows whose windows are inside x
    ox0, ox1 = inside_range(width, w_out, 3, stride, left)  # the same for columns
    row = r0
    while row < r1:
        i, oy = row // h_out, row % h_out
        iy = oy * stride - top
        if not oy0 <= oy < oy1:
            _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, oy, 0, w_out)
            row += 1
            continue
        runs = stride == 1 and taps.size > 0
        rows = 2 if runs and row + 1 < r1 and oy + 1 < oy1 else 1
        for r in range(oy, oy + rows):
            _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, r, 0, ox0)
            _depthwise_3x3_border_jit(x, w, b, stride, top, left, has_clamp, lo, hi, y, i, r, ox1, w_out)
        if runs:
            _depthwise_3x3_runs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, rows, ox0, ox1)
        else:  # stride-2 pairs over ox0 .. ox2 - 1, the rest alone
            ox2 = ox0 + (ox1 - ox0) // 2 * 2 if stride == 2 and taps.size > 0 else ox0
            _depthwise_3x3_stride2_pairs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, ox0, ox2)
            _depthwise_3x3_inside_jit(x, w, b, stride, left, has_clamp, lo, hi, y, i, oy, iy, ox2, ox1)
        row += rows


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
def _depthwise_3x3_runs_jit(x, taps, left, has_clamp, lo, hi, y, i, oy, iy, rows, ox0, ox1):
    """Stride 1, windows inside x: outputs ox0 .. ox1 - 1 of rows oy .. oy + rows - 1 (1 or 2) as
    runs of run_pixels(c) whole pixels. Along a row of NHWC data one pixel to the right is c
    floats further, so float k of a run of outputs reads floats k, k + c, k + 2c of three input
    rows, times taps rows that repeat w[p, q] along the run: one channel loop per run instead of
    one per pixel, and LLVM's overlap checks before it as often."""
    c, width = y.shape[3], x.shape[2]
    xf, yf = x.reshape(-1), y.reshape(-1)
    step = run_pixels(c)
    part = -(-c // -(-c // RUN_FLOATS))  # channels per run: all c, or a share of at most RUN_FLOATS
    # Unsigned offsets: numba wraps negative signed indexes, a test per index that would turn
    # the loop's vector loads into gathers; these offsets are never negative.
    u = np.uint64
    for c0 in range(0, c, part):
        t = taps[c0:]
        for ox in range(ox0, ox1, step):
            x0 = ((i * x.shape[1] + iy) * width + ox - left) * c + c0
            y0 = ((i * y.shape[1] + oy) * y.shape[2] + ox) * c + c0
            n = min(step, ox1 - ox) * min(part, c - c0)
            if rows == 2:
                _depthwise_3x3_run2_jit(xf, t, yf, u(n), u(x0), u(c), u(width * c), u(y0), u(y.shape[2] * c),
                                        has_clamp, lo, hi)
            else:
                _depthwise_3x3_run_jit(xf, t, yf, u(n), u(x0), u(c), u(width * c), u(y0), has_clamp, lo, hi)


@jit
def _depthwise_3x3_run_jit(xf, taps, yf, n, x0, c, row, y0, has_clamp, lo, hi):
    """yf[y0 + k] for k < n: the three input rows start at xf[x0], xf[x0 + row], xf[x0 + 2 row];
    tap (p, q) reads row p at k + q * c and taps row p * 3 + q at k; the bias is taps row 9."""
    x1, x2, c2, t = x0 + row, x0 + row + row, c + c, TAPS_STRIDE
    for k in range(n):
        v = (taps[9 * t + k]
             + (xf[x0 + k] * taps[k] + xf[x0 + c + k] * taps[t + k] + xf[x0 + c2 + k] * taps[2 * t + k])
             + (xf[x1 + k] * taps[3 * t + k] + xf[x1 + c + k] * taps[4 * t + k] + xf[x1 + c2 + k] * taps[5 * t + k])
             + (xf[x2 + k] * taps[6 * t + k] + xf[x2 + c + k] * taps[7 * t + k] + xf[x2 + c2 + k] * taps[8 * t + k]))
        yf[y0 + k] = min(max(v, lo), hi) if has_clamp else v


@jit
def _depthwise_3x3_run2_jit(xf, taps, yf, n, x0, c, row, y0, y_row, has_clamp, lo, hi):
    """Two output rows of a run: yf[y0 + k] as _depthwise_3x3_run_jit, and yf[y0 + y_row + k] from
    the three input rows one row further down. The two share two input rows (6 loads instead of
    12) and every weight (10 loads instead of 20): 11 loads per output instead of 19, 0.66-0.84x
    the one-row runs' time (one thread, 32-384 channels)."""
    x1, x2, x3, c2, t = x0 + row, x0 + row + row, x0 + row + row + row, c + c, TAPS_STRIDE
    for k in range(n):
        w00, w01, w02, w10, w11 = taps[k], taps[t + k], taps[2 * t + k], taps[3 * t + k], taps[4 * t + k]
        w12, w20, w21, w22, bias = taps[5 * t + k], taps[6 * t + k], taps[7 * t + k], taps[8 * t + k], taps[9 * t + k]
        r10, r11, r12 = xf[x1 + k], xf[x1 + c + k], xf[x1 + c2 + k]  # input rows 1 and 2: both outputs'
        r20, r21, r22 = xf[x2 + k], xf[x2 + c + k], xf[x2 + c2 + k]
        v0 = (bias + (xf[x0 + k] * w00 + xf[x0 + c + k] * w01 + xf[x0 + c2 + k] * w02)
              + (r10 * w10 + r11 * w11 + r12 * w12) + (r20 * w20 + r21 * w21 + r22 * w22))
        v1 = (bias + (r10 * w00 + r11 * w01 + r12 * w02) + (r20 * w10 + r21 * w11 + r22 * w12)
              + (xf[x3 + k] * w20 + xf[x3 + c + k] * w21 + xf[x3 + c2 + k] * w22))
        if has_clamp:
            v0, v1 = min(max(v0, lo), hi), min(max(v1, lo), hi)
        yf[y0 + k] = v0
        yf[y0 + y_row + k] = v1


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
