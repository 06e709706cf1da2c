"""npmobile's integer kernels: quantized inference as TFLite's reference kernels compute it.

Start reading at `fixedpoint.py` (how a real scale becomes an integer multiplier and a shift, and
the two roundings every output goes through), then `qpointwise.py` (the equation every quantized
convolution shares, and how an exact integer product runs on float32 BLAS), `qdepthwise.py`,
`qconv2d.py`, `qadd.py` (V2's residual, with its own rescaling), `qpool.py`, `qsoftmax.py`
(gemmlowp's fixed-point exp and reciprocal) and `quantize.py` (the two ends). ONNX's QLinear ops
compute the same accumulators but requantize in float32, as ONNX Runtime does: `qlinear.py`
(the rounding, QLinearConv and QLinearMatMul), `qlinear_depthwise.py`, `qlinear_add.py`,
`qlinear_pool.py`.

Each file is shaped like the float kernels: the equation and its rounding in the docstring, an
oracle in exact int64 NumPy, and the fast kernel as `check_<op>` (the arguments, checked, once per
layer) and `run_<op>` (the loops), `<op> = run_<op>(*check_<op>(...))`. `QKERNELS` lists them
once, as `KERNELS` lists the float kernels.
"""

from .. import Kernel
from .qadd import add_multipliers, check_qadd, qadd, qadd_ref, run_qadd
from .qconv2d import check_qconv2d, qconv2d, qconv2d_ref, run_qconv2d
from .qdepthwise import check_qdepthwise_conv2d, qdepthwise_conv2d, qdepthwise_conv2d_ref, run_qdepthwise_conv2d
from .qpointwise import (check_qdense, check_qpointwise_conv2d, qdense, qdense_ref, qpointwise_conv2d,
                         qpointwise_conv2d_ref, run_qdense, run_qpointwise_conv2d)
from .qpool import check_qglobal_avg_pool, qglobal_avg_pool, qglobal_avg_pool_ref, run_qglobal_avg_pool
from .qsoftmax import check_qsoftmax, qsoftmax, qsoftmax_ref, run_qsoftmax, softmax_params
from .qlinear import (check_qlinear_conv2d, check_qlinear_matmul, check_qlinear_pointwise_conv2d, output_scales,
                      qlinear_conv2d, qlinear_conv2d_ref, qlinear_matmul, qlinear_matmul_ref, qlinear_pointwise_conv2d,
                      qlinear_pointwise_conv2d_ref, run_qlinear_conv2d, run_qlinear_matmul, run_qlinear_pointwise_conv2d)
from .qlinear_add import check_qlinear_add, qlinear_add, qlinear_add_ref, run_qlinear_add
from .qlinear_depthwise import (check_qlinear_depthwise_conv2d, qlinear_depthwise_conv2d, qlinear_depthwise_conv2d_ref,
                                run_qlinear_depthwise_conv2d)
from .qlinear_pool import (check_qlinear_global_avg_pool, qlinear_global_avg_pool, qlinear_global_avg_pool_ref,
                           run_qlinear_global_avg_pool)
from .quantize import (check_dequantize, check_quantize, dequantize, dequantize_ref, quantize, quantize_ref,
                       run_dequantize, run_quantize)

QKERNELS = {k.name: k for k in (
    Kernel("qconv2d", qconv2d, qconv2d_ref, check_qconv2d, run_qconv2d),
    Kernel("qdepthwise_conv2d", qdepthwise_conv2d, qdepthwise_conv2d_ref, check_qdepthwise_conv2d,
           run_qdepthwise_conv2d),
    Kernel("qpointwise_conv2d", qpointwise_conv2d, qpointwise_conv2d_ref, check_qpointwise_conv2d,
           run_qpointwise_conv2d),
    Kernel("qdense", qdense, qdense_ref, check_qdense, run_qdense),
    Kernel("qadd", qadd, qadd_ref, check_qadd, run_qadd),
    Kernel("qglobal_avg_pool", qglobal_avg_pool, qglobal_avg_pool_ref, check_qglobal_avg_pool, run_qglobal_avg_pool),
    Kernel("qsoftmax", qsoftmax, qsoftmax_ref, check_qsoftmax, run_qsoftmax),
    # ONNX's QLinear ops, requantized in float32 as ONNX Runtime does (qlinear.py)
    Kernel("qlinear_conv2d", qlinear_conv2d, qlinear_conv2d_ref, check_qlinear_conv2d, run_qlinear_conv2d),
    Kernel("qlinear_depthwise_conv2d", qlinear_depthwise_conv2d, qlinear_depthwise_conv2d_ref,
           check_qlinear_depthwise_conv2d, run_qlinear_depthwise_conv2d),
    Kernel("qlinear_pointwise_conv2d", qlinear_pointwise_conv2d, qlinear_pointwise_conv2d_ref,
           check_qlinear_pointwise_conv2d, run_qlinear_pointwise_conv2d),
    Kernel("qlinear_matmul", qlinear_matmul, qlinear_matmul_ref, check_qlinear_matmul, run_qlinear_matmul),
    Kernel("qlinear_add", qlinear_add, qlinear_add_ref, check_qlinear_add, run_qlinear_add),
    Kernel("qlinear_global_avg_pool", qlinear_global_avg_pool, qlinear_global_avg_pool_ref,
           check_qlinear_global_avg_pool, run_qlinear_global_avg_pool),
    Kernel("quantize", quantize, quantize_ref, check_quantize, run_quantize),
    Kernel("dequantize", dequantize, dequantize_ref, check_dequantize, run_dequantize),
)}

__all__ = ["QKERNELS", "add_multipliers", "output_scales", "softmax_params"] + [
    n for k in QKERNELS.values() for n in (k.fast.__name__, k.ref.__name__)]
