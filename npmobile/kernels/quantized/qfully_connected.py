"""Quantized fully connected layer as LiteRT's reference kernels run an int8 FULLY_CONNECTED:
the product in integers, the rescaling in double.

    acc[r, o] = b[o] + sum_c (x[r, c] - x_zero) * (w[c, o] - w_zero[o])               int32, exact
    y[r, o]   = clamp(round(acc[r, o] * m[o]) + y_zero, lo, hi),   m[o] = s_x * s_w[o] / s_y

with m[o] the double `real_multiplier` (real_multipliers, at load: the float32 scales multiplied
and divided in double, left to right) and `round` C's std::round: halves away from zero. Unlike
a convolution's MultiplyByQuantizedMultiplier (qpointwise.py) this rounds once, from the exact
double product, so the two differ where acc * M lies within about 2^-31 of a half: on one of the
115 corpus photos, acc = 343906 with M = 0.000292224 gives 100.49999 -> 100 here and 101 by the
fixed-point route. (The legacy uint8 FULLY_CONNECTED keeps the fixed-point route: qdense.)

Layout: x (n, c_in) int8; w IO (c_in, c_out) int8; b (c_out,) int32; real_multiplier (c_out,)
float64. Cost: n * c_in * c_out MACs, the product as qpointwise's (qproduct.py, its REAL epilogue).
"""

import numpy as np

from .. import Kernel
from ._qchecks import as_q8, check_zero, q_output, requant_args
from .epilogue import REAL
from .qproduct import check_product, run_product


def real_multipliers(x_scale, w_scales, y_scale):
    """m[o] = s_x * s_w[o] / s_y from the file's float32 scales, in double, as LiteRT's reference
    FULLY_CONNECTED computes it."""
    return np.array([float(np.float32(x_scale)) * float(np.float32(s)) / float(np.float32(y_scale))
                     for s in np.asarray(w_scales).reshape(-1)], dtype=np.float64)


def qfully_connected_ref(x, w, b=None, *, x_zero, w_zero, y_zero, real_multiplier, clamp=None):
    """The oracle: an int64 einsum, the bias, the double product rounded by its distance to the
    integer below (halves away from zero), the zero point and the clamp."""
    x = np.asarray(x)
    acc = np.einsum("nc,co->no", x.astype(np.int64) - x_zero,
                    np.asarray(w).astype(np.int64) - np.asarray(w_zero, dtype=np.int64))
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    v = acc.astype(np.float64) * np.asarray(real_multiplier, dtype=np.float64)
    r = np.trunc(v) + np.sign(v) * (np.abs(v - np.trunc(v)) >= 0.5)
    info = np.iinfo(x.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return np.clip(r + y_zero, lo, hi).astype(x.dtype)


def check_qfully_connected(x, w, b=None, *, x_zero, w_zero, y_zero, real_multiplier, clamp=None, out=None):
    """The arguments of run_qfully_connected (= qproduct.run_product with the double epilogue)."""
    x, w = as_q8("x", x, ndim=2), as_q8("w", w, ndim=2)
    c_out = w.shape[1]
    if w.shape[0] != x.shape[1]:
        raise ValueError(f"w: expected input channels (axis 0) = {x.shape[1]} to match x of shape {x.shape}, "
                         f"found w of shape {w.shape}")
    m = np.asarray(real_multiplier, dtype=np.float64)
    if m.shape != (c_out,) or not (np.isfinite(m).all() and (m >= 0).all()):
        raise ValueError(f"real_multiplier: expected {c_out} finite values >= 0, found shape {m.shape}")
    x_zero = check_zero("x_zero", x_zero, x.dtype)
    b, w_zero, _, _, y_zero, lo, hi = requant_args(c_out, x.dtype, b=b, w_zero=w_zero, multiplier=0, shift=0,
                                                   y_zero=y_zero, clamp=clamp)
    y = q_output(out, (x.shape[0], c_out), x.dtype)
    return check_product(np.ascontiguousarray(x), x_zero, w.astype(np.int32) - w_zero, b, REAL, y_zero, lo, hi, y, y,
                         real=m)


run_qfully_connected = run_product


def qfully_connected(x, w, b=None, *, x_zero, w_zero, y_zero, real_multiplier, clamp=None, out=None):
    """The fast kernel: exact integer products (qproduct.py), then one double rounding each."""
    return run_product(*check_qfully_connected(x, w, b, x_zero=x_zero, w_zero=w_zero, y_zero=y_zero,
                                              real_multiplier=real_multiplier, clamp=clamp, out=out))


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qfully_connected", qfully_connected, qfully_connected_ref, check_qfully_connected,
                  run_qfully_connected),)
