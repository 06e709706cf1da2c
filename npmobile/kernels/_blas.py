"""The float32 matrix product that the kernels call from inside their numba loops.

np.matmul cannot be called from numba's threads, so a layer's product could only be split across
cores by OpenBLAS's own threads: a second thread pool beside numba's, each with its own barrier
per layer, and on a busy machine a 20x slowdown at batch 1 (measured). Instead the kernels call
OpenBLAS's `cblas_sgemm` directly, once per block of a parallel loop, with OpenBLAS on one thread
per call: one pool, one barrier per layer, and the epilogue applied by the thread that computed
the block while it is in its cache.

`sgemm` is that function as numba's loops call it, taken from the OpenBLAS library NumPy's wheel
ships (numpy.libs/libscipy_openblas*.so, 64-bit integers); HAVE_SGEMM is False when NumPy uses
another BLAS (then the kernels run np.matmul block by block on the calling thread).

    sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    c[m, n] = alpha * a[m, k] @ b[k, n] + beta * c      (row-major: order 101, no transpose: 111)

The loops call it by a symbol name, "npmobile_cblas_sgemm", that this module gives the function's
address in each process (llvmlite's add_symbol): their cached machine code holds no address of
the process that compiled it, and a call pays nothing to reach it. (Passed as a ctypes argument
instead, numba spends about 1.1 us typing that argument on every call: some 50 us per V2 image.)
"""

import ctypes
import glob
import os
import threading
from contextlib import contextmanager

import llvmlite.binding
import numpy as np
from numba.core import types

ROW_MAJOR, NO_TRANS = 101, 111


def _openblas():
    """NumPy's own OpenBLAS library (ctypes), or None when NumPy was built on another BLAS."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(lib, f) for f in ("scipy_cblas_sgemm64_", "scipy_cblas_sgemv64_", "scipy_openblas_set_num_threads64_",
                                          "scipy_openblas_get_num_threads64_", "scipy_openblas_get_corename64_")):
            lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
            return lib
    return None


def _external(lib, name, *argtypes):
    """The library's function `name` for numba's loops, under the symbol name they call
    ("npmobile_" + the CBLAS name). Pointers travel as 64-bit integers (array.ctypes.data in
    numba): the same registers."""
    symbol = "npmobile_" + name
    if lib is not None:
        llvmlite.binding.add_symbol(symbol, ctypes.cast(getattr(lib, f"scipy_{name}64_"), ctypes.c_void_p).value)
    return types.ExternalFunction(symbol, types.void(*argtypes))


_LIB = _openblas()
HAVE_SGEMM = _LIB is not None
_i32, _i64, _f32 = types.int32, types.int64, types.float32
sgemm = _external(_LIB, "cblas_sgemm", _i32, _i32, _i32, _i64, _i64, _i64, _f32, _i64, _i64, _i64, _i64, _f32, _i64, _i64)
# sgemv(order, trans, m, n, alpha, a, lda, x, incx, beta, y, incy): y = alpha * op(a) @ x + beta * y,
# the product of one row (a batch-1 classifier), about 4x faster than sgemm on one row.
sgemv = _external(_LIB, "cblas_sgemv", _i32, _i32, _i64, _i64, _f32, _i64, _i64, _i64, _i64, _f32, _i64, _i64)


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
