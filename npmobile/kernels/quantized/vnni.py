"""The quantized 1x1 product on 8-bit operands, with AVX-512 VNNI (_simd.py): exact integer
sums without any float, 4-5x the multiply-adds per second of float32 sgemm here.

    acc[r, o] = b[o] + sum_c (x[r, c] - x_zero) * ws[c, o]          (ws = w - w_zero)

VNNI multiplies an unsigned byte by a signed byte, so both sides are shifted into those types
once, and what the shifts add is taken back out per row and per column:

    xu  = x as uint8 (an int8 x is flipped: x + 128),     xu_zero = x_zero (+ 128 for int8)
    ws8 = ws - e[o], e[o] the smallest shift that puts column o in [-128, 127] (0 for int8 weights)

    sum_c (x - x_zero) * ws = sum_c xu * ws8  +  e[o] * rowsum[r]  -  xu_zero * colsum[o]  -  e[o] * c_in * xu_zero

with rowsum[r] = sum_c xu[r, c] (needed only where some e[o] != 0) and colsum[o] = sum_c ws8[c, o]:
the last two terms and the bias b are one integer per column (`col_term`), known at load time.

ws8 is packed once, at load time, the way the instruction reads it: `packed[k4, o, j] =
ws8[4 * k4 + j, o]`, so the 64 bytes at (k4, o .. o + 15) are four input channels of 16 output
channels. One step of the inner loop broadcasts four input channels of a row (4 bytes) to all
lanes and adds their products into 16 outputs. A 4-row x 48-column block of outputs lives in 12
registers for the whole sum over c_in, and each packed load serves 4 rows. Columns are padded
to a multiple of 48 with zero weights; rows past the end read the last row again (the results
are not stored).

The sums go to a block of int32 (`tile`, in cache), then the layer's runtime's epilogue
(epilogue.py) requantizes them into y. Blocks and their order depend on the shape only, so the
bits never depend on the thread count.

Needs: c_in a multiple of 4 (every MobileNet layer; others run on float32 sgemm, qproduct.py)
and sums that fit int32 (`fits`).

Cost: rows * c_in * c_out MACs (plus the padding's), 64 per instruction; the epilogue one pass
over y.
"""

import numpy as np
from numba import prange

from .._jit import jit, parallel_jit
from .._product import PARTS
from .._simd import (add, broadcast4, dot_u8s8, load, maximum, minimum, mul, splat, store, store_bytes, xor,
                     zeros)
from .epilogue import FIXED_POINT, epilogue
from .fixedpoint import lane_params, requantize_lanes

ROWS, COLS = 4, 48  # the register block: 4 rows x 3 vectors of 16 outputs
TILE_INTS = 1 << 15  # outputs per block of rows: 128 KB of int32 sums, within the L2


def fits(c_in):
    """True when a product over c_in input channels can run here: whole groups of 4, and int32
    sums (c_in products |xu * ws8| <= 255 * 128, plus row terms |e * rowsum| <= 128 * 255 * c_in)."""
    return c_in % 4 == 0 and c_in * (255 * 128 + 128 * 255) < (1 << 31)


