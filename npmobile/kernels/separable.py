"""Depthwise-separable convolution: the paper's building block as one kernel, a 3x3 depthwise
convolution and the pointwise (1x1) convolution that reads its output, computed block by block.

    t[n, i, j, c] = clamp_dw(b_dw[c] + sum_{p, q < 3} x_pad[n, i*s + p, j*s + q, c] * w_dw[p, q, c])
    y[n, i, j, o] = clamp(b[o] + sum_{c < c_in} t[n, i, j, c] * w[c, o])       (+ shortcut[n, i, j, o])

t is the depthwise output (depthwise.py's equation, MobileNet's case: 3x3, one filter per
channel), y the pointwise output (pointwise.py's equation, with its fused shortcut: V2's residual
add). A pointwise convolution mixes channels within each pixel, so output rows r0 .. r1 of y need
only rows r0 .. r1 of t: the layer is cut into blocks of whole output rows, and each block
computes its rows of t into a buffer of its own, which stays in the core's L2 cache (MobileNet's
blocks: at most 450 KB), then multiplies them by w (OpenBLAS's sgemm) and applies the epilogue.
Against the two kernels one after the other: t is never written to memory and read back, and the
layer is one parallel loop instead of two (one launch and one barrier fewer, ~3 us each on two
threads). Measured against the two kernels (interleaved, V2-224's fused layers at batch 1): 0.72-0.98x
their time on two threads, 0.93-1.06x on one.

Cost: n * h_out * w_out * c_in * (9 + c_out) MACs, the paper's D_K^2 M D_F^2 + M N D_F^2; memory:
x read once (plus a row or two again at each block's edge), y written once, w read (and packed by
sgemm) once per block. A layer with fewer pixels than output channels is better left as the two
kernels, whose product cuts w's columns between the threads (`pays`: engine.fuse asks it).

The depthwise rows come from depthwise.py's own rows function, called on the rows of x the block
reads, so each value of t is computed exactly as the depthwise kernel computes it; the product of
a block is `_product`'s block function on that block's rows. The blocks depend on the shape only
(`block_rows`), never on the thread count: the same bits on one thread or two. Against the two
kernels one after the other, y may differ in its last bits (sgemm on other blocks of rows may
round differently); both agree with the oracle within the float32 bound of their dot products.
"""

import numpy as np
from numba import prange

from ._blas import HAVE_SGEMM
from ._checks import check_fused_clamp
from ._jit import jit, num_threads, parallel_jit
from ._product import PARTS, _block_jit, blocks, product
from .depthwise import _depthwise_3x3_rows_jit, check_depthwise_conv2d, depthwise_conv2d_ref, run_depthwise_conv2d
from .pointwise import check_rows, pointwise_conv2d_ref


def separable_conv2d_ref(x, w_dw, b_dw, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp_dw=None, clamp=None,
                         shortcut=None):
    """The oracle: the depthwise oracle, then the pointwise oracle on its output (float64)."""
    t = depthwise_conv2d_ref(x, w_dw, b_dw, stride=stride, pad=pad, clamp=clamp_dw)
    return pointwise_conv2d_ref(t, w, b, clamp=clamp, shortcut=shortcut)


def block_rows(n, h_out, w_out, c_in, c_out):
    """Output rows per block, counted over all images: as many blocks as the product alone is cut
    into (`_product.blocks`: at least PARTS, each at most half an L2 of outputs), each of whole
    rows. The same sgemm calls as the pointwise kernel's, give or take a row of pixels: fewer,
    larger blocks would hold more than the L2; more, smaller ones would pack w more often (V1's
    28x28x256 layer on one thread: 1.04x the two kernels' time with blocks of half the rows).
    A function of the shape only."""
    row_blocks, _ = blocks(n * h_out * w_out, c_in, c_out)
    return -(-n * h_out // max(PARTS, row_blocks))


def pays(pixels, c_in, c_out):
    """Whether a layer of `pixels` output pixels runs faster as this kernel than as the two: when
    the product alone would be cut into blocks of rows (`_product.blocks`), as the blocks here
    are. With fewer pixels than output channels (MobileNet's 7x7 layers, and V1's 14x14 ones) it
    is cut into blocks of w's columns instead: row blocks would each read all of w, and a layer
    has too few rows to share out otherwise (measured, blocks of rows against the two kernels:
    V2's 7x7 layers 1.15-1.27x on one thread, 1.04-1.24x on two; V1's 14x14 1.06-1.09x on one)."""
    return blocks(pixels, c_in, c_out)[1] == 1


@jit
def _depthwise_rows_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp, lo, hi, i, oy0, oy1, t):
    """Rows oy0 .. oy1 - 1 of image i of the depthwise output into t (oy1 - oy0, w_out, c), by
    depthwise.py's rows function on a view of x that starts at the first row those windows read
    (`first`; the padding above it shrinks by as much), so each value is computed exactly as the
    depthwise kernel computes it."""
    n, h, width, c = x.shape
    first = min(h, max(0, oy0 * stride - top))
    x_image = x.reshape(n * h, width, c)[i * h + first:(i + 1) * h].reshape(1, h - first, width, c)
    _depthwise_3x3_rows_jit(x_image, w_dw, b_dw, taps, stride, top + first - oy0 * stride, left,
                            has_clamp, lo, hi, t.reshape(1, oy1 - oy0, t.shape[1], c), 0, oy1 - oy0)


