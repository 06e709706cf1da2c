"""Quantized depthwise convolution (TFLite DEPTHWISE_CONV_2D on uint8/int8).

One k x k filter per channel, in integers. With m the depth multiplier (output channel o reads
input channel o // m), x_zero, w_zero[o], y_zero the zero points and b an int32 bias:

    acc[n, i, j, o] = b[o] + sum_{p, q} (x_pad[n, i*s + p, j*s + q, o // m] - x_zero) * (w[p, q, o] - w_zero[o])
    y[n, i, j, o]   = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + y_zero, lo, hi)

x_pad is x padded with x_zero (a tap in the padding adds nothing). Rounding as in fixedpoint.py
(TFLite's reference depthwise kernel uses the same MultiplyByQuantizedMultiplier as CONV_2D).

Layout: x NHWC; w HWC (k_h, k_w, c_out) of the same 8-bit kind; b, w_zero, multiplier, shift
(c_out,) int32. The output has x's dtype.

Cost: n * h_out * w_out * c_out * k_h * k_w MACs, as the float kernel. Three loops, chosen once
per layer: with a depth multiplier of 1 (every MobileNet layer) on a CPU with AVX-512 VNNI, an
integer loop on 16 int32 lanes (_lanes_rows: one VPDPWSSD per tap and 16 channels, the
requantization in registers; V2's 17 layers took 1.4 ms against 2.5 by the route below, in the
model on one thread here); otherwise the float depthwise kernel on x - x_zero and w - w_zero
when that is exact (exact.py: always for a 3x3 filter, 9 * 255 * 255 < 2^24), then a pass that
converts, adds the bias and requantizes; otherwise a plain integer loop.
"""

import numpy as np
from numba import prange
from numpy.lib.stride_tricks import sliding_window_view

from .. import Kernel, _simd
from .._jit import jit, num_threads, parallel_jit
from .._product import PARTS
from .._simd import dot_i16, load, load_s8, load_u8, splat, store, store_bytes
from ..depthwise import check_depthwise_conv2d, run_depthwise_conv2d
from ._qchecks import as_q8
from .epilogue import FIXED_POINT, constants, lane_constants, requantize_16
from .exact import check_windowed, run_windowed
from .fixedpoint import output_ref, requantize


def qdepthwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1,
                          pad=(0, 0, 0, 0), clamp=None):
    """The oracle: the equations above in int64 NumPy over every window."""
    x = np.asarray(x)
    k_h, k_w, c_out = w.shape
    c_in = x.shape[3]
    m = c_out // c_in
    top, bottom, left, right = pad
    xs = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = sliding_window_view(xs, (k_h, k_w), axis=(1, 2))[:, ::stride, ::stride]
    ws = (np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)).reshape(k_h, k_w, c_in, m)
    acc = np.einsum("nhwcpq,pqcm->nhwcm", windows, ws).reshape(*windows.shape[:3], c_out)
    return output_ref(acc, b, multiplier, shift, y_zero, clamp, x.dtype)