def pack(ws, x_zero, signed_x, b, rq):
    """The weights (c_in, c_out) minus their zero points, laid out for the loop, once:
    (packed (c_in/4, n_pad, 4) int8, lanes (7, n_pad) int32, col_term (c_out,) int64, flip).
    lanes holds the per-column constants the loop loads 16 at a time: e, col_term (wrapped to
    int32, as the runtime's int32 accumulator wraps), and fixedpoint.lane_params' five (from rq,
    fixedpoint.requantize_params; used by the FIXED_POINT epilogue)."""
    ws = np.asarray(ws, dtype=np.int64)
    c_in, c_out = ws.shape
    top, bottom = ws.max(axis=0, initial=0), ws.min(axis=0, initial=0)
    e = np.where(top > 127, top - 127, np.where(bottom < -128, bottom + 128, 0))
    ws8 = ws - e
    n_pad = -(-c_out // COLS) * COLS
    packed = np.zeros((c_in // 4, n_pad, 4), np.int8)
    packed[:, :c_out] = ws8.reshape(c_in // 4, 4, c_out).transpose(0, 2, 1)
    xu_zero = int(x_zero) + (128 if signed_x else 0)
    col_term = np.asarray(b, dtype=np.int64) - xu_zero * ws8.sum(axis=0) - e * c_in * xu_zero
    lanes = np.zeros((7, n_pad), np.int32)
    lanes[0, :c_out] = e
    lanes[1, :c_out] = (col_term + (1 << 31)) % (1 << 32) - (1 << 31)
    lanes[2:, :c_out] = lane_params(rq[:, :c_out])
    flip = 0x80808080 if signed_x else 0  # an int8 byte ^ 0x80 is that byte + 128, as uint8
    return packed, lanes, col_term, flip


@jit
def blocks(m, n_pad):
    """(row_step, col_step) of the blocks of y: rows in multiples of ROWS, TILE_INTS outputs at
    most, at least PARTS blocks when there are rows enough; a product of few rows (a classifier
    on one image) splits its columns instead, in multiples of COLS."""
    if m < PARTS * ROWS:
        return m, -(-(n_pad // COLS) // PARTS) * COLS
    rows = max(ROWS, TILE_INTS // n_pad // ROWS * ROWS)
    part = -(-m // PARTS)
    return min(rows, -(-part // ROWS) * ROWS), n_pad


@jit
def _finish(v, o, row_sum, lanes, y_row_at, n, y_zero, lo, hi):
    """Outputs o .. o + 15 of a row, from their sums v: the row and column terms, TFLite's
    requantization, the zero point and the clamp, stored as bytes (those of the n columns y has)."""
    if o >= n:
        return
    at, step = lanes.ctypes.data + 4 * o, 4 * lanes.shape[1]
    v = add(add(v, mul(load(at), splat(row_sum))), load(at + step))
    v = requantize_lanes(v, load(at + 2 * step), load(at + 3 * step), load(at + 4 * step), load(at + 5 * step),
                         load(at + 6 * step))
    store_bytes(y_row_at + o, minimum(maximum(add(v, splat(y_zero)), splat(lo)), splat(hi)), n - o)


@jit
def _keep(v, o, row_sum, lanes, tile_at):
    """Sums o .. o + 15 of a row, with their row term, to the block's int32 tile."""
    store(tile_at, add(v, mul(load(lanes.ctypes.data + 4 * o), splat(row_sum))))


@jit
def _sums(x, flip, packed, lanes, row_sums, fused, y, y_zero, lo, hi, tile, r0, r1, c0, c1):
    """The block's outputs, 4 rows x 48 columns at a time: the sums over c_in in 12 registers,
    then either requantized into y (fused: FIXED_POINT) or kept in tile[r - r0, o - c0]."""
    m, c_in = x.shape
    n, n_pad = y.shape[1], packed.shape[1]
    x_at, w_at, t_at, y_at = x.ctypes.data, packed.ctypes.data, tile.ctypes.data, y.ctypes.data
    flip_lanes = splat(flip)
    for r in range(r0, r1, ROWS):
        # the block's last rows may pass the end of x: they read its last row again
        x0 = x_at + r * c_in
        x1 = x_at + min(r + 1, m - 1) * c_in
        x2 = x_at + min(r + 2, m - 1) * c_in
        x3 = x_at + min(r + 3, m - 1) * c_in
        s0, s1, s2, s3 = row_sums[r - r0], row_sums[r - r0 + 1], row_sums[r - r0 + 2], row_sums[r - r0 + 3]
        for c in range(c0, c1, COLS):
            a00 = zeros(); a01 = zeros(); a02 = zeros()
            a10 = zeros(); a11 = zeros(); a12 = zeros()
            a20 = zeros(); a21 = zeros(); a22 = zeros()
            a30 = zeros(); a31 = zeros(); a32 = zeros()
            for k in range(0, c_in, 4):
                w = w_at + (k * n_pad + 4 * c)  # packed[k // 4, c:c + 48, :]
                w0, w1, w2 = load(w), load(w + 64), load(w + 128)
                u = xor(broadcast4(x0 + k), flip_lanes)
                a00 = dot_u8s8(a00, u, w0); a01 = dot_u8s8(a01, u, w1); a02 = dot_u8s8(a02, u, w2)
                u = xor(broadcast4(x1 + k), flip_lanes)
                a10 = dot_u8s8(a10, u, w0); a11 = dot_u8s8(a11, u, w1); a12 = dot_u8s8(a12, u, w2)
                u = xor(broadcast4(x2 + k), flip_lanes)
                a20 = dot_u8s8(a20, u, w0); a21 = dot_u8s8(a21, u, w1); a22 = dot_u8s8(a22, u, w2)
                u = xor(broadcast4(x3 + k), flip_lanes)
                a30 = dot_u8s8(a30, u, w0); a31 = dot_u8s8(a31, u, w1); a32 = dot_u8s8(a32, u, w2)
            if fused:
                for i, (v0, v1, v2, s) in enumerate(((a00, a01, a02, s0), (a10, a11, a12, s1),
                                                     (a20, a21, a22, s2), (a30, a31, a32, s3))):
                    if r + i < r1:
                        row_at = y_at + (r + i) * n
                        _finish(v0, c, s, lanes, row_at, n, y_zero, lo, hi)
                        _finish(v1, c + 16, s, lanes, row_at, n, y_zero, lo, hi)
                        _finish(v2, c + 32, s, lanes, row_at, n, y_zero, lo, hi)
            else:
                for i, (v0, v1, v2, s) in enumerate(((a00, a01, a02, s0), (a10, a11, a12, s1),
                                                     (a20, a21, a22, s2), (a30, a31, a32, s3))):
                    t = t_at + 4 * ((r - r0 + i) * (c1 - c0) + (c - c0))
                    _keep(v0, c, s, lanes, t)
                    _keep(v1, c + 16, s, lanes, t + 64)
                    _keep(v2, c + 32, s, lanes, t + 128)


@jit
def _block_jit(x, flip, packed, lanes, has_e, col_term, kind, rq, real, y_zero, lo, hi, y, j, row_step, col_step):
    """Block j of y: the row sums of x its rows need (where some e != 0), then its outputs."""
    m, c_in, n_pad = x.shape[0], x.shape[1], packed.shape[1]
    col_blocks = -(-n_pad // col_step)
    r0, c0 = (j // col_blocks) * row_step, (j % col_blocks) * col_step
    r1, c1 = min(m, r0 + row_step), min(n_pad, c0 + col_step)
    if r1 <= r0 or c1 <= c0 or c0 >= y.shape[1]:
        return
    rows = -(-(r1 - r0) // ROWS) * ROWS
    row_sums = np.zeros(rows, np.int32)
    if has_e:
        for r in range(r0, r1):
            total = 0
            for k in range(c_in):
                total += x[r, k]
            row_sums[r - r0] = total + (128 * c_in if flip else 0)  # sum of xu = x + 128 for int8
    fused = kind == FIXED_POINT
    tile = np.empty((0 if fused else rows, c1 - c0), np.int32)
    _sums(x, flip, packed, lanes, row_sums, fused, y, y_zero, lo, hi, tile, r0, r1, c0, c1)
    if not fused:
        epilogue(kind, tile[:r1 - r0].reshape(1, r1 - r0, c1 - c0), col_term, rq, real, y_zero, lo, hi, y, r0, c0)


@parallel_jit
def product_jit(x, flip, packed, lanes, has_e, col_term, kind, rq, real, y_zero, lo, hi, y):
    """The blocks shared out across numba's threads."""
    row_step, col_step = blocks(x.shape[0], packed.shape[1])
    count = -(-x.shape[0] // row_step) * -(-packed.shape[1] // col_step)
    for j in prange(count):
        _block_jit(x, flip, packed, lanes, has_e, col_term, kind, rq, real, y_zero, lo, hi, y, j, row_step, col_step)


@jit
def product_serial_jit(x, flip, packed, lanes, has_e, col_term, kind, rq, real, y_zero, lo, hi, y):
    """The same blocks in the same order on the calling thread."""
    row_step, col_step = blocks(x.shape[0], packed.shape[1])
    count = -(-x.shape[0] // row_step) * -(-packed.shape[1] // col_step)
    for j in range(count):
        _block_jit(x, flip, packed, lanes, has_e, col_term, kind, rq, real, y_zero, lo, hi, y, j, row_step, col_step)
