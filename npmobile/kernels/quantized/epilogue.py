"""The last step of every quantized convolution: exact integer sums -> output integers, each
runtime's way (`kind`):

- FIXED_POINT: TFLite's MultiplyByQuantizedMultiplier (fixedpoint.py), with rq its per-channel
  constants (fixedpoint.requantize_params);
- REAL: LiteRT's int8 FULLY_CONNECTED (qfully_connected.py), a double multiplier real[o] and C's
  std::round;
- FLOAT_SCALE: ONNX Runtime's (qlinear.py), float32(acc) * scale[o] in float32, halves to even.

    y[r, o] = clamp(requantize(b[o] + acc[r, o]) + y_zero, lo, hi)

The sums arrive as the float32 kernels left them (exact.py: integers within 2^24, one array per
chunk of input channels); they are added to the int32 bias in int64, as the runtime's int32
accumulator would hold them.

Cost: one pass over the outputs, 0.2-0.3 ns each on one core here (FIXED_POINT's 64-bit
products): a third of the float engine's whole run on a V2 image. Each kind's scalar function
(fixedpoint.requantize, requantize_real, requantize_float) is written without branches, so that
the loops over channels compile to SIMD instructions.
"""

import numpy as np
from numba import prange

from .._jit import jit, parallel_jit
from .._simd import add, fmax, fmin, fmul, load, maximum, minimum, round_to_int, splat, to_float
from .fixedpoint import lane_params, requantize, requantize_lanes

FIXED_POINT, REAL, FLOAT_SCALE = 0, 1, 2


def constants(c, rq=None, real=None):
    """The epilogue's two constant arrays for c output channels, the one its kind does not read
    as zeros: rq (5, c) int64 (fixedpoint.requantize_params, FIXED_POINT) and real (c,) float64
    (REAL's multipliers or FLOAT_SCALE's float32 scales, exact in float64)."""
    rq = np.zeros((5, c), np.int64) if rq is None else rq
    real = np.zeros(c, np.float64) if real is None else np.ascontiguousarray(real, dtype=np.float64)
    return rq, real


@jit
def requantize_real(acc, m, y_zero, lo, hi):
    """REAL: an int32 accumulator times the double m, rounded as C's std::round (halves away from
    zero), plus y_zero, clamped (branch-free: the loops over channels compile to SIMD)."""
    v = np.float64(np.int32(acc)) * m
    t = np.trunc(v)
    t += np.float64(abs(v - t) >= 0.5) * (1.0 if v > 0 else -1.0)
    return min(max(np.int64(t) + y_zero, lo), hi)


@jit
def requantize_float(acc, scale, y_zero, lo, hi):
    """FLOAT_SCALE: an int32 accumulator -> an output integer, as MLAS: float32(acc) * scale in
    float32, clamped to [lo - y_zero, hi - y_zero], rounded half to even, plus y_zero."""
    v = np.float32(np.int32(acc)) * scale  # float32 * float32: one float32 rounding
    v = min(max(v, np.float32(lo - y_zero)), np.float32(hi - y_zero))
    return np.int32(np.rint(v)) + y_zero


def lane_constants(c_pad, rq, real):
    """The per-channel constants requantize_16 loads 16 at a time, as one (6, c_pad) int32 array
    (channels past rq's padded with zeros): fixedpoint.lane_params' five rows from rq
    (FIXED_POINT), then the float32 scales' bits (FLOAT_SCALE)."""
    c = rq.shape[1]
    params = np.zeros((6, c_pad), np.int32)
    params[:5, :c] = lane_params(rq)
    params[5, :c] = np.asarray(real, np.float32).view(np.int32)
    return params


@jit
def requantize_16(kind, v, at, step, y_zero, lo, hi):
    """16 int32 sums (the bias added) -> 16 output integers in int32 lanes, in registers: the
    runtime's requantization (FIXED_POINT: fixedpoint.requantize_lanes; FLOAT_SCALE:
    requantize_float on lanes), the zero point, the clamp. The constants (lane_constants) are
    rows of `step` bytes from address `at`. (REAL, LiteRT's double, has no form on lanes here.)"""
    if kind == FIXED_POINT:
        v = requantize_lanes(v, load(at), load(at + step), load(at + 2 * step), load(at + 3 * step),
                             load(at + 4 * step))
        return minimum(maximum(add(v, splat(y_zero)), splat(lo)), splat(hi))
    v = fmul(to_float(v), load(at + 5 * step))  # float32(acc) * scale, one float32 rounding each
    v = fmin(fmax(v, to_float(splat(lo - y_zero))), to_float(splat(hi - y_zero)))
    return add(round_to_int(v), splat(y_zero))  # halves to even


@jit
def epilogue(kind, partial, b, rq, real, y_zero, lo, hi, y, r0, c0):
    """y[r0 + r, c0 + o] = the runtime's requantization of acc = b[c0 + o] + sum_j partial[j, r, o]
    (the block's exact sums, one per chunk of input channels, each an integer held in float32),
    summed in int64, for the block's columns that y has (a product padded to whole vectors,
    vnni.py, computes a few more). Each kind has its own loop over the columns, written without
    branches, so that it compiles to SIMD instructions. (Its constants are copied for the block's
    columns: a view, rq[:, c0:c1], or an index c0 + o that LLVM cannot prove >= 0 made it 4x
    slower.)"""
    chunks, rows = partial.shape[0], partial.shape[1]
    cols = min(partial.shape[2], y.shape[1] - c0)
    c1 = c0 + cols
    extra, acc = b[c0:c1], np.empty(cols, np.int64)
    rq, real = np.ascontiguousarray(rq[:, c0:c1]), real[c0:c1]  # the block's columns, as arrays indexed from 0
    for r in range(rows):
        if chunks > 1:  # the bias and every chunk's sum but the first, then added in the loop below
            for o in range(cols):
                acc[o] = b[c0 + o]
            for j in range(1, chunks):
                for o in range(cols):
                    acc[o] += np.int64(partial[j, r, o])
            extra = acc
        p, out = partial[0, r], y[r0 + r, c0:c1]
        if kind == FIXED_POINT:
            for o in range(cols):
                out[o] = requantize(np.int64(p[o]) + extra[o], rq, o, y_zero, lo, hi)
        elif kind == REAL:
            for o in range(cols):
                out[o] = requantize_real(np.int64(p[o]) + extra[o], real[o], y_zero, lo, hi)
        else:
            for o in range(cols):
                out[o] = requantize_float(np.int64(p[o]) + extra[o], np.float32(real[o]), y_zero, lo, hi)


@parallel_jit
def epilogue_rows(kind, sums, b, rq, real, y_zero, lo, hi, y):
    """epilogue on a whole layer's sums (rows, c): one chunk, as the windowed kernels leave them
    (exact.run_on_float32), in blocks of rows shared out across numba's threads. A block is at
    least 16384 outputs (tens of microseconds), against about one to hand it to a thread."""
    rows, c = sums.shape
    step = max(1, -(-16384 // max(c, 1)))
    for j in prange(-(-rows // step)):
        r0, r1 = j * step, min(rows, j * step + step)
        epilogue(kind, sums[r0:r1].reshape(1, r1 - r0, c), b, rq, real, y_zero, lo, hi, y, r0, 0)
