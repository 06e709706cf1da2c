"""Quantized elementwise addition (TFLite ADD on uint8/int8): the residual connection of V2.

The two inputs and the output each have their own scale, so the sum cannot be taken on the stored
integers. TFLite brings both inputs to a common finer scale first: each is shifted left by
`left_shift` (20) bits, which leaves room for the fractional part, then multiplied by
s_a / (2 * max(s_a, s_b)) (resp. s_b / ...), a multiplier below one; the sum is multiplied by
2 * max(s_a, s_b) / (2^left_shift * s_y):

    a' = MultiplyByQuantizedMultiplier((a - a_zero) * 2^left_shift, a_multiplier, a_shift)
    b' = MultiplyByQuantizedMultiplier((b - b_zero) * 2^left_shift, b_multiplier, b_shift)
    y  = clamp(MultiplyByQuantizedMultiplier(a' + b', y_multiplier, y_shift) + y_zero, lo, hi)

Three roundings (fixedpoint.py's rules), each exactly where the runtime has one. The multipliers
come from `add_multipliers(s_a, s_b, s_y)`, which derives them as TFLite's ADD does.

Layout: a, b and y of one shape and one 8-bit dtype. Cost: no MACs; three requantizations per
element.
"""

import numpy as np

from .. import Kernel
from .._jit import jit
from ._qchecks import as_q8, check_int_clamp, check_zero, q_output
from .fixedpoint import multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_ref, quantize_multiplier


def add_multipliers(a_scale, b_scale, y_scale, left_shift=20):
    """TFLite's ADD preparation: {a,b,y}_multiplier and {a,b,y}_shift from the float32 scales."""
    a_scale, b_scale, y_scale = (float(np.float32(s)) for s in (a_scale, b_scale, y_scale))
    twice_max = 2.0 * max(a_scale, b_scale)
    a_m, a_s = quantize_multiplier(a_scale / twice_max)
    b_m, b_s = quantize_multiplier(b_scale / twice_max)
    y_m, y_s = quantize_multiplier(twice_max / ((1 << left_shift) * y_scale))
    return dict(a_multiplier=a_m, a_shift=a_s, b_multiplier=b_m, b_shift=b_s, y_multiplier=y_m, y_shift=y_s)


def qadd_ref(a, b, *, a_zero, b_zero, y_zero, a_multiplier, a_shift, b_multiplier, b_shift, y_multiplier,
             y_shift, left_shift=20, clamp=None):
    """The oracle: the equations above on int64 arrays."""
    a = np.asarray(a)
    a2 = multiply_by_quantized_multiplier_ref((a.astype(np.int64) - a_zero) << left_shift, a_multiplier, a_shift)
    b2 = multiply_by_quantized_multiplier_ref((np.asarray(b).astype(np.int64) - b_zero) << left_shift,
                                              b_multiplier, b_shift)
    info = np.iinfo(a.dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    y = multiply_by_quantized_multiplier_ref(a2 + b2, y_multiplier, y_shift) + y_zero
    return np.clip(y, lo, hi).astype(a.dtype)


def check_qadd(a, b, *, a_zero, b_zero, y_zero, a_multiplier, a_shift, b_multiplier, b_shift, y_multiplier,
               y_shift, left_shift=20, clamp=None, out=None):
    """The arguments of run_qadd, checked."""
    a = as_q8("a", a)
    b = as_q8("b", b)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a, b: expected one shape and dtype, found {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    zeros = [check_zero(name, z, a.dtype) for name, z in (("a_zero", a_zero), ("b_zero", b_zero), ("y_zero", y_zero))]
    ints = []
    for name, v, lo_v, hi_v in (("a_multiplier", a_multiplier, 0, (1 << 31) - 1), ("a_shift", a_shift, -31, 0),
                                ("b_multiplier", b_multiplier, 0, (1 << 31) - 1), ("b_shift", b_shift, -31, 0),
                                ("y_multiplier", y_multiplier, 0, (1 << 31) - 1), ("y_shift", y_shift, -31, 30),
                                ("left_shift", left_shift, 0, 23)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo_v <= v <= hi_v:
            raise ValueError(f"{name}: expected an integer in [{lo_v}, {hi_v}], found {v!r}")
        ints.append(int(v))
    lo, hi = check_int_clamp(clamp, a.dtype)
    y = q_output(out, a.shape, a.dtype)
    return (a.reshape(-1), b.reshape(-1), *zeros, *ints, lo, hi, y.reshape(-1), y)


def run_qadd(a, b, a_zero, b_zero, y_zero, a_m, a_s, b_m, b_s, y_m, y_s, left_shift, lo, hi, y_flat, y):
    _qadd_jit(a, b, a_zero, b_zero, y_zero, a_m, a_s, b_m, b_s, y_m, y_s, left_shift, lo, hi, y_flat)
    return y


def qadd(a, b, *, a_zero, b_zero, y_zero, a_multiplier, a_shift, b_multiplier, b_shift, y_multiplier, y_shift,
         left_shift=20, clamp=None, out=None):
    """The fast kernel: one numba pass over the elements."""
    return run_qadd(*check_qadd(a, b, a_zero=a_zero, b_zero=b_zero, y_zero=y_zero, a_multiplier=a_multiplier,
                                a_shift=a_shift, b_multiplier=b_multiplier, b_shift=b_shift,
                                y_multiplier=y_multiplier, y_shift=y_shift, left_shift=left_shift, clamp=clamp,
                                out=out))


@jit
def _qadd_jit(a, b, a_zero, b_zero, y_zero, a_m, a_s, b_m, b_s, y_m, y_s, left_shift, lo, hi, y):
    for i in range(a.shape[0]):
        a2 = multiply_by_quantized_multiplier((np.int32(a[i]) - a_zero) << left_shift, a_m, a_s)
        b2 = multiply_by_quantized_multiplier((np.int32(b[i]) - b_zero) << left_shift, b_m, b_s)
        v = multiply_by_quantized_multiplier(a2 + b2, y_m, y_s) + y_zero
        y[i] = min(max(v, lo), hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qadd", qadd, qadd_ref, check_qadd, run_qadd),)
