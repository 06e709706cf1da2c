"""Pointwise (1x1) convolution: a linear mix of the channels at every pixel.

    y[n, i, j, o] = b[o] + sum_{c < c_in} x[n, i, j, c] * w[c, o]

Layout: x is NHWC (n, h, w, c_in); w is IO (c_in, c_out); b is (c_out,).

Cost: n * h * w * c_in * c_out MACs: the paper's M * N * D_F * D_F. In NHWC the pixels are the
rows of a (n*h*w, c_in) matrix, so the whole layer is one matrix product with w: the best-tuned
routine a CPU has (BLAS sgemm). In MobileNet the pointwise convolutions hold about 95% of the
MACs, so this is where inference time goes.
"""

import glob

import numpy as np

from ._checks import as_bias, as_float32, check_clamp, output
from ._jit import fast_kernel, jit


def _l2_cache_bytes(default=1 << 20):
    """One core's L2 cache in bytes, from Linux's sysfs; 1 MiB where that is not available."""
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            with open(f"{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{index}/size") as f:
                text = f.read().strip().upper()  # "2048K"
            return int(text.rstrip("KM")) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        except (OSError, ValueError):
            break
    return default


# The largest output block (in float32 values) that pointwise_conv2d runs its epilogue on at once.
BLOCK_FLOATS = max(1 << 14, _l2_cache_bytes() // 2 // 4)


def pointwise_conv2d_ref(x, w, b=None, *, clamp=None):
    """The oracle: the equation above in float64, as an explicit sum over c (einsum, no BLAS)."""
    y = np.einsum("nhwc,co->nhwo", np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64))
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    if clamp is not None:
        y = np.clip(y, clamp[0], clamp[1])
    return y


@fast_kernel
def pointwise_conv2d(x, w, b=None, *, clamp=None, out=None):
    """The fast kernel: one float32 matrix product, then bias and clamp in one pass
    (`out`: a preallocated output the engine reuses)."""
    x = as_float32("x", x, ndim=4)
    w = as_float32("w", w, ndim=2)
    n, h, width, c_in = x.shape
    if w.shape[0] != c_in:
        raise ValueError(f"w: expected input channels (axis 0) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    c_out = w.shape[1]
    b = as_bias(b, c_out)
    has_clamp, lo, hi = check_clamp(clamp)
    y = output(out, (n, h, width, c_out))
    x_rows, y_rows = x.reshape(-1, c_in), y.reshape(-1, c_out)  # views: BLAS writes into y
    # The product is done in blocks of rows whose output fills half the L2 cache, and the
    # epilogue runs on each block while it is still there: on MobileNet's 112x112 layers that
    # saves a trip through main memory. Smaller blocks cost more than they save: every sgemm
    # call packs w again, and a 14x14 layer split in two runs 5% slower.
    block = max(1, BLOCK_FLOATS // c_out)
    blocks = [(x_rows[r:r + block], y_rows[r:r + block]) for r in range(0, y_rows.shape[0], block)]

    def run():
        for x_block, y_block in blocks:
            np.matmul(x_block, w, out=y_block)
            bias_clamp_rows(y_block, b, has_clamp, lo, hi)
        return y
    return run


@jit
def bias_clamp_rows(rows, b, has_clamp, lo, hi):
    """The epilogue, in place: rows[r, o] = clamp(rows[r, o] + b[o]), one pass over memory."""
    for r in range(rows.shape[0]):
        row = rows[r]
        for o in range(row.shape[0]):
            v = row[o] + b[o]
            if has_clamp:
                v = min(max(v, lo), hi)
            row[o] = v
