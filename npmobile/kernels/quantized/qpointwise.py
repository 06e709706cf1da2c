"""Quantized pointwise (1x1) convolution and fully connected layer, in integers.

    acc[r, o] = b[o] + sum_{c < c_in} (x[r, c] - x_zero) * (w[c, o] - w_zero[o])
    y[r, o]   = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[o], shift[o]) + y_zero, lo, hi)

where r runs over the pixels (n * h * w of them; TFLite CONV_2D 1x1) or over the batch
(FULLY_CONNECTED, `qdense`). Rounding as in fixedpoint.py.

Layout: x NHWC (pointwise) or (n, c_in) (dense), uint8/int8; w IO (c_in, c_out) of the same kind;
b, w_zero, multiplier, shift (c_out,) int32. The output has x's dtype.

Cost: rows * c_in * c_out MACs: most of a MobileNet's work. The fast kernel computes the integer
sum exactly on float32 BLAS (sgemm), the fastest product a CPU has here:
- the operands x - x_zero and w - w_zero are integers of at most 9 bits (|.| <= 255), so every
  product is an integer below 2^16, exact in float32;
- a float32 sum of integers is exact while every partial sum stays below 2^24 in magnitude,
  whatever order BLAS adds in. For output column o every partial sum is bounded by
  max|x - x_zero| * sum_c |w[c, o] - w_zero[o]|, so the input channels are split, once at bind,
  into the fewest consecutive chunks whose bound stays <= 2^24 (one chunk for most layers);
- each chunk's sgemm result is then an exact integer; the epilogue adds the chunks, the bias and
  requantizes.
"""

import numpy as np

from .._jit import fast_kernel, jit
from ..pointwise import BLOCK_FLOATS
from ._qchecks import as_q8, check_zero, q_output, requant_args, type_range
from .fixedpoint import requantize, requantize_params, requantize_ref

EXACT_FLOAT32 = 1 << 24  # every integer of magnitude <= 2^24 is a float32


def qpointwise_conv2d_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None):
    """The oracle: the equations above in int64 NumPy (an einsum, no BLAS, no float)."""
    x = np.asarray(x)
    xs = x.astype(np.int64) - x_zero
    ws = np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64)
    acc = np.einsum("...c,co->...o", xs, ws)
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    info = np.iinfo(x.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return requantize_ref(acc, multiplier, shift, y_zero, lo, hi).astype(x.dtype)


def exact_chunks(ws, x_bound):
    """Split the rows of ws (c_in, c_out), float32 integers, into consecutive chunks [k0, k1) in
    which x_bound * sum_k |ws[k, o]| <= 2^24 for every column o: a float32 product over one chunk
    is then exact. Returns the chunk boundaries [0, ..., c_in]."""
    bounds, running = [0], np.zeros(ws.shape[1], dtype=np.float64)
    for k, row in enumerate(np.abs(ws.astype(np.float64))):
        if k > bounds[-1] and ((running + row) * x_bound).max() > EXACT_FLOAT32:
            bounds.append(k)
            running[:] = 0
        running += row
    return bounds + [ws.shape[0]]


def _bind_rows(x_rows, w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp, y_rows):
    """The shared body of qpointwise_conv2d and qdense: x_rows (r, c_in) -> y_rows (r, c_out)."""
    c_in, c_out = w.shape
    x_zero = check_zero("x_zero", x_zero, x_rows.dtype)
    b, w_zero, multiplier, shift, y_zero, lo, hi = requant_args(
        c_out, x_rows.dtype, b=b, w_zero=w_zero, multiplier=multiplier, shift=shift, y_zero=y_zero, clamp=clamp)
    ws = (w.astype(np.float32) - w_zero.astype(np.float32))  # exact: |w - w_zero| <= 255
    lo_t, hi_t = type_range(x_rows.dtype)
    chunks = exact_chunks(ws, max(x_zero - lo_t, hi_t - x_zero))
    pairs = list(zip(chunks[:-1], chunks[1:]))
    w_chunks = [np.ascontiguousarray(ws[k0:k1]) for k0, k1 in pairs]
    # Rows go through in blocks whose float32 result fits half of L2 (as the float kernel), so
    # the epilogue reads the sgemm output while it is still in cache.
    block = max(1, min(x_rows.shape[0], BLOCK_FLOATS // max(c_out, 1)))
    xf = np.empty((block, c_in), dtype=np.float32)
    partial = np.empty((len(pairs), block, c_out), dtype=np.float32)
    b64, rq = b.astype(np.int64), requantize_params(multiplier, shift)
    acc = np.empty(c_out, dtype=np.int64)

    def run():
        for r in range(0, x_rows.shape[0], block):
            rows = min(block, x_rows.shape[0] - r)
            _minus_zero_jit(x_rows[r:r + rows], x_zero, xf[:rows])
            for j, ((k0, k1), w_chunk) in enumerate(zip(pairs, w_chunks)):
                np.matmul(xf[:rows, k0:k1], w_chunk, out=partial[j, :rows])
            _requantize_rows_jit(partial[:, :rows], b64, rq, y_zero, lo, hi, acc, y_rows[r:r + rows])
    return run


@fast_kernel
def qpointwise_conv2d(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """The fast kernel: exact integer products on float32 sgemm (see the module docstring)."""
    x = as_q8("x", x, ndim=4)
    w = as_q8("w", w, ndim=2)
    n, h, width, c_in = x.shape
    if w.shape[0] != c_in:
        raise ValueError(f"w: expected input channels (axis 0) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    y = q_output(out, (n, h, width, w.shape[1]), x.dtype)
    run_rows = _bind_rows(x.reshape(-1, c_in), w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp,
                          y.reshape(-1, w.shape[1]))

    def run():
        run_rows()
        return y
    return run


def qdense_ref(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None):
    """The oracle of the fully connected layer: the pointwise oracle on (n, c_in) rows."""
    return qpointwise_conv2d_ref(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero, multiplier=multiplier,
                                 shift=shift, clamp=clamp)


@fast_kernel
def qdense(x, w, b=None, *, x_zero, w_zero, y_zero, multiplier, shift, clamp=None, out=None):
    """FULLY_CONNECTED: (n, c_in) -> (n, c_out), the pointwise kernel's rows."""
    x = as_q8("x", x, ndim=2)
    w = as_q8("w", w, ndim=2)
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w: expected input channels (axis 0) = {x.shape[1]} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    y = q_output(out, (x.shape[0], w.shape[1]), x.dtype)
    run_rows = _bind_rows(x, w, b, x_zero, w_zero, y_zero, multiplier, shift, clamp, y)

    def run():
        run_rows()
        return y
    return run


@jit
def _minus_zero_jit(x, x_zero, xf):
    """xf = x - x_zero as float32 (exact small integers), the sgemm's left operand."""
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            xf[r, c] = np.float32(np.int32(x[r, c]) - x_zero)


@jit
def _requantize_rows_jit(partial, b, rq, y_zero, lo, hi, acc, y):
    """y[r, o] = requantize(b[o] + sum_j partial[j, r, o]): each partial is an exact integer.
    Every inner loop runs over the channels, so each compiles to SIMD instructions."""
    for r in range(y.shape[0]):
        for o in range(y.shape[1]):
            acc[o] = np.int64(partial[0, r, o]) + b[o]
        for j in range(1, partial.shape[0]):
            for o in range(y.shape[1]):
                acc[o] += np.int64(partial[j, r, o])
        for o in range(y.shape[1]):
            y[r, o] = requantize(acc[o], rq, o, y_zero, lo, hi)
