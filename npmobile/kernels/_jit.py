"""The one place that holds numba's flags for every kernel loop.

- cache=True: the compiled machine code is written next to the source (or, when that folder is
  read-only, to numba's per-user cache), so a new process skips the compile.
- nogil=True: a loop releases the GIL, so several Python threads can run inferences at once.
- fastmath stays off: the loops are checked against float64 oracles with a rounding-error bound
  that assumes IEEE arithmetic; reassociation would void it.
- error_model="numpy": division follows NumPy (inf/nan) instead of raising inside the loop.
"""

import numba

jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
