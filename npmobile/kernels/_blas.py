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
import threading
from contextlib import contextmanager

import numpy as np

ROW_MAJOR, NO_TRANS = 101, 111


def _openblas():
    """NumPy's own OpenBLAS library (ctypes), or None when NumPy was built on another BLAS."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, f) for f in ("scipy_cblas_sgemm64_", "scipy_openblas_set_num_threads64_",
                                          "scipy_openblas_get_num_threads64_", "scipy_openblas_get_corename64_")):
            lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
            return lib
    return None


def _find_sgemm(lib):
    if lib is None:
        return None
    sgemm = lib.scipy_cblas_sgemm64_
    # Pointers travel as 64-bit integers (array.ctypes.data in numba): the same registers.
    i64 = ctypes.c_int64
    sgemm.restype = None
    sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float,
                      i64, i64, i64, i64, ctypes.c_float, i64, i64]
    return sgemm


_LIB = _openblas()
SGEMM = _find_sgemm(_LIB)


def core():
    """The kernels OpenBLAS chose for this CPU ("SkylakeX", "Haswell", ...), or None. It picks
    them when NumPy is imported, from the CPU, unless $OPENBLAS_CORETYPE names others: an
    AVX-512 CPU told "Haswell" runs the AVX2 kernels, at half the speed."""
    return None if _LIB is None else _LIB.scipy_openblas_get_corename64_().decode()


# OpenBLAS's thread count is one number for the whole process (openblas_set_num_threads_local
# sets it too, in the pthreads build NumPy ships). A model call sets it to 1 while it runs, so
# that the sgemm of each block stays on the numba thread that calls it: two sgemm calls from two
# numba threads with OpenBLAS's own threads started inside each ran V2 at batch 4 2.3x slower.
# Calls that overlap (several Python threads) share one setting: the first sets it, the last
# puts back what was there.
_lock = threading.Lock()
_active, _saved = 0, None


@contextmanager
def one_thread():
    """OpenBLAS on one thread inside the block (NumPy's np.matmul elsewhere in the process too),
    restored after it. A no-op when NumPy uses another BLAS."""
    global _active, _saved
    if _LIB is None:
        yield
        return
    with _lock:
        if _active == 0:
            _saved = _LIB.scipy_openblas_get_num_threads64_()
            if _saved != 1:
                _LIB.scipy_openblas_set_num_threads64_(1)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved != 1:
                _LIB.scipy_openblas_set_num_threads64_(_saved)
