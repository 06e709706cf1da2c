"""ONNX (com.microsoft) QLinearAdd: a + b on 8-bit tensors of three scales, in float32 as ONNX
Runtime computes it on x86 (MLAS' AVX2 kernel, the one chosen on any AVX2 machine).

With r_a = float32(s_a / s_y) and r_b = float32(s_b / s_y), once per layer:

    fixed = float32(y_zero - fma(r_a, a_zero, float32(r_b * b_zero)))
    y     = saturate(rint(fma(a, r_a, fma(b, r_b, fixed))))

fma(u, v, w) = u * v + w rounded once to float32 (the FMA instruction; the C++ compiler contracts
r_a * a_zero + r_b * b_zero into one too), rint rounds halves to even, saturate clamps to the
8-bit type. Note the order: b is added into the fixed part first, then a; swapping the inputs can
change the last bit. (TFLite's ADD instead shifts both inputs left 20 bits and requantizes three
times in fixed point: qadd.py.) b is a tensor of a's shape, or a constant per channel (c,).

Layout: any shape, one 8-bit dtype for a, b and y. Cost: no MACs; two FMAs per element (the
hardware's, through LLVM's fma, 16 lanes at a time: V2's 11 additions take 0.02 ms; emulating
the one rounding in float64, with a modulo per element for b's index, took 0.64).
"""

from fractions import Fraction

import numpy as np

from .. import Kernel
from .._jit import jit
from .._simd import fma
from ._qchecks import as_q8, check_zero, q_output, type_range


def _check_ratio(name, s, s_y):
    for what, v in ((name, s), ("y_scale", s_y)):
        v = float(v)
        if not (np.isfinite(v) and v > 0 and np.isfinite(np.float32(v))):
            raise ValueError(f"{what}: expected a finite float32 scale > 0, found {v}")
    return np.float32(np.float32(s) / np.float32(s_y))


def add_constants(a_scale, a_zero, b_scale, b_zero, y_scale, y_zero):
    """(r_a, r_b, fixed) of the equations above, float32, from the file's scales and zero points."""
    r_a, r_b = _check_ratio("a_scale", a_scale, y_scale), _check_ratio("b_scale", b_scale, y_scale)
    inner = _fma32_ref(np.float32(r_a), np.float32(a_zero), np.float32(r_b * np.float32(b_zero)))
    return r_a, r_b, np.float32(np.float32(y_zero) - inner)


# --- float32 fused multiply-add ---------------------------------------------------------------

@jit
def fma32(u, v, w):
    """u * v + w for float32 u, v, w, rounded once to float32: LLVM's fma (the FMA instruction
    MLAS uses; a loop of them compiles to vfmadd on 16 lanes)."""
    return fma(np.float32(u), np.float32(v), np.float32(w))


def _fma32_ref(u, v, w):
    """The oracle of fma32 on arrays: the sum in x87 extended precision (64-bit significand),
    exact for the operand ranges QLinearAdd meets, then one rounding to float32; where it is not
    exact (TwoSum finds a remainder), the rational sum rounded to the nearest float32 (ties to
    even) with Fractions."""
    shape = np.broadcast_shapes(np.shape(u), np.shape(v), np.shape(w))
    u, v, w = (np.broadcast_to(np.asarray(a, dtype=np.float32), shape).reshape(-1) for a in (u, v, w))
    p, c = u.astype(np.longdouble) * v.astype(np.longdouble), w.astype(np.longdouble)
    s = p + c
    z = s - p
    dropped = (p - (s - z)) + (c - z)  # what the extended sum rounded off (TwoSum: exact)
    r = s.astype(np.float32)
    for i in np.nonzero(dropped != 0)[0]:
        r[i] = _round_fraction(Fraction(float(u[i])) * Fraction(float(v[i])) + Fraction(float(w[i])))
    return r.reshape(shape)


