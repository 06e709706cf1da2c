"""Fixed-point arithmetic of quantized inference, as TFLite's reference kernels do it.

A quantized tensor stores integers q that mean real = scale * (q - zero_point). A layer's int32
accumulator `acc` has the scale s_x * s_w (input times weight scale); its output needs the scale
s_y, so the accumulator is multiplied by the real number M = s_x * s_w / s_y (< 1 in practice)
without any floating point at run time:

    M = m * 2^shift,  m = multiplier / 2^31 in [0.5, 1),  multiplier an int32      (quantize_multiplier)
    y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2^max(shift, 0), multiplier),
                            max(-shift, 0))                                   (multiply_by_quantized_multiplier)

with, for int32 a, b and 0 <= e <= 31:

    SaturatingRoundingDoublingHighMul(a, b) = floor((a * b + 2^30) / 2^31)     (round half up;
        the one product that overflows, (-2^31) * (-2^31), saturates to 2^31 - 1)
    RoundingDivideByPOT(x, e) = x / 2^e rounded to nearest, halves away from zero

So an output is rounded twice (once to 31 fractional bits, once by the shift), which is what
LiteRT's reference kernels do (TFLite built without TFLITE_SINGLE_ROUNDING; gemmlowp's
fixedpoint.h). Rounding acc * M once can differ by one unit: docs/quantized.md shows a real layer
where it does. That is why "close to" the runtime is not "equal to" it.

Each helper is here twice, written two ways so that a test can hold them together:
- a scalar form for the numba loops (`srdhm`, `rounding_divide_by_pot`, ...), written as gemmlowp
  writes it (a nudge and a truncating division; a mask, a remainder and a threshold);
- an array form in exact int64 NumPy for the oracles (`srdhm_ref`, ...), written from the
  rounding rule itself (floor of the nudged value; halves away from zero by the sign).

Softmax needs gemmlowp's fixed-point exp and reciprocal too: a FixedPoint<int32, k> is an int32
raw value r meaning r / 2^(31 - k) (k integer bits). Their scalar forms are below; their array
forms sit with the softmax oracle (qsoftmax.py), written with masks as gemmlowp's SIMD code is.
"""

import math

import numpy as np

from .._jit import jit
from .. import _simd as simd

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# --- from a real scale to (multiplier, shift), once, at load time -----------------------------

def round_half_away(v):
    """C's std::round (TfLiteRound): halves away from zero. Python's round() would go to even."""
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def quantize_multiplier(real):
    """TFLite's QuantizeMultiplier: the double `real` as (multiplier, shift) with
    real ~= multiplier * 2^(shift - 31), multiplier in [2^30, 2^31) (or 0 for real == 0).

    frexp gives real = q * 2^shift with q in [0.5, 1); q * 2^31 is rounded half away from zero;
    a q that rounds up to 2^31 becomes 2^30 with shift + 1; a shift below -31 flushes to zero.
    """
    real = float(real)
    if real == 0.0:
        return 0, 0
    if not math.isfinite(real):
        raise ValueError(f"quantize_multiplier: expected a finite real multiplier, found {real}")
    q, shift = math.frexp(real)
    q_fixed = round_half_away(q * (1 << 31))
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def quantize_multipliers(reals):
    """quantize_multiplier over an array: (int32 multipliers, int32 shifts)."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([m for m, _ in pairs], dtype=np.int32).reshape(np.shape(reals)),
            np.array([s for _, s in pairs], dtype=np.int32).reshape(np.shape(reals)))


def activation_range(kind, scale, zero_point, qmin, qmax):
    """TFLite's CalculateActivationRangeQuantized: the fused activation as an integer clamp.
    A real bound f becomes zero_point + round(f / scale), computed in float32 as the runtime does,
    then intersected with the type's range [qmin, qmax]."""
    def q(f):
        return int(zero_point) + round_half_away(float(np.float32(f) / np.float32(scale)))
    if kind is None:
        return int(qmin), int(qmax)
    if kind == "relu":
        return max(int(qmin), q(0.0)), int(qmax)
    if kind == "relu6":
        return max(int(qmin), q(0.0)), min(int(qmax), q(6.0))
    if kind == "relu_n1_to_1":
        return max(int(qmin), q(-1.0)), min(int(qmax), q(1.0))
    raise ValueError(f"activation: expected None, 'relu', 'relu6' or 'relu_n1_to_1', found {kind!r}")


# --- scalar forms, for the numba loops --------------------------------------------------------

