"""npmobile's integer kernels: quantized inference as TFLite's reference kernels compute it.

Start reading at `fixedpoint.py` (how a real scale becomes an integer multiplier and a shift, and
the two roundings every output goes through), then `qpointwise.py` (the equation every quantized
convolution shares, and how an exact integer product runs on float32 BLAS), `qdepthwise.py`,
`qconv2d.py`, `qadd.py` (V2's residual, with its own rescaling), `qpool.py`, `qsoftmax.py`
(gemmlowp's fixed-point exp and reciprocal) and `quantize.py` (the two ends).

Each file is shaped like the float kernels: the equation and its rounding in the docstring, an
oracle in exact int64 NumPy, a numba fast kernel that checks its arguments and returns the loop
(`kernel.bind`). `QKERNELS` lists them once, as `KERNELS` lists the float kernels.
"""

from .. import Kernel
from .qadd import add_multipliers, qadd, qadd_ref
from .qconv2d import qconv2d, qconv2d_ref
from .qdepthwise import qdepthwise_conv2d, qdepthwise_conv2d_ref
from .qpointwise import qdense, qdense_ref, qpointwise_conv2d, qpointwise_conv2d_ref
from .qpool import qglobal_avg_pool, qglobal_avg_pool_ref
from .qsoftmax import qsoftmax, qsoftmax_ref, softmax_params
from .quantize import dequantize, dequantize_ref, quantize, quantize_ref

QKERNELS = {k.name: k for k in (
    Kernel("qconv2d", qconv2d, qconv2d_ref),
    Kernel("qdepthwise_conv2d", qdepthwise_conv2d, qdepthwise_conv2d_ref),
    Kernel("qpointwise_conv2d", qpointwise_conv2d, qpointwise_conv2d_ref),
    Kernel("qdense", qdense, qdense_ref),
    Kernel("qadd", qadd, qadd_ref),
    Kernel("qglobal_avg_pool", qglobal_avg_pool, qglobal_avg_pool_ref),
    Kernel("qsoftmax", qsoftmax, qsoftmax_ref),
    Kernel("quantize", quantize, quantize_ref),
    Kernel("dequantize", dequantize, dequantize_ref),
)}

__all__ = ["QKERNELS", "add_multipliers", "softmax_params"] + [
    n for k in QKERNELS.values() for n in (k.fast.__name__, k.ref.__name__)]
