"""The quantized product of 1x1 layers and of standard convolutions, on 8-bit operands with
AVX-512 VNNI (_simd.py): exact integer sums without any float, 4-5x the multiply-adds per second
of float32 sgemm here.

    acc[r, o] = b[o] + sum_k (x[r, k] - x_zero) * ws[k, o]          (ws = w - w_zero)

where row r of x is a row of a matrix (a 1x1 layer: k runs over c_in) or the window of output
pixel r of a convolution (k runs over its k_h * k_w * c_in taps, x_pad = x_zero in the padding).

VNNI multiplies an unsigned byte by a signed byte, so both sides are shifted into those types
once, and what the shifts add is taken back out per row and per column:

    xu  = x as uint8 (an int8 x is flipped: x + 128),     xu_zero = x_zero (+ 128 for int8)
    ws8 = ws - e[o], e[o] the smallest shift that puts column o in [-128, 127] (0 for int8 weights)

    sum_k (x - x_zero) * ws = sum_k xu * ws8  +  e[o] * rowsum[r]  -  xu_zero * colsum[o]  -  e[o] * K * xu_zero

with rowsum[r] = sum_k xu[r, k] (only where some e[o] != 0), colsum[o] = sum_k ws8[k, o] and K the
number of taps: the last two terms and the bias b are one integer per column (`col_term`).

A row is read as `segments` runs of `run` bytes (a multiple of 4), the run of segment s at
row_at[r] + s * step[r]: one run of c_in bytes for a matrix; for a window, its k_h rows of
k_w * c_in bytes each, straight from the image (step: one image row), rounded up to 4 bytes
whose weights are 0. A window that reaches into the padding is first copied, with x_zero for
the padding, into a small buffer (`_rows`).

ws8 is packed once, at load time, the way the instruction reads it: `packed[k4, o, j] =
ws8[4 * k4 + j, o]`, so the 64 bytes at (k4, o .. o + 15) are four taps of 16 output channels.
One step of the inner loop broadcasts four taps of a row (4 bytes) to all lanes and adds their
products into 16 outputs. A 4-row x 48-column block of outputs lives in 12 registers for the
whole sum, and each packed load serves 4 rows. Columns are padded to a multiple of 48 with zero
weights; rows past the end read the last row again (the results are not stored). rowsum is one
more VPDPBUSD per row and step, against bytes of 1 (0 for the rounding bytes).

TFLite's fixed-point requantization and ONNX Runtime's float32 one run in registers
(epilogue.requantize_16) and store bytes; LiteRT's double (REAL, int8 FULLY_CONNECTED) keeps the
sums in a block of int32 (`tile`, in cache) for epilogue.py. Blocks
and their order depend on the shape only, so the bits never depend on the thread count.

Needs: sums that fit int32 (`fits`); a 1x1 layer of any c_in (its rows rounded up to 4 bytes,
the last row copied where that would read past x).

Cost: rows * K * c_out MACs (plus the padding's), 64 per instruction; the epilogue in registers.
"""

import numpy as np
from numba import prange

from .._jit import jit, parallel_jit
from .._product import PARTS
from .._simd import add, broadcast4, broadcast_lane, dot_u8s8, load, load_u8, mul, splat, store, store_bytes, xor, zeros
from .epilogue import REAL, epilogue, lane_constants, requantize_16

ROWS, COLS = 4, 48  # the register block: 4 rows x 3 vectors of 16 outputs
TILE_INTS = 1 << 15  # outputs per block of rows: 128 KB of int32 sums, within the L2


def fits(taps):
    """True when sums over `taps` products (rounded up to 4 per run) fit int32: |xu * ws8| <= 255 * 128 each, plus the row
    terms |e * rowsum| <= 128 * 255 * taps."""
    return taps * (255 * 128 + 128 * 255) < (1 << 31)