@jit
def _separable_block_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                         w, b, has_clamp, lo, hi, has_shortcut, s, y, j, rows):
    """Block j: output rows r0 .. r1 - 1 (counted over all images). Their depthwise rows go into
    a buffer of the block's own, image by image, then one product with w writes y's rows and the
    epilogue (`_product._block_jit` on those rows)."""
    h_out, w_out, c_out, c = y.shape[1], y.shape[2], y.shape[3], x.shape[3]
    r0, r1 = j * rows, min(y.shape[0] * h_out, j * rows + rows)
    t = np.empty((r1 - r0, w_out, c), dtype=np.float32)
    row = r0
    while row < r1:  # the part of the block in image i
        i, oy0 = row // h_out, row % h_out
        oy1 = min(h_out, oy0 + r1 - row)
        _depthwise_rows_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw, i, oy0, oy1,
                            t[row - r0:row - r0 + oy1 - oy0])
        row += oy1 - oy0
    p0, p1 = r0 * w_out, r1 * w_out  # the block's pixels: rows of the (pixels, c_out) matrix y
    _block_jit(t.reshape(-1, c), False, w, b, has_clamp, lo, hi, has_shortcut, s.reshape(-1, c_out)[p0:p1],
               y.reshape(-1, c_out)[p0:p1], 0, 1, 1)


@parallel_jit
def _separable_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                   w, b, has_clamp, lo, hi, has_shortcut, s, y, rows):
    """Every block, shared out across numba's threads."""
    for j in prange(-(-y.shape[0] * y.shape[1] // rows)):
        _separable_block_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                             w, b, has_clamp, lo, hi, has_shortcut, s, y, j, rows)


@jit
def _separable_serial_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                          w, b, has_clamp, lo, hi, has_shortcut, s, y, rows):
    """The same blocks in the same order on the calling thread (one thread: no parallel launch)."""
    for j in range(-(-y.shape[0] * y.shape[1] // rows)):
        _separable_block_jit(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                             w, b, has_clamp, lo, hi, has_shortcut, s, y, j, rows)


def check_separable_conv2d(x, w_dw, b_dw, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp_dw=None, clamp=None,
                           shortcut=None, out=None):
    """The arguments of run_separable_conv2d, checked and coerced by the two kernels' own checks."""
    # (t: the depthwise output, for its shape only: allocated, never touched, so it costs no memory)
    x, w_dw, b_dw, taps, stride, top, left, _, _, _, t = check_depthwise_conv2d(x, w_dw, b_dw, stride=stride, pad=pad)
    if w_dw.shape != (3, 3, x.shape[3]):
        raise ValueError(f"w_dw: expected a 3x3 filter per input channel, shape (3, 3, {x.shape[3]}) "
                         f"(other depthwise layers run as depthwise_conv2d, then pointwise_conv2d), found {w_dw.shape}")
    has_clamp_dw, lo_dw, hi_dw = check_fused_clamp(clamp_dw)
    _, w, b, has_clamp, lo, hi, s, _, y = check_rows(t, None, w, b, clamp, out, shortcut)
    return (x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw, w, b, has_clamp, lo, hi,
            s is not None, y if s is None else s.reshape(y.shape), y, block_rows(*t.shape, w.shape[1]))


def run_separable_conv2d(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw,
                         w, b, has_clamp, lo, hi, has_shortcut, s, y, rows):
    """The blocks on numba's threads (on the calling thread when there is one)."""
    if not HAVE_SGEMM:  # NumPy on another BLAS: the two kernels one after the other
        t = np.empty(y.shape[:3] + (x.shape[3],), dtype=np.float32)
        run_depthwise_conv2d(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw, t)
        c_out = y.shape[3]
        product(t.reshape(-1, x.shape[3]), False, w, b, has_clamp, lo, hi, y.reshape(-1, c_out),
                s.reshape(-1, c_out) if has_shortcut else None)
        return y
    run = _separable_jit if num_threads() > 1 else _separable_serial_jit
    run(x, w_dw, b_dw, taps, stride, top, left, has_clamp_dw, lo_dw, hi_dw, w, b, has_clamp, lo, hi,
        has_shortcut, s, y, rows)
    return y


def separable_conv2d(x, w_dw, b_dw, w, b=None, *, stride=1, pad=(0, 0, 0, 0), clamp_dw=None, clamp=None,
                     shortcut=None, out=None):
    """The fast kernel: float32 in, float32 out; same arguments and result as the oracle (plus
    `out`, a preallocated output the engine reuses)."""
    return run_separable_conv2d(*check_separable_conv2d(x, w_dw, b_dw, w, b, stride=stride, pad=pad,
                                                        clamp_dw=clamp_dw, clamp=clamp, shortcut=shortcut, out=out))