def check_qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                            clamp=None, out=None):
    """The arguments of run_qdepthwise_conv2d (= exact.run_windowed), checked."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=3)
    c_in, c_out = x.shape[3], w.shape[2]
    if c_out == 0 or c_out % c_in != 0:
        raise ValueError(f"w: expected the channel axis to be a multiple of x's {c_in} channels "
                         f"(c_in * depth multiplier), found w of shape {w.shape}")
    return check_windowed(x, w, c_out, (check_depthwise_conv2d, run_depthwise_conv2d), _qdepthwise_jit, b=b,
                          x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier, shift=shift,
                          stride=stride, pad=pad, clamp=clamp, out=out, lanes=(check_lanes, run_lanes))


def check_lanes(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, top, left, y, kind=FIXED_POINT, real=None):
    """The arguments of run_lanes, for a depth multiplier of 1 (every MobileNet layer) on a CPU
    with VNNI; None otherwise. The weights as int32 lanes (k_h, k_w, c padded to 16) holding
    each weight in their low 16 bits, 0 in the high 16 (see _lanes_rows); the epilogue's
    constants (7, c padded): b - x_zero * sum_taps ws (see _lanes_rows), then
    epilogue.lane_constants (kind FIXED_POINT: rq; FLOAT_SCALE: ONNX Runtime's scales, real)."""
    k_h, k_w, c = ws.shape
    if not _simd.USE_VNNI or c != x.shape[3]:
        return None
    c_pad = -(-c // 16) * 16
    w_lanes = np.zeros((k_h, k_w, c_pad), np.int32)
    w_lanes[:, :, :c] = ws & 0xFFFF  # |ws| <= 255: an int16
    params = np.zeros((7, c_pad), np.int32)
    params[0, :c] = b.astype(np.int64) - int(x_zero) * ws.sum(axis=(0, 1), dtype=np.int64)
    params[1:] = lane_constants(c_pad, *constants(c, rq, real))
    return x, x.dtype == np.int8, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y


def run_lanes(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y):
    """The integer loop on 16 lanes, its rows shared out across numba's threads; returns y."""
    run = _lanes_jit if num_threads() > 1 else _lanes_serial_jit
    run(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y)
    return y


@jit
def _lanes_rows(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y, i0, i1):
    """Output rows i0 .. i1 (of n * h_out), one at a time, 16 channels at a time:

        acc = (b - x_zero * sum_taps w) + sum_taps x_pad * w,    x_pad = x_zero in the padding

    which is the layer's acc (a tap in the padding adds x_zero * w - x_zero * w = 0), exact in
    int32. One tap is one VPDPWSSD: x, widened to int32, has its value as an int16 in the low
    half of each lane (and 0 or -1 in the high half), w its int16 weight in the low half and 0
    in the high: the instruction's two 16-bit products are x * w and (high half) * 0.

    A row's sums stay in `acc` (w_out x c_pad int32, in the L1; its address taken where it is
    used, so that numba keeps the array alive through the loops) and each tap sweeps the whole
    row: the sums of different pixels do not wait for each other (one pixel's taps in a chain,
    each waiting for the one before, ran 1.5x slower). Then the runtime's requantization, the
    zero point and the clamp (epilogue.requantize_16: TFLite's fixed point, or ONNX Runtime's
    float32 scale), stored as bytes (the last group of channels masked to those that remain)."""
    n, h, width, c = x.shape
    k_h, k_w, c_pad = w_lanes.shape
    h_out, w_out = y.shape[1], y.shape[2]
    x_at, w_at, p_at, y_at = x.ctypes.data, w_lanes.ctypes.data, params.ctypes.data, y.ctypes.data
    acc = np.empty((w_out, c_pad), np.int32)
    step = 4 * c_pad  # one row of params or acc, in bytes
    zero = splat(x_zero)
    for i in range(i0, i1):
        image, oy = i // h_out, i % h_out
        for ox in range(w_out):
            for g in range(0, c, 16):
                store(acc.ctypes.data + ox * step + 4 * g, load(p_at + 4 * g))
        for p in range(k_h):
            iy = oy * stride - top + p
            for q in range(k_w):
                # the pixels whose tap (p, q) is inside the image: ox in [first, last)
                first = min(w_out, max(0, -(-(left - q) // stride)))
                last = max(first, min(w_out, (width - 1 + left - q) // stride + 1))
                if not 0 <= iy < h:
                    first = last = 0
                row_at = x_at + ((image * h + iy) * width - left + q) * c
                for g in range(0, c, 16):
                    count = min(16, c - g)
                    w = load(w_at + 4 * ((p * k_w + q) * c_pad + g))
                    for ox in range(w_out):
                        if first <= ox < last:
                            tap = row_at + ox * stride * c + g
                            xv = load_s8(tap, count) if signed else load_u8(tap, count)
                        else:
                            xv = zero
                        at = acc.ctypes.data + ox * step + 4 * g
                        store(at, dot_i16(load(at), xv, w))
        for ox in range(w_out):
            out_at = y_at + (i * w_out + ox) * c
            for g in range(0, c, 16):
                v = requantize_16(kind, load(acc.ctypes.data + ox * step + 4 * g), p_at + 4 * g + step, step, y_zero,
                                  lo, hi)
                store_bytes(out_at + g, v, min(16, c - g))


@parallel_jit
def _lanes_jit(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y):
    """The output rows in PARTS blocks, shared out across numba's threads."""
    rows = y.shape[0] * y.shape[1]
    step = -(-rows // PARTS)
    for j in prange(PARTS):
        _lanes_rows(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y, j * step,
                    min(rows, j * step + step))


@jit
def _lanes_serial_jit(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y):
    """All output rows on the calling thread."""
    _lanes_rows(x, signed, x_zero, w_lanes, params, kind, y_zero, lo, hi, stride, top, left, y, 0, y.shape[0] * y.shape[1])


run_qdepthwise_conv2d = run_windowed


def qdepthwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, stride=1, pad=(0, 0, 0, 0),
                      clamp=None, out=None):
    """The fast kernel: the float kernel on exact integers where exact.py's bound holds (every
    MobileNet layer), else an integer loop, tap by tap, over an int32 accumulator map."""
    args = check_qdepthwise_conv2d(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                   shift=shift, stride=stride, pad=pad, clamp=clamp, out=out)
    return run_qdepthwise_conv2d(*args)


@jit
def _qdepthwise_jit(x, x_zero, ws, b, rq, y_zero, lo, hi, stride, pad_top, pad_left, acc, y):
    """Tap by tap: each of the k_h * k_w taps adds its shifted, weighted copy of the image to
    acc, the (h_out, w_out, c_out) int32 accumulator map of one image."""
    n, h, width, c_in = x.shape
    k_h, k_w, c_out = ws.shape
    m = c_out // c_in
    h_out, w_out = y.shape[1], y.shape[2]
    for i in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                acc[oy, ox] = b
        for p in range(k_h):
            for q in range(k_w):
                for oy in range(h_out):
                    iy = oy * stride - pad_top + p
                    if 0 <= iy < h:  # a tap in the padding adds (x_zero - x_zero) * w = 0
                        for ox in range(w_out):
                            ix = ox * stride - pad_left + q
                            if 0 <= ix < width:
                                for o in range(c_out):
                                    acc[oy, ox, o] += (np.int32(x[i, iy, ix, o // m]) - x_zero) * ws[p, q, o]
        for oy in range(h_out):
            for ox in range(w_out):
                for o in range(c_out):
                    y[i, oy, ox, o] = requantize(acc[oy, ox, o], rq, o, y_zero, lo, hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qdepthwise_conv2d", qdepthwise_conv2d, qdepthwise_conv2d_ref, check_qdepthwise_conv2d,
                  run_qdepthwise_conv2d),)
