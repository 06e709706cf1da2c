"""npmobile's kernels: each op as a fast numba kernel beside its plain-NumPy oracle.

Start reading at `depthwise.py`, then `pointwise.py`: together they are the depthwise-separable
convolution that MobileNet is built from. `conv2d.py` is the standard convolution they replace.

`KERNELS` lists every op once: tests check each fast kernel against its oracle by iterating over
it, and benchmarks time them from it. Oracle and fast kernel share one signature: tensors
positional, attributes keyword-only. Each fast kernel is written as the half that checks its
arguments and returns the loop to run (`_jit.fast_kernel`): `kernel(...)` does both,
`kernel.bind(...)` only the first, which is how the engine prepares a layer once and then runs it.
"""

from typing import Callable, NamedTuple

from .activation import clamp, clamp_ref, softmax, softmax_ref
from .batchnorm import batchnorm, batchnorm_ref, fold_batchnorm
from .conv2d import conv2d, conv2d_ref
from .dense import dense, dense_ref
from .depthwise import depthwise_conv2d, depthwise_conv2d_ref
from .elementwise import add, add_ref
from .padding import zero_pad, zero_pad_ref
from .pointwise import pointwise_conv2d, pointwise_conv2d_ref
from .pooling import global_avg_pool, global_avg_pool_ref, global_max_pool, global_max_pool_ref


class Kernel(NamedTuple):
    name: str
    fast: Callable
    ref: Callable


KERNELS = {k.name: k for k in (
    Kernel("conv2d", conv2d, conv2d_ref),
    Kernel("depthwise_conv2d", depthwise_conv2d, depthwise_conv2d_ref),
    Kernel("pointwise_conv2d", pointwise_conv2d, pointwise_conv2d_ref),
    Kernel("batchnorm", batchnorm, batchnorm_ref),
    Kernel("clamp", clamp, clamp_ref),
    Kernel("zero_pad", zero_pad, zero_pad_ref),
    Kernel("add", add, add_ref),
    Kernel("global_avg_pool", global_avg_pool, global_avg_pool_ref),
    Kernel("global_max_pool", global_max_pool, global_max_pool_ref),
    Kernel("dense", dense, dense_ref),
    Kernel("softmax", softmax, softmax_ref),
)}

__all__ = ["KERNELS", "Kernel", "fold_batchnorm"] + [n for k in KERNELS.values() for n in (k.fast.__name__, k.ref.__name__)]
