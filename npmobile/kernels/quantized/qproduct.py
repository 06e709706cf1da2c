"""The product of every quantized 1x1 layer (pointwise convolution, fully connected, QLinearMatMul),
exact, compiled and shared across numba's threads:

    acc[r, o] = b[o] + sum_c (x[r, c] - x_zero) * ws[c, o]         (ws = w - w_zero, int64, exact)
    y[r, o]   = clamp(requantize(acc[r, o]) + y_zero, lo, hi)        (the layer's runtime's epilogue)

Two ways, chosen once per layer by check_product:
- on 8-bit operands with AVX-512 VNNI (vnni.py), where the CPU has it: 4-5x the multiply-adds
  per second of the other way;
- on float32 sgemm, everywhere (below). exact.py says why sgemm computes each sum exactly: every
  product and partial sum within a chunk of input channels (`chunks`: usually one) is an
  integer within 2^24.

On sgemm, y is cut into blocks much as the float product cuts it (`blocks`: a block's float32
copy of x counts too), each block computed by one thread while it stays in that thread's cache:
its rows of x minus x_zero into float32, one sgemm per chunk, then the epilogue: the chunk sums
and the bias added in int64, requantized and stored as 8-bit integers. The blocks are a
function of the shape only, so the bits never depend on the thread count. One parallel loop
per layer; on one thread the same blocks in turn.

The epilogue (`kind`) is the layer's runtime's (epilogue.py).

Cost: rows * c_in * c_out MACs in sgemm; the conversion one pass over x and the epilogue one over
y, both in cache.
"""

import numpy as np
from numba import prange

from .._jit import jit, num_threads, parallel_jit
from .._product import BLOCK_FLOATS, PARTS, block_bounds, gemm
from .. import _simd
from . import vnni
from .epilogue import constants, epilogue
from .exact import exact_chunks, minus_zero, x_bound


def check_product(x_rows, x_zero, ws, b, kind, y_zero, lo, hi, y_rows, y, *, rq=None, real=None):
    """The arguments of run_product, from checked values: x_rows (r, c_in) 8-bit and C-contiguous,
    ws (c_in, c_out) the weights minus their zero points (|.| <= 255), b (c_out,) integers, the
    epilogue's constants (rq: fixedpoint.requantize_params, for FIXED_POINT; real: (c_out,)
    multipliers or scales, for REAL and FLOAT_SCALE), y_rows the (r, c_out) view of the output y.
    The product runs on 8-bit VNNI (vnni.py) where the CPU has it, else on float32 sgemm (below);
    `on_vnni` says which."""
    c_out = ws.shape[1]
    rq, real = constants(c_out, rq, real)
    b = np.asarray(b, dtype=np.int64)
    m, c_in = x_rows.shape
    if _simd.USE_VNNI and vnni.fits(c_in + 3) and y_rows.flags.c_contiguous:
        geo = vnni.windows(m, 1, 1, c_in, 1, 1, 1, 0, 0, 1, 1)  # a matrix: the 1x1 convolution of m pixels
        packed, lanes, col_term, flip, ones, sums_col = vnni.pack(ws[None], geo[-1], x_zero, x_rows.dtype == np.int8, b,
                                                                  rq, real)
        return True, (x_rows, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real,
                      y_zero, lo, hi, y_rows), y
    ws = np.ascontiguousarray(ws, dtype=np.float32)  # exact: small integers
    kb = np.array(exact_chunks(ws, x_bound(x_zero, x_rows.dtype)), dtype=np.int64)
    return False, (x_rows, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y_rows), y


def run_product(on_vnni, args, y):
    """The product and its epilogue, on one thread or shared out; returns y."""
    if on_vnni:
        run = vnni.product_jit if num_threads() > 1 else vnni.product_serial_jit
    else:
        run = _product_jit if num_threads() > 1 else _product_serial_jit
    run(*args)
    return y


@jit
def blocks(m, k, n):
    """(row_blocks, col_blocks) of y (m, n), as _product.blocks but with the block's float32 copy
    of x counted: each block's x rows (k floats each) and outputs (n each) together fit half the
    L2, so the sgemm reads x from the cache the conversion left it in."""
    if m < n:
        return 1, PARTS
    rows = max(1, BLOCK_FLOATS // (k + n))
    return -(-max(PARTS, -(-m // rows)) // PARTS) * PARTS, 1


@jit
def _block_jit(x, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y, j, row_blocks, col_blocks):
    """Block j of y: its x rows into float32, one sgemm per chunk kb[i] .. kb[i + 1] of input
    channels, the epilogue. The block's buffers are allocated here, by the thread that uses them,
    so no buffer is shared between threads or calls; that costs nothing measurable (a 450 KB
    buffer allocated and written in a numba loop took as long as a preallocated one written:
    glibc hands back the block freed by the call before)."""
    m, n = y.shape
    c_in = x.shape[1]
    r0, r1, c0, c1 = block_bounds(m, n, j, row_blocks, col_blocks)
    if r1 <= r0 or c1 <= c0:
        return
    rows, cols = r1 - r0, c1 - c0
    xf = np.empty((rows, c_in), np.float32)
    minus_zero(x[r0:r1].reshape(-1), x_zero, xf.reshape(-1))
    partial = np.empty((kb.shape[0] - 1, rows, cols), np.float32)
    for i in range(kb.shape[0] - 1):
        gemm(xf.ctypes.data + 4 * kb[i], c_in, rows, ws, kb[i], kb[i + 1], c0, c1, partial[i].ctypes.data, cols,
             m == 1)
    epilogue(kind, partial, b, rq, real, y_zero, lo, hi, y, r0, c0)


@parallel_jit
def _product_jit(x, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y):
    """The blocks shared out across numba's threads."""
    row_blocks, col_blocks = blocks(y.shape[0], x.shape[1], y.shape[1])
    for j in prange(row_blocks * col_blocks):
        _block_jit(x, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y, j, row_blocks, col_blocks)


@jit
def _product_serial_jit(x, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y):
    """The same blocks in the same order on the calling thread (no parallel loop's launch)."""
    row_blocks, col_blocks = blocks(y.shape[0], x.shape[1], y.shape[1])
    for j in range(row_blocks * col_blocks):
        _block_jit(x, x_zero, ws, kb, b, kind, rq, real, y_zero, lo, hi, y, j, row_blocks, col_blocks)
