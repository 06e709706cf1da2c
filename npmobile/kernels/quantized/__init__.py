"""npmobile's integer kernels: quantized inference as TFLite's reference kernels compute it.

Start reading at `fixedpoint.py` (how a real scale becomes an integer multiplier and a shift, and
the two roundings every output goes through), then `qpointwise.py` (the equation every quantized
convolution shares, and how an exact integer product runs on float32 BLAS), `qdepthwise.py`,
`qconv2d.py`, `qfully_connected.py`, `qadd.py` (V2's residual, with its own rescaling), `qpool.py`, `qmean.py`, `qsoftmax.py`
(gemmlowp's fixed-point exp and reciprocal) and `quantize.py` (the two ends). ONNX's QLinear ops
compute the same accumulators but requantize in float32, as ONNX Runtime does: `qlinear.py`
(the rounding, QLinearConv and QLinearMatMul), `qlinear_depthwise.py`, `qlinear_add.py`,
`qlinear_pool.py`.

Each file is shaped like the float kernels: the equation and its rounding in the docstring, an
oracle in exact int64 NumPy, and the fast kernel as `check_<op>` (the arguments, checked, once per
layer) and `run_<op>` (the loops), `<op> = run_<op>(*check_<op>(...))`; the file ends with its
entries for `QKERNELS`, which lists every integer op once, as `KERNELS` lists the float kernels.
"""

from .qadd import KERNELS as _ADD, add_multipliers
from .qconv2d import KERNELS as _CONV2D
from .qdepthwise import KERNELS as _DEPTHWISE
from .qfully_connected import KERNELS as _FULLY_CONNECTED
from .qlinear import KERNELS as _QLINEAR, output_scales
from .qlinear_add import KERNELS as _QLINEAR_ADD
from .qlinear_depthwise import KERNELS as _QLINEAR_DEPTHWISE
from .qlinear_pool import KERNELS as _QLINEAR_POOL
from .qmean import KERNELS as _MEAN
from .qpointwise import KERNELS as _POINTWISE
from .qpool import KERNELS as _POOL
from .qsoftmax import KERNELS as _SOFTMAX, softmax_params
from .quantize import KERNELS as _ENDS, dequantize, quantize

# Each file lists its own entries (`KERNELS`: the float registry's `Kernel` type), at its end.
QKERNELS = {k.name: k for k in (*_CONV2D, *_DEPTHWISE, *_POINTWISE, *_FULLY_CONNECTED, *_ADD, *_POOL, *_MEAN, *_SOFTMAX, *_ENDS,
                                *_QLINEAR, *_QLINEAR_DEPTHWISE, *_QLINEAR_ADD, *_QLINEAR_POOL)}

__all__ = ["QKERNELS", "add_multipliers", "dequantize", "output_scales", "quantize", "softmax_params"]
