"""Global pooling: one value per channel, over the whole feature map.

    global_avg_pool(x)[n, c] = (1 / (h * w)) * sum_{i, j} x[n, i, j, c]
    global_max_pool(x)[n, c] = max_{i, j} x[n, i, j, c]

MobileNet ends with a global average pool (Keras' pooling="avg", TFLite's 7x7 AVERAGE_POOL_2D on
a 7x7 map, ONNX GlobalAveragePool); Keras also offers pooling="max".

Cost: no MACs; one add (or compare) per element of x.
"""

import numpy as np

from ._checks import as_float32, output
from ._jit import jit


def global_avg_pool_ref(x):
    """The oracle: the mean in float64."""
    return np.asarray(x, dtype=np.float64).mean(axis=(1, 2))


def global_max_pool_ref(x):
    """The oracle: the maximum in float64."""
    return np.asarray(x, dtype=np.float64).max(axis=(1, 2))


@jit
def _global_pool_jit(x, use_max, y):
    n, h, w, c = x.shape
    for i in range(n):
        acc = y[i]
        acc[:] = x[i, 0, 0]
        for yy in range(h):
            for xx in range(w):
                if yy == 0 and xx == 0:
                    continue
                pix = x[i, yy, xx]  # the inner loops run over channels: unit stride in NHWC
                if use_max:  # the branch sits outside the channel loop, so that loop vectorises
                    for k in range(c):
                        acc[k] = max(acc[k], pix[k])
                else:
                    for k in range(c):
                        acc[k] += pix[k]
        if not use_max:
            inv = np.float32(1) / np.float32(h * w)
            for k in range(c):
                acc[k] = acc[k] * inv


def check_global_pool(x, use_max, out):
    """The arguments of run_global_pool (use_max: the maximum, else the mean)."""
    x = as_float32("x", x, ndim=4)
    if x.shape[1] * x.shape[2] == 0:
        raise ValueError(f"x: expected a non-empty feature map, found shape {x.shape}")
    return x, use_max, output(out, (x.shape[0], x.shape[3]))


def check_global_avg_pool(x, *, out=None):
    return check_global_pool(x, False, out)


def check_global_max_pool(x, *, out=None):
    return check_global_pool(x, True, out)


def run_global_pool(x, use_max, y):
    _global_pool_jit(x, use_max, y)
    return y


def global_avg_pool(x, *, out=None):
    """The fast kernel: (n, h, w, c) float32 -> (n, c) float32."""
    return run_global_pool(*check_global_avg_pool(x, out=out))


def global_max_pool(x, *, out=None):
    """The fast kernel: (n, h, w, c) float32 -> (n, c) float32."""
    return run_global_pool(*check_global_max_pool(x, out=out))
