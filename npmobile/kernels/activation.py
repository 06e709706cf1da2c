"""Activations: clamp (ReLU6 and ReLU) and softmax.

    clamp(x)[...] = min(max(x, lo), hi)          ReLU6 is clamp(0, 6), ReLU is clamp(0, inf)
    softmax(x)[n, i] = exp(x[n, i] - max_j x[n, j]) / sum_j exp(x[n, j] - max_j x[n, j])

Subtracting the row maximum changes nothing mathematically and keeps exp from overflowing.

Cost: no MACs; clamp is two comparisons per element, softmax one exp and one divide per element.
In the fast engine a clamp is fused into the convolution before it (the `clamp=` argument of the
convolution kernels), so this kernel only runs on its own in the oracle engine.
"""

import numpy as np

from ._checks import as_float32, output
from ._jit import jit


def clamp_ref(x, *, lo=0.0, hi=6.0):
    """The oracle: np.clip in float64."""
    return np.clip(np.asarray(x, dtype=np.float64), lo, hi)


@jit
def _clamp_jit(x, lo, hi, y):
    for i in range(x.shape[0]):
        y[i] = min(max(x[i], lo), hi)


def check_clamp(x, *, lo=0.0, hi=6.0, out=None):
    """The arguments of run_clamp."""
    x = as_float32("x", x)
    if not float(lo) <= float(hi):
        raise ValueError(f"lo, hi: expected lo <= hi, found ({lo}, {hi})")
    return x, np.float32(lo), np.float32(hi), output(out, x.shape)


def run_clamp(x, lo, hi, y):
    _clamp_jit(x.reshape(-1), lo, hi, y.reshape(-1))
    return y


def clamp(x, *, lo=0.0, hi=6.0, out=None):
    """The fast kernel: float32 in, float32 out."""
    return run_clamp(*check_clamp(x, lo=lo, hi=hi, out=out))


def softmax_ref(x):
    """The oracle: the equation above in float64, over the last axis."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@jit
def _softmax_jit(x, y):
    for r in range(x.shape[0]):
        row_max = x[r, 0]
        for i in range(1, x.shape[1]):
            row_max = max(row_max, x[r, i])
        total = np.float32(0)
        for i in range(x.shape[1]):
            e = np.exp(x[r, i] - row_max)
            y[r, i] = e
            total += e
        for i in range(x.shape[1]):
            y[r, i] = y[r, i] / total


def check_softmax(x, *, out=None):
    """The arguments of run_softmax."""
    x = as_float32("x", x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected at least one class on the last axis, found shape {x.shape}")
    return x, output(out, x.shape)


def run_softmax(x, y):
    k = x.shape[-1]
    _softmax_jit(x.reshape(-1, k), y.reshape(-1, k))
    return y


def softmax(x, *, out=None):
    """The fast kernel: one row at a time, float32."""
    return run_softmax(*check_softmax(x, out=out))
