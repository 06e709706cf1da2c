"""Error bounds for comparing a float32 kernel with its float64 oracle.

A float32 dot product of length k satisfies |fl(x.w) - x.w| <= gamma(k) * sum|x_i * w_i| with
gamma(k) = k*u / (1 - k*u) and u = 2**-24 (Higham, Accuracy and Stability of Numerical
Algorithms, 3.1), whatever the order of the additions (so a blocked BLAS sgemm is covered too).
sum|x_i * w_i| is the oracle run on |x|, |w|, |b|. The bound is tight and holds for every input,
so a test that uses it is never flaky and still catches a single wrong tap.
"""

import numpy as np

U = 2.0 ** -24


def gamma(k):
    return k * U / (1 - k * U)


def assert_within(y, ref, magnitude, k):
    """y (float32) equals ref (float64) within gamma(k) * magnitude, element by element."""
    assert y.dtype == np.float32, f"fast kernel returned {y.dtype}, expected float32"
    assert y.shape == ref.shape, f"shape {y.shape} != oracle's {ref.shape}"
    err = np.abs(y.astype(np.float64) - ref)
    bound = gamma(k) * np.asarray(magnitude, dtype=np.float64)
    bad = err > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements outside the float32 bound; worst "
                           f"err {err.max():.3g} vs bound {bound.flat[np.argmax(err - bound)]:.3g}")