@jit
def wrap_int32(v):
    """v reduced to int32 by two's complement, as a C int32 multiplication that overflows."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@jit
def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul: (a * b) / 2^31 rounded to nearest, as gemmlowp writes
    it: a nudge of +-2^30 (1 - 2^30 below zero) and a division that truncates toward zero."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    t = ab + nudge
    return t >> 31 if t >= 0 else -((-t) >> 31)  # C's '/' truncates; '>>' alone would floor


@jit
def rounding_divide_by_pot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent to nearest, halves away from zero (gemmlowp's
    mask, remainder and threshold; the threshold is one higher for negative x)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@jit
def multiply_by_quantized_multiplier(x, multiplier, shift):
    """acc * M in integers: left shift (if shift > 0), SRDHM by the multiplier, rounding right
    shift (if shift < 0)."""
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rounding_divide_by_pot(srdhm(wrap_int32(x * (1 << left)), multiplier), right)


@jit
def saturating_rounding_multiply_by_pot(x, exponent):
    """x * 2^exponent on an int32: saturating for exponent > 0, rounding for exponent < 0."""
    if exponent > 0:
        threshold = (1 << (31 - exponent)) - 1
        if x > threshold:
            return INT32_MAX
        if x < -threshold:
            return INT32_MIN
        return x << exponent
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    return x


@jit
def _exp_quarter(a):
    """exp(a) for a FixedPoint<int32, 0> a in [-1/4, 0): gemmlowp's Taylor polynomial around -1/8."""
    constant_term = 1895147668  # exp(-1/8) in Q0.31
    one_third = 715827883  # 1/3 in Q0.31
    x = a + (1 << 28)  # a + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(srdhm(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + srdhm(constant_term, x + poly)


# exp(-2^k) in Q0.31 for k = -2..4: the barrel shifter of exp_on_negative_values.
_EXP_MULTIPLIERS = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)


@jit
def exp_on_negative_values(a, integer_bits):
    """exp(a) in Q0.31 for a FixedPoint<int32, integer_bits> a <= 0 (gemmlowp): exp of a mod 1/4
    by the polynomial, times exp(-2^k) for each bit k of the rest."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_quarter = (a & (one_quarter - 1)) - one_quarter
    result = _exp_quarter(saturating_rounding_multiply_by_pot(a_mod_quarter_minus_quarter, integer_bits))
    remainder = a_mod_quarter_minus_quarter - a
    for i in range(7):
        exponent = i - 2
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = srdhm(result, _EXP_MULTIPLIERS[i])
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    if a == 0:
        result = INT32_MAX
    return result


@jit
def one_over_one_plus_x(a):
    """1 / (1 + a) in Q0.31 for a in Q0.31, a in [0, 1): gemmlowp's Newton-Raphson division,
    3 steps from 48/17 - 32/17 * d, all in Q2.29."""
    half_denominator = (a + INT32_MAX + 1) >> 1  # RoundingHalfSum(a, One) for a >= 0
    x = 1515870810 + srdhm(half_denominator, -1010580540)  # 48/17 - 32/17 * d
    one_q2 = 1 << 29
    for _ in range(3):
        one_minus_dx = one_q2 - srdhm(half_denominator, x)
        x = x + saturating_rounding_multiply_by_pot(srdhm(x, one_minus_dx), 2)
    return saturating_rounding_multiply_by_pot(x, 1)  # x / 2 in Q2.29 -> Q0.31


@jit
def count_leading_zeros32(x):
    """Leading zero bits of x as an unsigned 32-bit value (32 for 0)."""
    n = 0
    bit = 1 << 31
    while n < 32 and not (x & bit):
        n += 1
        bit >>= 1
    return n


@jit
def get_reciprocal(x, integer_bits):
    """TFLite's GetReciprocal for a positive FixedPoint<int32, integer_bits> x: returns
    (1 / x normalised into Q0.31, num_bits_over_unit): 1/x = raw / 2^31 / 2^num_bits_over_unit."""
    headroom_plus_one = count_leading_zeros32(x)
    num_bits_over_unit = integer_bits - headroom_plus_one
    shifted_minus_one = wrap_int32(((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    return one_over_one_plus_x(shifted_minus_one), num_bits_over_unit


# --- array forms in exact int64 NumPy, for the oracles ------------------------------------------

def srdhm_ref(a, b):
    """SaturatingRoundingDoublingHighMul from its rounding rule: floor((a*b + 2^30) / 2^31), i.e.
    halves rounded up, with the single overflowing product saturated."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    y = (a * b + (1 << 30)) >> 31  # >> on int64 is floor division by 2^31
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, y)


def rounding_divide_by_pot_ref(x, exponent):
    """x / 2^exponent rounded to nearest, halves away from zero: |x| rounded half up, sign put back."""
    x, e = np.asarray(x, dtype=np.int64), np.asarray(exponent, dtype=np.int64)
    half = np.where(e > 0, np.left_shift(1, np.maximum(e - 1, 0)), 0)
    return np.sign(x) * ((np.abs(x) + half) >> e)