def _round_fraction(x):
    """The float32 nearest the rational x, halves to the even significand."""
    r = np.float32(float(x))  # within one float32 step of the answer
    below = r if Fraction(float(r)) <= x else np.nextafter(r, np.float32(-np.inf))
    above = np.nextafter(below, np.float32(np.inf))
    d_below, d_above = x - Fraction(float(below)), Fraction(float(above)) - x
    if d_below != d_above:
        return below if d_below < d_above else above
    return below if int(np.float32(below).view(np.int32)) % 2 == 0 else above


# --- the kernel --------------------------------------------------------------------------------

def qlinear_add_ref(a, b, *, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero):
    """The oracle: the equations above with _fma32_ref, np.rint and np.clip."""
    a = np.asarray(a)
    r_a, r_b, fixed = add_constants(a_scale, a_zero, b_scale, b_zero, y_scale, y_zero)
    inner = _fma32_ref(np.asarray(b).astype(np.float32), r_b, fixed)
    v = _fma32_ref(a.astype(np.float32), r_a, inner)
    lo, hi = type_range(a.dtype)
    return np.clip(np.rint(v.astype(np.float64)), lo, hi).astype(a.dtype)


def check_qlinear_add(a, b, *, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero, out=None):
    """The arguments of run_qlinear_add, checked."""
    a, b = as_q8("a", a), as_q8("b", b)
    if b.dtype != a.dtype or (b.shape != a.shape and b.shape != a.shape[-1:]):
        raise ValueError(f"b: expected {a.dtype} of shape {a.shape} (or {a.shape[-1:]}, one per channel), found "
                         f"{b.dtype} {b.shape}")
    a_zero, b_zero, y_zero = (check_zero(n, z, a.dtype) for n, z in
                              (("a_zero", a_zero), ("b_zero", b_zero), ("y_zero", y_zero)))
    r_a, r_b, fixed = add_constants(a_scale, a_zero, b_scale, b_zero, y_scale, y_zero)
    lo, hi = type_range(a.dtype)
    if 256 * (float(r_a) + float(r_b)) + abs(float(fixed)) >= 2.0 ** 31:
        raise ValueError(f"a_scale, b_scale, y_scale: ratios {r_a}, {r_b} put sums beyond int32, where the runtime's "
                         "conversion is undefined")
    y = q_output(out, a.shape, a.dtype)
    return a.reshape(-1), b.reshape(-1), r_a, r_b, fixed, lo, hi, y.reshape(-1), y


def run_qlinear_add(a, b, r_a, r_b, fixed, lo, hi, y_flat, y):
    _qlinear_add_jit(a, b, r_a, r_b, fixed, lo, hi, y_flat)
    return y


def qlinear_add(a, b, *, a_scale, a_zero, b_scale, b_zero, y_scale, y_zero, out=None):
    """The fast kernel: one numba pass over the elements."""
    return run_qlinear_add(*check_qlinear_add(a, b, a_scale=a_scale, a_zero=a_zero, b_scale=b_scale, b_zero=b_zero,
                                              y_scale=y_scale, y_zero=y_zero, out=out))


@jit
def _qlinear_add_jit(a, b, r_a, r_b, fixed, lo, hi, y):
    c = b.shape[0]  # all of a, or one value per channel (the last axis), repeated
    step = 0 if c < a.shape[0] else c  # b's offset from one row of c channels to the next
    for r in range(a.shape[0] // c):
        for ch in range(c):  # (a loop without a modulo: it compiles to SIMD instructions)
            i = r * c + ch
            v = fma32(np.float32(a[i]), r_a, fma32(np.float32(b[r * step + ch]), r_b, fixed))
            v = min(max(v, np.float32(lo)), np.float32(hi))
            y[i] = np.int32(np.rint(v))


# This file's entries in the registry (npmobile.kernels.quantized.QKERNELS).
KERNELS = (Kernel("qlinear_add", qlinear_add, qlinear_add_ref, check_qlinear_add, run_qlinear_add),)
