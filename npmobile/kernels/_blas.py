"""The float32 matrix product that the kernels call from inside their numba loops.

np.matmul cannot be called from numba's threads, so a layer's product could only be split across
cores by OpenBLAS's own threads: a second thread pool beside numba's, each with its own barrier
per layer, and on a busy machine a 20x slowdown at batch 1 (measured). Instead the kernels call
OpenBLAS's `cblas_sgemm` directly, once per block of a parallel loop, with OpenBLAS on one thread
per call: one pool, one barrier per layer, and the epilogue applied by the thread that computed
the block while it is in its cache.

`SGEMM` is that function, taken from the OpenBLAS library NumPy's wheel ships
(numpy.libs/libscipy_openblas*.so, 64-bit integers), or None when NumPy uses another BLAS (then
the kernels run np.matmul block by block on the calling thread). Its pointer is passed to the
numba loops as an argument, so their cached machine code holds no address of this process.

    SGEMM(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    c[m, n] = alpha * a[m, k] @ b[k, n] + beta * c      (row-major: order 101, no transpose: 111)
"""

import ctypes
import glob
import os

import numpy as np

ROW_MAJOR, NO_TRANS = 101, 111


def _find_sgemm():
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so"))):
        try:
            sgemm = ctypes.CDLL(path).scipy_cblas_sgemm64_
        except (OSError, AttributeError):
            continue
        # Pointers travel as 64-bit integers (array.ctypes.data in numba): the same registers.
        i64 = ctypes.c_int64
        sgemm.restype = None
        sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float,
                          i64, i64, i64, i64, ctypes.c_float, i64, i64]
        return sgemm
    return None


SGEMM = _find_sgemm()
