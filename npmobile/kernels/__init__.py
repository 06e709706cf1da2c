"""npmobile's kernels: each op as a fast numba kernel beside its plain-NumPy oracle.

Start reading at `depthwise.py`, then `pointwise.py`: together they are the depthwise-separable
convolution that MobileNet is built from, and `separable.py` runs the pair as one kernel, block by
block. `conv2d.py` is the standard convolution they replace.

`KERNELS` lists every op once: tests check each fast kernel against its oracle by iterating over
it, and benchmarks time them from it. Oracle and fast kernel share one signature: tensors
positional, attributes keyword-only. Every fast kernel is `run(*check(...))`: `check` takes the
kernel's arguments (and `out`), checks and coerces them and returns the tuple `run` takes; `run`
runs the numba loops and returns the output. The engine calls `check` once per layer when it
binds a plan, then only `run` on every call.
"""

from typing import Callable, NamedTuple

from .activation import check_clamp, check_softmax, clamp, clamp_ref, run_clamp, run_softmax, softmax, softmax_ref
from .batchnorm import batchnorm, batchnorm_ref, check_batchnorm, fold_batchnorm, run_batchnorm
from .conv2d import check_conv2d, conv2d, conv2d_ref, run_conv2d
from .dense import check_dense, dense, dense_ref, run_dense
from .depthwise import check_depthwise_conv2d, depthwise_conv2d, depthwise_conv2d_ref, run_depthwise_conv2d
from .elementwise import add, add_ref, check_add, run_add
from .padding import check_zero_pad, run_zero_pad, zero_pad, zero_pad_ref
from .pointwise import check_pointwise_conv2d, pointwise_conv2d, pointwise_conv2d_ref, run_pointwise_conv2d
from .pooling import (check_global_avg_pool, check_global_max_pool, global_avg_pool, global_avg_pool_ref,
                      global_max_pool, global_max_pool_ref, run_global_pool)
from .separable import check_separable_conv2d, run_separable_conv2d, separable_conv2d, separable_conv2d_ref


class Kernel(NamedTuple):
    name: str
    fast: Callable   # fast(*tensors, **attrs, out=None) == run(*check(*tensors, **attrs, out=None))
    ref: Callable    # the float64 oracle, same signature without out
    check: Callable  # -> the tuple of arguments run takes
    run: Callable    # runs the numba loops, returns the output


KERNELS = {k.name: k for k in (
    Kernel("conv2d", conv2d, conv2d_ref, check_conv2d, run_conv2d),
    Kernel("depthwise_conv2d", depthwise_conv2d, depthwise_conv2d_ref, check_depthwise_conv2d, run_depthwise_conv2d),
    Kernel("pointwise_conv2d", pointwise_conv2d, pointwise_conv2d_ref, check_pointwise_conv2d, run_pointwise_conv2d),
    Kernel("separable_conv2d", separable_conv2d, separable_conv2d_ref, check_separable_conv2d, run_separable_conv2d),
    Kernel("batchnorm", batchnorm, batchnorm_ref, check_batchnorm, run_batchnorm),
    Kernel("clamp", clamp, clamp_ref, check_clamp, run_clamp),
    Kernel("zero_pad", zero_pad, zero_pad_ref, check_zero_pad, run_zero_pad),
    Kernel("add", add, add_ref, check_add, run_add),
    Kernel("global_avg_pool", global_avg_pool, global_avg_pool_ref, check_global_avg_pool, run_global_pool),
    Kernel("global_max_pool", global_max_pool, global_max_pool_ref, check_global_max_pool, run_global_pool),
    Kernel("dense", dense, dense_ref, check_dense, run_dense),
    Kernel("softmax", softmax, softmax_ref, check_softmax, run_softmax),
)}

__all__ = ["KERNELS", "Kernel", "fold_batchnorm"] + [n for k in KERNELS.values() for n in (k.fast.__name__, k.ref.__name__)]
