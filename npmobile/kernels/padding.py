"""Zero padding of the spatial axes of an NHWC tensor.

    y[n, i, j, c] = x[n, i - top, j - left, c] inside x, 0 elsewhere;  y is
    (n, top + h + bottom, left + w + right, c)

Keras pads a stride-2 convolution on the bottom and right only (ZeroPadding2D(((0, 1), (0, 1))),
or `correct_pad`); torchvision pads 1 on every side. The convolution kernels take the padding as
an argument and never materialise it; this op exists for graphs that pad as a separate layer
(Keras' ZeroPadding2D, ONNX Pad) and for the oracle engine that runs them as written.

Cost: no MACs; one copy of x.
"""

import numpy as np

from ._checks import as_float32, check_pad, check_size, output
from ._jit import jit


def zero_pad_ref(x, *, pad):
    """The oracle: np.pad."""
    top, bottom, left, right = pad
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))


@jit
def _zero_pad_jit(x, top, left, y):
    h, w = x.shape[1], x.shape[2]
    for i in range(y.shape[0]):
        for yy in range(y.shape[1]):
            for xx in range(y.shape[2]):
                iy, ix = yy - top, xx - left
                inside = 0 <= iy < h and 0 <= ix < w
                for c in range(y.shape[3]):
                    y[i, yy, xx, c] = x[i, iy, ix, c] if inside else np.float32(0)


def check_zero_pad(x, *, pad, out=None):
    """The arguments of run_zero_pad."""
    x = as_float32("x", x, ndim=4)
    top, bottom, left, right = check_pad(pad)
    n, h, w, c = x.shape
    y = output(out, (n, check_size("pad (padded height)", top + h + bottom),
                     check_size("pad (padded width)", left + w + right), c))
    return x, top, left, y


def run_zero_pad(x, top, left, y):
    _zero_pad_jit(x, top, left, y)
    return y


def zero_pad(x, *, pad, out=None):
    """The fast kernel: float32 in, float32 out."""
    return run_zero_pad(*check_zero_pad(x, pad=pad, out=out))
