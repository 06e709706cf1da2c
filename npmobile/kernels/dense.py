"""Dense (fully connected) layer: the classifier at the top of the network.

    y[n, o] = b[o] + sum_{c < c_in} x[n, c] * w[c, o]

Layout: x is (n, c_in); w is IO (c_in, c_out); b is (c_out,).

Cost: n * c_in * c_out MACs. A dense layer is a pointwise convolution on a 1 x 1 feature map,
and the fast kernel is exactly that: the same checks and the same product on the rows of x.
"""

import numpy as np

from ._checks import as_float32
from .pointwise import check_rows, run_pointwise_conv2d


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


def check_dense(x, w, b=None, *, clamp=None, out=None):
    """The arguments of run_dense (which is run_pointwise_conv2d)."""
    x = as_float32("x", x, ndim=2)
    return check_rows(x, x, w, b, clamp, out)


run_dense = run_pointwise_conv2d


def dense(x, w, b=None, *, clamp=None, out=None):
    """The fast kernel: (n, c_in) float32 -> (n, c_out) float32."""
    return run_dense(*check_dense(x, w, b, clamp=clamp, out=out))
