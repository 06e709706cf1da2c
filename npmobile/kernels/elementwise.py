"""Residual add: the skip connection of MobileNetV2's inverted residual blocks.

    y = x1 + x2        (same shape)

Cost: no MACs; one add per element (n * h * w * c).
"""

import numpy as np

from ._checks import as_float32, output
from ._jit import jit


def add_ref(x1, x2):
    """The oracle: float64 addition."""
    return np.asarray(x1, dtype=np.float64) + np.asarray(x2, dtype=np.float64)


@jit
def _add_jit(x1, x2, y):
    for i in range(y.shape[0]):
        y[i] = x1[i] + x2[i]


def check_add(x1, x2, *, out=None):
    """The arguments of run_add; no broadcasting (a residual has one shape)."""
    x1 = as_float32("x1", x1)
    x2 = as_float32("x2", x2)
    if x1.shape != x2.shape:
        raise ValueError(f"x2: expected the shape of x1 {x1.shape}, found {x2.shape}")
    return x1, x2, output(out, x1.shape)


def run_add(x1, x2, y):
    _add_jit(x1.reshape(-1), x2.reshape(-1), y.reshape(-1))
    return y


def add(x1, x2, *, out=None):
    """The fast kernel: float32 in, float32 out."""
    return run_add(*check_add(x1, x2, out=out))
