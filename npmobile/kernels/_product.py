"""The matrix product of conv2d, pointwise_conv2d and dense, with its epilogue:

    y[r, o] = clamp(b[o] + sum_c a[r, c] * w[c, o]) (+ s[r, o])     (a transposed: a[c, r])

where s, when given, is the shortcut of a residual add fused into the epilogue (MobileNetV2's
projections): the same float32 additions, in the same order, as a separate add after the layer,
so the same bits, one pass over memory fewer.

The product is cut into blocks of rows (or, when there are fewer rows than columns, of columns)
that numba's threads share out: each thread runs OpenBLAS's sgemm on its block (`_blas.sgemm`,
one thread per call) and then adds the bias and clamps while the block is still in its cache.
One parallel loop per layer: one barrier; on one thread, the same blocks in turn with no parallel
loop at all. Row blocks hold at most BLOCK_FLOATS outputs, half an L2 cache; more blocks than that
cost more than they save, as each sgemm call packs w again (a 14x14 layer split in two on one
thread runs 5% slower). Except when w is small (`blocks`): then blocks of an L1 cost nothing more.

Cost: m * n * k MACs; the epilogue one pass over y, in cache.
"""

import glob

import numpy as np
from numba import prange

from ._blas import HAVE_SGEMM, NO_TRANS, ROW_MAJOR, sgemm, sgemv
from ._jit import jit, num_threads, parallel_jit

TRANS = 112


