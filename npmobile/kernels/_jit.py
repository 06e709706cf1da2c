"""numba's flags for every kernel loop, and the threads its parallel loops run on, in one place.

- cache=True: the compiled machine code is written next to the source (or, when that folder is
  read-only, to numba's per-user cache), so a new process skips the compile; each entry is keyed
  by the hash of all the kernels' sources too (`_keyed_by_all_kernels` says why).
- nogil=True: a loop releases the GIL, so several Python threads can run inferences at once.
- fastmath stays off: the loops are checked against float64 oracles with a rounding-error bound
  that assumes IEEE arithmetic; reassociation would void it.
- error_model="numpy": division follows NumPy (inf/nan) instead of raising inside the loop.
- `parallel_jit` loops split their outer `prange` over numba's threads (numba.set_num_threads,
  $NUMBA_NUM_THREADS) on TBB's threading layer, chosen here explicitly: TBB lets many Python
  threads launch parallel loops at once (numba's default fallback, the workqueue layer, aborts
  the process when two do). TBB comes from the `tbb` package (a dependency). Without it, OpenMP
  (also thread-safe) when numba has it; with neither, the loops run on one thread.

Every kernel file has the same shape: `check_<op>(...)` checks and coerces the arguments and
returns the tuple `run_<op>` takes; `run_<op>(*args)` runs the numba loops and returns the
output; the public `<op>(...)` is `run_<op>(*check_<op>(...))`. The engine calls the check once
per layer when it binds a plan, and then only the run: on a 7x7 layer checking the arguments
costs about as much as computing the result.
"""

import ctypes
import hashlib
import os
import pathlib
import sys

import numba


def _kernels_source_hash():
    """sha256 over every source file of npmobile/kernels (their paths and bytes)."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _keyed_by_all_kernels(njit):
    """njit, with each function's cache entries also keyed by the hash of all the kernels'
    sources. numba drops a cached function when its own file changes, but not when a function it
    calls, whose code it compiled in, changes in another file: edit depthwise.py and separable.py's
    cached loop kept running the old depthwise rows on the new weight layout (wrong outputs, seen
    while writing them). With the hash in the key any edit under npmobile/kernels compiles every
    kernel again, once. (numba's FunctionCache is not public API: where it is missing, plain njit.)"""
    try:
        from numba.core.caching import FunctionCache
    except ImportError:
        return njit
    source_hash = _kernels_source_hash()

    class KernelsCache(FunctionCache):
        def _index_key(self, sig, codegen):
            return super()._index_key(sig, codegen) + (source_hash,)

    def decorate(function):
        dispatcher = njit(function)
        dispatcher._cache = KernelsCache(dispatcher.py_func)
        return dispatcher
    return decorate


jit = _keyed_by_all_kernels(numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy"))


def _threading_layer():
    """'tbb' or 'omp' when numba can load it, else None. pip's `tbb` wheel puts libtbb.so.12 in
    <prefix>/lib, outside the loader's search path: loading it first by its full path lets
    numba's TBB pool find it."""
    for prefix in (sys.prefix, sys.base_prefix):
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                pass
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401
        return "tbb"
    except ImportError:
        pass
    try:
        from numba.np.ufunc import omppool  # noqa: F401
        return "omp"
    except ImportError:
        return None


THREADING_LAYER = _threading_layer()
if THREADING_LAYER:
    numba.config.THREADING_LAYER = THREADING_LAYER
parallel_jit = _keyed_by_all_kernels(numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy",
                                                parallel=THREADING_LAYER is not None))


def _thread_count_function():
    """The function behind numba.get_num_threads(): the calling thread's count of numba threads
    (numba.set_num_threads sets it per thread). numba.get_num_threads() takes 0.58 us to call it,
    after checking that the pool is started (a lock); the function itself 0.15 us. A layer asks
    once per call (serial loop or parallel), some 55 times an image: 24 us saved per image, 1% of
    V2 on two threads. The pool is started here, once; where numba no longer has the function
    (a private name), numba.get_num_threads itself."""
    numba.get_num_threads()  # starts the threading layer's pool
    from numba.np.ufunc import parallel
    return getattr(parallel, "_get_num_threads", numba.get_num_threads)


num_threads = _thread_count_function()
