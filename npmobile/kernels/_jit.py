"""How a kernel is built: numba's flags for every kernel loop, and the shape of a fast kernel.

- cache=True: the compiled machine code is written next to the source (or, when that folder is
  read-only, to numba's per-user cache), so a new process skips the compile.
- nogil=True: a loop releases the GIL, so several Python threads can run inferences at once.
- fastmath stays off: the loops are checked against float64 oracles with a rounding-error bound
  that assumes IEEE arithmetic; reassociation would void it.
- error_model="numpy": division follows NumPy (inf/nan) instead of raising inside the loop.
"""

import functools

import numba

jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


def fast_kernel(bind):
    """Make a fast kernel from `bind(*tensors, **attrs, out=None)`, the function that checks and
    coerces its arguments and returns `run`: the loop, bound to them, computing the result into
    its output array and returning it.

    Calling the kernel binds and runs at once. `kernel.bind(...)` is the first half alone, for
    the engine: a Plan binds each layer once to its buffers and then only runs it, because on a
    7x7 layer checking the arguments costs about as much as computing the result.
    """
    @functools.wraps(bind)
    def kernel(*args, **kwargs):
        return bind(*args, **kwargs)()

    kernel.bind = bind
    return kernel
