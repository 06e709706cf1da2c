"""numba's flags for every kernel loop, in one place.

- cache=True: the compiled machine code is written next to the source (or, when that folder is
  read-only, to numba's per-user cache), so a new process skips the compile.
- nogil=True: a loop releases the GIL, so several Python threads can run inferences at once.
- fastmath stays off: the loops are checked against float64 oracles with a rounding-error bound
  that assumes IEEE arithmetic; reassociation would void it.
- error_model="numpy": division follows NumPy (inf/nan) instead of raising inside the loop.

Every kernel file has the same shape: `check_<op>(...)` checks and coerces the arguments and
returns the tuple `run_<op>` takes; `run_<op>(*args)` runs the numba loops and returns the
output; the public `<op>(...)` is `run_<op>(*check_<op>(...))`. The engine calls the check once
per layer when it binds a plan, and then only the run: on a 7x7 layer checking the arguments
costs about as much as computing the result.
"""

import numba

jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
