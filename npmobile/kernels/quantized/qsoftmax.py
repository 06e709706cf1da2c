"""Quantized softmax (TFLite SOFTMAX on uint8/int8, the reference kernel's fixed-point recipe).

With s the input scale (beta = 1) and a row's integers x[i] (max x_max), the runtime computes
exp(s * (x[i] - x_max)) and the sum of those in gemmlowp fixed point, never in float:

    d[i]   = x[i] - x_max <= 0                    (skipped when d[i] < diff_min: exp is ~0 there)
    z[i]   = MultiplyByQuantizedMultiplier(d[i], multiplier, left_shift)   s * d[i] in Q5.26
    e[i]   = exp_on_negative_values(z[i])                exp in Q0.31 (polynomial + barrel shifter)
    S      = sum_i Rescale_to_Q12.19(e[i])               the sum in Q12.19
    1/S    = GetReciprocal(S) = r * 2^-num_bits_over_unit     (Newton-Raphson, r in Q0.31)
    y[i]   = clamp(RoundingDivideByPOT(SRDHM(r, e[i]), num_bits_over_unit + 31 - 8) + type min)

The output has scale 1/256 and zero point 0 (uint8) or -128 (int8), as TFLite requires. The
multiplier and left_shift encode s * 2^26 (`softmax_params`, TFLite's PreprocessSoftmaxScaling),
diff_min the most negative difference whose exp still counts (CalculateInputRadius).

Layout: x (..., classes) 8-bit -> y of the same shape and dtype. Cost: per element one exp
(about 20 integer multiplies) and one multiply; per row one reciprocal. An 8-bit row has at most
256 differences d, so the fast kernel computes their exps once per layer (`exp_table`) and reads
them; 5x faster on 1001 classes.

The oracle computes the same steps on whole rows in int64 NumPy, written with masks as gemmlowp's
SIMD code is; the fast kernel is the scalar, branching form from fixedpoint.py.
"""

import math

import numpy as np

from .. import Kernel
from .._jit import jit
from ._qchecks import as_q8, q_output
from .fixedpoint import (INT32_MAX, INT32_MIN, _EXP_MULTIPLIERS, exp_on_negative_values, get_reciprocal,
                         multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_ref,
                         quantize_multiplier, rounding_divide_by_pot, rounding_divide_by_pot_ref,
                         saturating_rounding_multiply_by_pot, srdhm, srdhm_ref)

SCALED_DIFF_INTEGER_BITS = 5  # z in Q5.26: differences down to -32
ACCUMULATION_INTEGER_BITS = 12  # the sum in Q12.19: up to 4096 classes at exp(0) = 1


def softmax_params(input_scale, beta=1.0):
    """TFLite's PreprocessSoftmaxScaling and CalculateInputRadius: (multiplier, left_shift, diff_min)."""
    real = min(float(beta) * float(np.float32(input_scale)) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)),
               float((1 << 31) - 1))
    if not real > 1.0:
        raise ValueError(f"softmax: input scale {input_scale} x beta {beta} is too small for the quantized kernel")
    multiplier, left_shift = quantize_multiplier(real)
    radius = ((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)) / (1 << left_shift)
    return dict(multiplier=multiplier, left_shift=left_shift, diff_min=-int(math.floor(radius)))


# --- the oracle: whole rows at once, int64 NumPy with masks ------------------------------------

def _sat_mul_pot_ref(x, exponent):
    """x * 2^exponent on int32 values: saturating up, rounding down (gemmlowp's two halves)."""
    if exponent > 0:
        threshold = (1 << (31 - exponent)) - 1
        return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))
    return rounding_divide_by_pot_ref(x, -exponent) if exponent < 0 else x


