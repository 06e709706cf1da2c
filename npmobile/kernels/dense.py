"""Dense (fully connected) layer: the classifier at the top of the network.

    y[n, o] = b[o] + sum_{c < c_in} x[n, c] * w[c, o]

Layout: x is (n, c_in); w is IO (c_in, c_out); b is (c_out,).

Cost: n * c_in * c_out MACs. A dense layer is a pointwise convolution on a 1 x 1 feature map,
and the fast kernel is exactly that.
"""

import numpy as np

from ._checks import as_float32
from ._jit import fast_kernel
from .pointwise import pointwise_conv2d


def dense_ref(x, w, b=None, *, clamp=None):
    """The oracle: the equation above in float64, one product and one sum per (n, o)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    y = (x[:, :, None] * w[None, :, :]).sum(axis=1)
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64)
    if clamp is not None:
        y = np.clip(y, clamp[0], clamp[1])
    return y


@fast_kernel
def dense(x, w, b=None, *, clamp=None, out=None):
    """The fast kernel: the pointwise convolution of x seen as an (n, 1, 1, c_in) image."""
    x = as_float32("x", x, ndim=2)
    out4 = None if out is None else out[:, None, None, :]
    run_pointwise = pointwise_conv2d.bind(x[:, None, None, :], w, b, clamp=clamp, out=out4)
    return lambda: run_pointwise()[:, 0, 0, :]