def _cache_bytes(level, default):
    """One core's data cache of `level` in bytes, from Linux's sysfs; `default` where that is not
    available."""
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(f"{index}/level") as f, open(f"{index}/type") as t:
                if f.read().strip() != str(level) or t.read().strip() == "Instruction":
                    continue
            with open(f"{index}/size") as f:
                text = f.read().strip().upper()  # "2048K"
            return int(text.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        except (OSError, ValueError):
            break
    return default


# The largest block of outputs (in float32 values) one sgemm call computes: half the L2.
BLOCK_FLOATS = max(1 << 14, _cache_bytes(2, 1 << 20) // 2 // 4)
# When w fits in half the L1, blocks hold at most an L1 of outputs (SMALL_BLOCK_FLOATS): packing
# so small a w again for every block costs little, and the epilogue reads the block back from
# the L1 instead of the L2. (Measured on one thread: 12544 x 16 -> 96 24% faster, 3136 x 24 -> 144
# 15%, 784 x 32 -> 192 13%, 12544 x 32 -> 64 22%; with w 256 x 256, such blocks ran 20% slower.)
SMALL_BLOCK_FLOATS = max(1 << 11, _cache_bytes(1, 1 << 15) // 4)


# OpenBLAS packs w a strip of columns at a time, reading one short run from every row: rows a
# multiple of 4 KiB apart all fall in the same cache set, and the strip no longer fits in the
# cache. Rows padded by PAD_FLOATS spread them out (measured on one thread: 49 x 1024 -> 1024
# 17% faster, 49 x 512 -> 1024 16%; V1's last two layers; no other MobileNet shape changed).
PAD_FLOATS = 16


def padded_rows(w):
    """w (k, n) laid out for the product once, when the weights are loaded (engine.fuse): when a
    row of n floats is a multiple of 4 KiB, a (k, n) view into rows of n + PAD_FLOATS; else w."""
    k, n = w.shape
    if n * 4 % 4096:
        return w
    rows = np.zeros((k, n + PAD_FLOATS), np.float32)
    rows[:, :n] = w
    return rows[:, :n]


@jit
def bias_clamp_jit(y, b, has_clamp, lo, hi, has_shortcut, s, r0, r1, c0, c1):
    """The epilogue on the block y[r0:r1, c0:c1], in place, one pass over memory: bias, clamp,
    then the shortcut s (y's shape) when has_shortcut. (One row of the block at a time, as a 1-d
    view indexed from 0: the loop SIMD-vectorises, while indexing y[r, o] directly would run 9x
    slower.)"""
    bias = b[c0:c1]
    for r in range(r0, r1):
        row, s_row = y[r, c0:c1], s[r, c0:c1]
        for o in range(row.shape[0]):
            v = row[o] + bias[o]
            if has_clamp:
                v = min(max(v, lo), hi)
            if has_shortcut:
                v += s_row[o]
            row[o] = v


# The blocks depend on the shape only, never on the thread count: OpenBLAS may round a block of
# another shape differently (its small-matrix kernels), and an output must be the same bits whether
# it ran on one thread, two, or in a worker pinned to one (pickled models, Dask and Ray rows).
PARTS = 2


@jit
def blocks(m, k, n):
    """(row_blocks, col_blocks) that y (m, n) = a (m, k) @ w (k, n) is cut into: the larger side
    of y, as each row block reads all of w and each column block all of a; at least PARTS row
    blocks (a multiple of PARTS) of at most BLOCK_FLOATS outputs (SMALL_BLOCK_FLOATS when w fits
    in half the L1), or PARTS column blocks."""
    if m < n:
        return 1, PARTS
    floats = SMALL_BLOCK_FLOATS if 2 * k * n <= SMALL_BLOCK_FLOATS else BLOCK_FLOATS
    return -(-max(PARTS, -(-m * n // floats)) // PARTS) * PARTS, 1


@jit
def block_bounds(m, n, j, row_blocks, col_blocks):
    """(r0, r1, c0, c1): block j of y (m, n), row-major over the row_blocks x col_blocks grid
    (empty when the grid has more blocks than y has rows or columns)."""
    r_step, c_step = -(-m // row_blocks), -(-n // col_blocks)
    r0, c0 = (j // col_blocks) * r_step, (j % col_blocks) * c_step
    return r0, min(m, r0 + r_step), c0, min(n, c0 + c_step)


@jit
def gemm(a, lda, rows, w, k0, k1, c0, c1, c, ldc, one_row):
    """c[:rows, :c1 - c0] = a[:rows, :k1 - k0] @ w[k0:k1, c0:c1], a and c addresses (row strides
    lda and ldc floats): OpenBLAS's sgemm, or its sgemv when the whole product is one row
    (one_row: a batch-1 classifier, about 4x faster than sgemm). Only then: a one-row block of a
    larger product stays on sgemm, whose kernels may round otherwise than sgemv's (they do with
    OpenBLAS's Haswell kernels), so that the blocks' bits never depend on how rows were cut."""
    ldw = w.strides[0] // 4  # w's row length, or more when its rows are padded (padded_rows)
    w_at = w.ctypes.data + 4 * (k0 * ldw + c0)
    if one_row:
        sgemv(ROW_MAJOR, TRANS, k1 - k0, c1 - c0, np.float32(1), w_at, ldw, a, 1, np.float32(0), c, 1)
    else:
        sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, rows, c1 - c0, k1 - k0, np.float32(1), a, lda, w_at, ldw,
              np.float32(0), c, ldc)


@jit
def _block_jit(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y, j, row_blocks, col_blocks):
    """Block j of y (row-major over the row_blocks x col_blocks grid): one sgemm, then the
    epilogue while the block is in cache."""
    m, n = y.shape
    k = w.shape[0]
    r0, r1, c0, c1 = block_bounds(m, n, j, row_blocks, col_blocks)
    if r1 <= r0 or c1 <= c0:
        return
    if a_transposed and m > 1:  # a is (k, m): block r0.. starts r0 floats into each of its rows
        sgemm(ROW_MAJOR, TRANS, NO_TRANS, r1 - r0, c1 - c0, k, np.float32(1), a.ctypes.data + 4 * r0, m,
              w.ctypes.data + 4 * c0, w.strides[0] // 4, np.float32(0), y.ctypes.data + 4 * (r0 * n + c0), n)
    else:
        gemm(a.ctypes.data + 4 * r0 * k, k, r1 - r0, w, 0, k, c0, c1, y.ctypes.data + 4 * (r0 * n + c0), n, m == 1)
    bias_clamp_jit(y, b, has_clamp, lo, hi, has_shortcut, s, r0, r1, c0, c1)


@parallel_jit
def _product_jit(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y):
    """y = epilogue(a @ w) (a.T @ w when a_transposed), the blocks shared out across numba's threads."""
    row_blocks, col_blocks = blocks(y.shape[0], w.shape[0], y.shape[1])
    for j in prange(row_blocks * col_blocks):
        _block_jit(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y, j, row_blocks, col_blocks)


@jit
def _product_serial_jit(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y):
    """The same blocks in the same order on the calling thread: on one numba thread a parallel
    loop still costs its launch (~1-2 us)."""
    row_blocks, col_blocks = blocks(y.shape[0], w.shape[0], y.shape[1])
    for j in range(row_blocks * col_blocks):
        _block_jit(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y, j, row_blocks, col_blocks)


def product(a, a_transposed, w, b, has_clamp, lo, hi, y, shortcut=None):
    """y (m, n) = clamp(a @ w + b) (+ shortcut, (m, n)), a (m, k) or, when a_transposed, (k, m);
    all C-contiguous but w, of which only each row is (padded_rows)."""
    has_shortcut, s = shortcut is not None, y if shortcut is None else shortcut
    if HAVE_SGEMM:
        run = _product_jit if num_threads() > 1 else _product_serial_jit
        run(a, a_transposed, w, b, has_clamp, lo, hi, has_shortcut, s, y)
        return
    # NumPy built on another BLAS: np.matmul block by block, on the calling thread.
    step = max(1, BLOCK_FLOATS // y.shape[1])
    for r in range(0, y.shape[0], step):
        np.matmul(a[:, r:r + step].T if a_transposed else a[r:r + step], w, out=y[r:r + step])
        bias_clamp_jit(y, b, has_clamp, lo, hi, has_shortcut, s, r, min(r + step, y.shape[0]), 0, y.shape[1])