def pack(ws, run, x_zero, signed_x, b, rq, real):
    """The weights minus their zero points, laid out for the loop, once: ws (segments, taps,
    c_out), the taps of each run of a row (windows), each run rounded up to `run` bytes whose
    weights are 0 (K_pad = segments * run). Returns (packed (K_pad/4, n_pad, 4) int8, lanes
    (8, n_pad) int32, col_term (c_out,) int64, flip, ones (K_pad/4, 16) int32, sums_col).
    - lanes: the per-column constants the loop loads 16 at a time: e, col_term (wrapped to int32,
      as the runtime's int32 accumulator wraps) and epilogue.lane_constants' six (from rq and
      real: fixed point or float scale);
    - ones: per step of 4 bytes, 1 in each byte that is a tap;
    - sums_col: how the loop gets the row sums: -1, not needed (every e is 0); a packed column
      < n_pad whose weights are the ones (the first padding column, where y's last vector has
      one: its sums come free with the others); n_pad, one more VPDPBUSD per row and step
      against ones."""
    segments, taps, c_out = ws.shape
    rows = np.zeros((segments, run, c_out), np.int64)
    rows[:, :taps] = ws
    ws, k_pad = rows.reshape(-1, c_out), segments * run
    is_tap = np.arange(k_pad) % run < taps
    top, bottom = ws[is_tap].max(axis=0, initial=0), ws[is_tap].min(axis=0, initial=0)
    e = np.where(top > 127, top - 127, np.where(bottom < -128, bottom + 128, 0))
    ws8 = np.where(is_tap[:, None], ws - e, 0)
    n_pad = -(-c_out // COLS) * COLS
    packed = np.zeros((k_pad // 4, n_pad, 4), np.int8)
    packed[:, :c_out] = ws8.reshape(k_pad // 4, 4, c_out).transpose(0, 2, 1)
    xu_zero = int(x_zero) + (128 if signed_x else 0)
    col_term = np.asarray(b, dtype=np.int64) - xu_zero * ws8.sum(axis=0) - e * int(is_tap.sum()) * xu_zero
    lanes = np.zeros((8, n_pad), np.int32)
    lanes[0, :c_out] = e
    lanes[1, :c_out] = (col_term + (1 << 31)) % (1 << 32) - (1 << 31)
    lanes[2:] = lane_constants(n_pad, rq[:, :c_out], real[:c_out])
    ones = np.repeat(is_tap.reshape(-1, 4).astype(np.uint8)[:, None, :], 16, axis=1).reshape(-1, 64)
    sums_col = -1  # no row sums needed
    if e.any():
        sums_col = c_out if c_out % 16 else n_pad
        if sums_col < n_pad:  # a padding column in y's last vector: its weights the ones
            packed[:, c_out] = ones[:, :4]
    flip = 0x80808080 if signed_x else 0  # an int8 byte ^ 0x80 is that byte + 128, as uint8
    return packed, lanes, col_term, flip, np.ascontiguousarray(ones).view(np.int32), sums_col


def windows(n, h, width, c_in, k_h, k_w, stride, top, left, h_out, w_out):
    """The geometry the loop reads rows by, as one int64 array: a convolution's windows (x NHWC of
    that shape; run = k_w * c_in rounded up to 4 bytes). A matrix (m, c_in) is the 1x1
    convolution of an (m, 1, 1, c_in) image: windows(m, 1, 1, c_in, 1, 1, 1, 0, 0, 1, 1)."""
    run = -(-k_w * c_in // 4) * 4
    return np.array([n, h, width, c_in, k_h, k_w, stride, top, left, h_out, w_out, run], np.int64)


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
def _rows(x, x_zero, geo, r0, r1, rows_at, steps, border):
    """rows_at[i], steps[i] for rows r0 + i of the block (rows past r1 repeat the last): the
    address of the row's first run and the bytes to its next. A window inside the image (whose
    reads, rounded up to 4 bytes, stay inside x) is read where it is; any other is copied into
    border (k_h runs of `run` bytes per row), x_zero standing for the padding. The rows of a
    matrix (1x1 windows of 1x1 images) are one multiply each."""
    n, h, width, c_in, k_h, k_w, stride, top, left, h_out, w_out, run = geo
    x_at, x_end = x.ctypes.data, x.ctypes.data + x.size
    matrix = k_h == 1 and k_w == 1 and h == 1 and width == 1 and h_out == 1 and w_out == 1  # row r: image r
    image, oy, ox = r0 // (h_out * w_out), r0 // w_out % h_out, r0 % w_out
    reach = (k_h - 1) * width * c_in + run  # the bytes a window's reads span from its first
    ox_first, ox_last = -(-left // stride), (width - k_w + left) // stride  # windows inside, along a row
    for i in range(rows_at.shape[0]):
        if r0 + i >= r1:
            rows_at[i], steps[i] = rows_at[i - 1], steps[i - 1]
            continue
        if matrix:
            at = x_at + (r0 + i) * c_in
            if at + run <= x_end:
                rows_at[i], steps[i] = at, 0
            else:
                rows_at[i], steps[i] = _copy_window(x, x_zero, geo, r0 + i, 0, 0, border, i), run
            continue
        iy0, ix0 = oy * stride - top, ox * stride - left
        at = x_at + ((image * h + iy0) * width + ix0) * c_in
        if 0 <= iy0 <= h - k_h and ox_first <= ox <= ox_last and at + reach <= x_end:
            rows_at[i], steps[i] = at, width * c_in
        else:
            rows_at[i], steps[i] = _copy_window(x, x_zero, geo, image, iy0, ix0, border, i), run
        ox += 1
        if ox == w_out:
            ox, oy = 0, oy + 1
            if oy == h_out:
                oy, image = 0, image + 1


@jit
def _copy_window(x, x_zero, geo, image, iy0, ix0, border, i):
    """The window at x[image, iy0, ix0] copied into slot i of border (k_h runs of `run` bytes),
    x_zero for its taps outside the image; returns the slot's address."""
    n, h, width, c_in, k_h, k_w, stride, top, left, h_out, w_out, run = geo
    slot = border.ctypes.data + i * k_h * run
    for p in range(k_h):
        for q in range(k_w):
            tap = slot + p * run + q * c_in
            iy, ix = iy0 + p, ix0 + q
            inside = 0 <= iy < h and 0 <= ix < width
            src = x.ctypes.data + ((image * h + iy) * width + ix) * c_in
            for c in range(0, c_in, 16):  # 16 bytes at a time, the last masked
                count = min(16, c_in - c)
                store_bytes(tap + c, load_u8(src + c, count) if inside else splat(x_zero), count)
    return slot


@jit
def _finish(kind, v, o, row_sum, lanes, y_row_at, n, y_zero, lo, hi):
    """Outputs o .. o + 15 of a row, from their sums v: the row and column terms, the runtime's
    requantization, the zero point and the clamp (epilogue.requantize_16), stored as bytes (those
    of the n columns y has)."""
    if o >= n:
        return
    at, step = lanes.ctypes.data + 4 * o, 4 * lanes.shape[1]
    v = add(add(v, mul(load(at), row_sum)), load(at + step))
    store_bytes(y_row_at + o, requantize_16(kind, v, at + 2 * step, step, y_zero, lo, hi), n - o)


@jit
def _keep(v, o, row_sum, lanes, tile_at):
    """Sums o .. o + 15 of a row, with their row term, to the block's int32 tile."""
    store(tile_at, add(v, mul(load(lanes.ctypes.data + 4 * o), row_sum)))


@jit
def _sums(rows_at, steps, border, segments, run, flip, packed, ones, lanes, sums_col, kind, y, y_zero, lo, hi, tile,
          r0, r1, c0, c1):
    """The block's outputs, 4 rows x 48 columns at a time: the sums over the rows' runs in 12
    registers (a strip's vectors that hold no column of y or of the row sums are skipped), then
    either requantized into y in registers (kind FIXED_POINT or FLOAT_SCALE) or kept in
    tile[r - r0, o - c0] (REAL). The strips go from the last to the first, so that row sums
    packed as a column (sums_col, see pack) are known before any strip's outputs. (border, which
    some rows_at point into, is passed to keep it alive: numba frees a local array after its
    last use as an array, and an address is not one. Without it the block's tile was allocated
    over it.)"""
    n, n_pad = y.shape[1], packed.shape[1]
    w_at, t_at, y_at, ones_at = packed.ctypes.data, tile.ctypes.data, y.ctypes.data, ones.ctypes.data
    flip_lanes = splat(flip)
    used = max(n, sums_col + 1) if sums_col < n_pad else n  # the columns worth computing
    packed_sums = c0 <= sums_col < c1  # else, where needed, the ones dots along the first strip
    last = c0 + (c1 - c0 - 1) // COLS * COLS
    for r in range(r0, r1, ROWS):
        i = r - r0
        x0, x1, x2, x3 = rows_at[i], rows_at[i + 1], rows_at[i + 2], rows_at[i + 3]
        d0, d1, d2, d3 = steps[i], steps[i + 1], steps[i + 2], steps[i + 3]
        s0 = zeros(); s1 = zeros(); s2 = zeros(); s3 = zeros()
        for c in range(last, c0 - 1, -COLS):
            a00 = zeros(); a01 = zeros(); a02 = zeros()
            a10 = zeros(); a11 = zeros(); a12 = zeros()
            a20 = zeros(); a21 = zeros(); a22 = zeros()
            a30 = zeros(); a31 = zeros(); a32 = zeros()
            vectors = min(3, (used - c + 15) // 16)
            ones_dots = sums_col >= 0 and not packed_sums and c == last
            for s in range(segments):
                for k in range(0, run, 4):
                    w = w_at + ((s * run + k) * n_pad + 4 * c)  # packed[(s * run + k) // 4, c:c + 48, :]
                    u0 = xor(broadcast4(x0 + s * d0 + k), flip_lanes)
                    u1 = xor(broadcast4(x1 + s * d1 + k), flip_lanes)
                    u2 = xor(broadcast4(x2 + s * d2 + k), flip_lanes)
                    u3 = xor(broadcast4(x3 + s * d3 + k), flip_lanes)
                    w0 = load(w)
                    a00 = dot_u8s8(a00, u0, w0); a10 = dot_u8s8(a10, u1, w0)
                    a20 = dot_u8s8(a20, u2, w0); a30 = dot_u8s8(a30, u3, w0)
                    if vectors > 1:
                        w1 = load(w + 64)
                        a01 = dot_u8s8(a01, u0, w1); a11 = dot_u8s8(a11, u1, w1)
                        a21 = dot_u8s8(a21, u2, w1); a31 = dot_u8s8(a31, u3, w1)
                    if vectors > 2:
                        w2 = load(w + 128)
                        a02 = dot_u8s8(a02, u0, w2); a12 = dot_u8s8(a12, u1, w2)
                        a22 = dot_u8s8(a22, u2, w2); a32 = dot_u8s8(a32, u3, w2)
                    if ones_dots:
                        one = load(ones_at + 16 * (s * run + k))
                        s0 = dot_u8s8(s0, u0, one); s1 = dot_u8s8(s1, u1, one)
                        s2 = dot_u8s8(s2, u2, one); s3 = dot_u8s8(s3, u3, one)
            if packed_sums and c <= sums_col < c + COLS:
                v, lane = (sums_col - c) // 16, sums_col % 16
                s0 = broadcast_lane(a00 if v == 0 else (a01 if v == 1 else a02), lane)
                s1 = broadcast_lane(a10 if v == 0 else (a11 if v == 1 else a12), lane)
                s2 = broadcast_lane(a20 if v == 0 else (a21 if v == 1 else a22), lane)
                s3 = broadcast_lane(a30 if v == 0 else (a31 if v == 1 else a32), lane)
            for j, (v0, v1, v2, row_sum) in enumerate(((a00, a01, a02, s0), (a10, a11, a12, s1),
                                                       (a20, a21, a22, s2), (a30, a31, a32, s3))):
                if kind != REAL and r + j < r1:
                    row_at = y_at + (r + j) * n
                    _finish(kind, v0, c, row_sum, lanes, row_at, n, y_zero, lo, hi)
                    _finish(kind, v1, c + 16, row_sum, lanes, row_at, n, y_zero, lo, hi)
                    _finish(kind, v2, c + 32, row_sum, lanes, row_at, n, y_zero, lo, hi)
                elif kind == REAL:
                    t = t_at + 4 * ((i + j) * (c1 - c0) + (c - c0))
                    _keep(v0, c, row_sum, lanes, t)
                    _keep(v1, c + 16, row_sum, lanes, t + 64)
                    _keep(v2, c + 32, row_sum, lanes, t + 128)


@jit
def _block_jit(x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi, y, j,
               row_step, col_step):
    """Block j of y: its rows' addresses (and border copies), then its outputs."""
    m, n_pad = y.shape[0], packed.shape[1]
    k_h, run = geo[4], geo[11]
    col_blocks = -(-n_pad // col_step)
    r0, c0 = (j // col_blocks) * row_step, (j % col_blocks) * col_step
    r1, c1 = min(m, r0 + row_step), min(n_pad, c0 + col_step)
    if r1 <= r0 or c1 <= c0 or c0 >= y.shape[1]:
        return
    rows = -(-(r1 - r0) // ROWS) * ROWS
    rows_at, steps = np.empty(rows, np.int64), np.empty(rows, np.int64)
    border = np.empty(rows * k_h * run, np.uint8)
    _rows(x, x_zero, geo, r0, r1, rows_at, steps, border)
    tile = np.empty((rows if kind == REAL else 0, c1 - c0), np.int32)
    _sums(rows_at, steps, border, k_h, run, flip, packed, ones, lanes, sums_col, kind, y, y_zero, lo, hi, tile, r0, r1,
          c0, c1)
    if kind == REAL:
        epilogue(kind, tile[:r1 - r0].reshape(1, r1 - r0, c1 - c0), col_term, rq, real, y_zero, lo, hi, y, r0, c0)


@parallel_jit
def product_jit(x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi, y):
    """The blocks shared out across numba's threads."""
    row_step, col_step = blocks(y.shape[0], packed.shape[1])
    count = -(-y.shape[0] // row_step) * -(-packed.shape[1] // col_step)
    for j in prange(count):
        _block_jit(x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi, y, j,
                   row_step, col_step)


@jit
def product_serial_jit(x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi,
                       y):
    """The same blocks in the same order on the calling thread."""
    row_step, col_step = blocks(y.shape[0], packed.shape[1])
    count = -(-y.shape[0] // row_step) * -(-packed.shape[1] // col_step)
    for j in range(count):
        _block_jit(x, x_zero, geo, flip, packed, ones, lanes, sums_col, col_term, kind, rq, real, y_zero, lo, hi, y, j,
                   row_step, col_step)