def multiply_by_quantized_multiplier_ref(x, multiplier, shift):
    """acc * M as the runtime computes it (see the module docstring), on int64 arrays."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    shifted = x * np.left_shift(1, np.maximum(shift, 0))
    shifted = ((shifted + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # int32 wrap-around, as in C
    return rounding_divide_by_pot_ref(srdhm_ref(shifted, multiplier), np.maximum(-shift, 0))


# --- the epilogue every integer convolution shares -------------------------------------------

def requantize_params(multiplier, shift):
    """The constants of `requantize` as one (5, c_out) int64 array, rows (multiplier, left, right,
    half, neg): left/right the shift's two directions, half = 2^(right-1) (0 when right == 0) and
    neg = 1 where right > 0 (a negative value's halves round away from zero)."""
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if multiplier.size and multiplier.min() < 0:
        raise ValueError(f"multiplier: expected values >= 0, found {multiplier.min()}")
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
    return np.ascontiguousarray(np.stack([multiplier, left, right, half, right > 0]), dtype=np.int64)


@jit
def requantize(acc, rq, o, y_zero, lo, hi):
    """An int32 accumulator (scale s_x * s_w) -> an output integer (scale s_y): times M, plus the
    output zero point, clamped to the fused activation's range [lo, hi]; rq[:, o] are output
    channel o's constants (requantize_params). The same arithmetic as
    multiply_by_quantized_multiplier, written without branches so that a loop over channels
    compiles to SIMD instructions:
    - acc * 2^left wraps to int32 as C's int32 arithmetic does; the int32 round trips also tell
      LLVM that both factors of the product are 32-bit (one vpmuldq: 1.4x faster than the 64-bit
      multiply it makes otherwise);
    - SRDHM for a multiplier >= 0 (never the saturating pair) is floor((a*m + 2^30) / 2^31), an
      add and an arithmetic shift;
    - RoundingDivideByPOT is (x + half - [x < 0]) >> right: halves go up for x >= 0 and, with the
      one subtracted, toward -infinity for x < 0, i.e. away from zero."""
    a = np.int64(np.int32(acc << rq[1, o]))
    high = (a * np.int64(np.int32(rq[0, o])) + (1 << 30)) >> 31
    v = ((high + rq[3, o] - ((high < 0) & rq[4, o])) >> rq[2, o]) + y_zero
    return min(max(v, lo), hi)


def lane_params(rq):
    """The constants of `requantize_lanes` from requantize_params' rq, as one (5, c_out) int32
    array, rows (multiplier, left, right, mask, threshold): mask = 2^right - 1 and
    threshold = mask >> 1, RoundingDivideByPOT's."""
    mask = np.left_shift(np.int64(1), rq[2]) - 1
    return np.ascontiguousarray(np.stack([rq[0], rq[1], rq[2], mask, mask >> 1]), dtype=np.int32)


@jit
def requantize_lanes(acc, multiplier, left, right, mask, threshold):
    """multiply_by_quantized_multiplier on 16 int32 lanes (_simd.py), written as gemmlowp writes
    it for SIMD: the left shift (wrapping, as C's int32), SRDHM with 64-bit products, then
    RoundingDivideByPOT with its mask, remainder and threshold (one higher for a negative value:
    sra(high, 31) is -1 there), adding one where the remainder passes the threshold (greater
    gives -1 there, so it is subtracted). Multipliers >= 0, as requantize_params checks."""
    high = simd.srdhm(simd.shl(acc, left), multiplier)
    threshold = simd.sub(threshold, simd.sra(high, simd.splat(31)))
    return simd.sub(simd.sra(high, right), simd.greater(simd.and_(high, mask), threshold))


def requantize_ref(acc, multiplier, shift, y_zero, lo, hi):
    """The same on int64 arrays (multiplier and shift broadcast along the last axis)."""
    return np.clip(multiply_by_quantized_multiplier_ref(acc, multiplier, shift) + y_zero, lo, hi)


def output_ref(acc, b, multiplier, shift, y_zero, clamp, dtype):
    """The oracles' epilogue: acc + b (None: no bias), requantized and clamped to the fused
    activation (None: the whole range of dtype), as dtype."""
    if b is not None:
        acc = acc + np.asarray(b, dtype=np.int64)
    info = np.iinfo(dtype)
    lo, hi = clamp if clamp is not None else (info.min, info.max)
    return requantize_ref(acc, multiplier, shift, y_zero, lo, hi).astype(dtype)


def rescale_multiplier(x_scale, y_scale):
    """(multiplier, shift) of M = s_x / s_y, the float32 scales divided in double, as LiteRT's
    QUANTIZE (between 8-bit types) and MEAN prepare it."""
    return quantize_multiplier(float(np.float32(x_scale)) / float(np.float32(y_scale)))


def conv_multipliers(x_scale, w_scales, y_scale, double_product=False):
    """Per output channel, the multiplier and shift of M = s_x * s_w[c] / s_y, as LiteRT derives
    them: divided by s_y in double, the product s_x * s_w[c] taken in float32 on the legacy uint8
    path (GetQuantizedConvolutionMultipler) and in double for int8 per-channel layers
    (double_product=True, PopulateConvolutionQuantizationParams). (Measured: a double product on
    the uint8 files gives multipliers a few units larger, and 3 of 1.7 million outputs of the four
    TFLite MobileNets then round the other way; a float32 product on the int8 files, the same.)"""
    def product(s):
        return float(x_scale) * float(np.float32(s)) if double_product else float(np.float32(x_scale) * np.float32(s))
    reals = [product(s) / float(np.float32(y_scale)) for s in np.asarray(w_scales).reshape(-1)]
    return quantize_multipliers(reals)