def _exp_on_negative_values_ref(a, integer_bits):
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = (a & (quarter - 1)) - quarter  # in [-1/4, 0)
    x = _sat_mul_pot_ref(a_mod, integer_bits) + (1 << 28)  # Q0.31, plus 1/8
    x2 = srdhm_ref(x, x)
    x3, x4 = srdhm_ref(x2, x), srdhm_ref(x2, x2)
    poly = rounding_divide_by_pot_ref(srdhm_ref(rounding_divide_by_pot_ref(x4, 2) + x3, 715827883) + x2, 1)
    result = 1895147668 + srdhm_ref(1895147668, x + poly)
    remainder = a_mod - a
    for k, mult in zip(range(-2, 5), _EXP_MULTIPLIERS):
        if integer_bits > k:
            result = np.where(remainder & (1 << (frac + k)) != 0, srdhm_ref(result, mult), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _reciprocal_ref(total, integer_bits):
    """GetReciprocal on an array of positive Q(integer_bits) sums: (r, num_bits_over_unit)."""
    bit_length = np.frexp(total.astype(np.float64))[1]  # exact for integers below 2^53
    headroom_plus_one = 32 - bit_length
    d = ((total << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)  # in Q0.31, [0, 1)
    half = (d + (1 << 31)) >> 1
    x = 1515870810 + srdhm_ref(half, -1010580540)
    for _ in range(3):
        x = x + _sat_mul_pot_ref(srdhm_ref(x, (1 << 29) - srdhm_ref(half, x)), 2)
    return _sat_mul_pot_ref(x, 1), integer_bits - headroom_plus_one


def qsoftmax_ref(x, *, multiplier, left_shift, diff_min):
    """The oracle: the steps of the module docstring on every row at once."""
    x = np.asarray(x)
    info = np.iinfo(x.dtype)
    d = x.astype(np.int64) - x.max(axis=-1, keepdims=True)
    counted = d >= diff_min
    z = multiply_by_quantized_multiplier_ref(d, multiplier, left_shift)
    e = np.where(counted, _exp_on_negative_values_ref(z, SCALED_DIFF_INTEGER_BITS), 0)
    total = rounding_divide_by_pot_ref(e, ACCUMULATION_INTEGER_BITS).sum(axis=-1, keepdims=True)
    r, bits_over = _reciprocal_ref(total, ACCUMULATION_INTEGER_BITS)
    y = rounding_divide_by_pot_ref(srdhm_ref(r, e), bits_over + 31 - 8) + info.min
    return np.where(counted, np.clip(y, info.min, info.max), info.min).astype(x.dtype)


# --- the fast kernel: one row at a time, scalar fixed point --------------------------------------

def check_qsoftmax(x, *, multiplier, left_shift, diff_min, out=None):
    """The arguments of run_qsoftmax, checked."""
    x = as_q8("x", x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected at least one class on the last axis, found shape {x.shape}")
    for name, v, lo, hi in (("multiplier", multiplier, 1 << 30, INT32_MAX), ("left_shift", left_shift, 0, 30),
                            ("diff_min", diff_min, INT32_MIN, 0)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], found {v!r}")
    if x.shape[-1] > 1 << (31 - ACCUMULATION_INTEGER_BITS):
        raise ValueError(f"x: at most {1 << (31 - ACCUMULATION_INTEGER_BITS)} classes fit the sum, found {x.shape[-1]}")
    y = q_output(out, x.shape, x.dtype)
    info = np.iinfo(x.dtype)
    k = x.shape[-1]
    return (x.reshape(-1, k), exp_table(int(multiplier), int(left_shift), int(diff_min)), int(info.min), int(info.max),
            y.reshape(-1, k), y)


def exp_table(multiplier, left_shift, diff_min):
    """e for every difference an 8-bit row can have: table[j] = exp_on_negative_values(z) of
    d = -j (j = 0 .. 255), or -1 where d < diff_min (not counted). The same integers the steps
    compute per element, by the same scalar helpers, once per layer."""
    table = np.empty(256, np.int64)
    _exp_table_jit(multiplier, left_shift, diff_min, table)
    return table


@jit
def _exp_table_jit(multiplier, left_shift, diff_min, table):
    for j in range(table.shape[0]):
        d = -j
        table[j] = -1
        if d >= diff_min:
            table[j] = exp_on_negative_values(multiply_by_quantized_multiplier(d, multiplier, left_shift),
                                              SCALED_DIFF_INTEGER_BITS)


def run_qsoftmax(x, table, lo, hi, y_rows, y):
    _qsoftmax_jit(x, table, lo, hi, y_rows)
    return y


def qsoftmax(x, *, multiplier, left_shift, diff_min, out=None):
    """The fast kernel: the same steps per row, each element's exp read from exp_table, the rest
    with fixedpoint.py's scalar helpers."""
    return run_qsoftmax(*check_qsoftmax(x, multiplier=multiplier, left_shift=left_shift, diff_min=diff_min, out=out))


@jit
def _qsoftmax_jit(x, table, lo, hi, y):
    for r in range(x.shape[0]):
        x_max = np.int64(x[r, 0])
        for i in range(x.shape[1]):
            x_max = max(x_max, np.int64(x[r, i]))
        total = 0
        for i in range(x.shape[1]):
            e = table[x_max - np.int64(x[r, i])]
            if e >= 0:
                total += saturating_rounding_multiply_by_pot(e, -ACCUMULATION_INTEGER_BITS)
        reciprocal, bits_over = get_reciprocal(total, ACCUMULATION_INTEGER_BITS)
        for i in range(x.shape[1]):
            e = table[x_max - np.int64(x[r, i])]
            if e < 0:
                y[r, i] = lo
            else:
                v = rounding_divide_by_pot(srdhm(reciprocal, e), bits_over + 31 - 8) + lo
                y[r, i] = min(max(v, lo), hi)


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qsoftmax", qsoftmax, qsoftmax_ref, check_qsoftmax, run_qsoftmax),)
