"""Pointwise (1x1) convolution: a linear mix of the channels at every pixel.

    y[n, i, j, o] = b[o] + sum_{c < c_in} x[n, i, j, c] * w[c, o]     (+ shortcut[n, i, j, o])

Layout: x is NHWC (n, h, w, c_in); w is IO (c_in, c_out); b is (c_out,). The optional shortcut
(y's shape) is a residual add fused into the layer (MobileNetV2's projections, engine.fuse),
added after the clamp: the add costs no pass over memory of its own.

Cost: n * h * w * c_in * c_out MACs: the paper's M * N * D_F * D_F. In NHWC the pixels are the
rows of a (n*h*w, c_in) matrix, so the whole layer is one matrix product with w: the best-tuned
routine a CPU has (BLAS sgemm). In MobileNet the pointwise convolutions hold about 95% of the
MACs, so this is where inference time goes.
"""

import numpy as np

from ._checks import as_bias, as_float32, check_fused_clamp, output
from ._product import product


def pointwise_conv2d_ref(x, w, b=None, *, clamp=None, shortcut=None):
    """The oracle: the equation above in float64, as an explicit sum over c (einsum, no BLAS)."""
    y = np.einsum("nhwc,co->nhwo", np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64))
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    if clamp is not None:
        y = np.clip(y, clamp[0], clamp[1])
    if shortcut is not None:
        y = y + np.asarray(shortcut, dtype=np.float64)
    return y


def run_pointwise_conv2d(x_rows, w, b, has_clamp, lo, hi, shortcut_rows, y_rows, y):
    """One product of the (pixels, c_in) rows with w, its epilogue applied block by block
    (`_product.product`); returns y, of which y_rows is the (pixels, c_out) view."""
    product(x_rows, False, w, b, has_clamp, lo, hi, y_rows, shortcut_rows)
    return y


def check_rows(x, x_rows, w, b, clamp, out, shortcut=None):
    """The arguments of run_pointwise_conv2d for x (channels last) seen as the matrix x_rows;
    y has x's shape with c_out channels, and so has the shortcut. Shared with dense, the same
    product on (n, c_in)."""
    if not _rows_in_place(w):
        w = as_float32("w", w, ndim=2)
    c_in = x.shape[-1]
    if w.shape[0] != c_in:
        raise ValueError(f"w: expected input channels (axis 0) = {c_in} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    c_out = w.shape[1]
    b = as_bias(b, c_out)
    has_clamp, lo, hi = check_fused_clamp(clamp)
    y = output(out, x.shape[:-1] + (c_out,))
    if shortcut is not None:
        shortcut = as_float32("shortcut", shortcut)
        if shortcut.shape != y.shape:
            raise ValueError(f"shortcut: expected the output's shape {y.shape}, found {shortcut.shape}")
        shortcut = shortcut.reshape(-1, c_out)
    return x_rows, w, b, has_clamp, lo, hi, shortcut, y.reshape(-1, c_out), y


def _rows_in_place(w):
    """w is float32 rows, each contiguous, that the product reads where they are: C-contiguous,
    or laid out apart by `_product.padded_rows` (the engine's fused weights)."""
    return (type(w) is np.ndarray and w.dtype == np.float32 and w.ndim == 2 and w.strides[1] == 4
            and w.strides[0] >= 4 * w.shape[1])


def check_pointwise_conv2d(x, w, b=None, *, clamp=None, shortcut=None, out=None):
    x = as_float32("x", x, ndim=4)
    return check_rows(x, x.reshape(-1, x.shape[3]), w, b, clamp, out, shortcut)


def pointwise_conv2d(x, w, b=None, *, clamp=None, shortcut=None, out=None):
    """The fast kernel: one float32 matrix product, then bias, clamp and shortcut in one pass
    (`out`: a preallocated output the engine reuses)."""
    return run_pointwise_conv2d(*check_pointwise_conv2d(x, w, b, clamp=clamp, shortcut=shortcut, out=out))
