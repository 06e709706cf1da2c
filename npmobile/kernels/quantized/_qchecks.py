"""Argument checks shared by the integer kernels (the float kernels' `_checks.py`, for integers).

An integer kernel is fed 8-bit tensors (uint8 or int8), int32 biases and per-channel int32
requantization arrays. Every public kernel checks them here, so a wrong dtype, shape or range is a
ValueError naming the argument instead of a silent wrap-around inside a numba loop.
"""

import numpy as np

EIGHT_BIT = (np.uint8, np.int8)


def as_q8(name, a, ndim=None):
    """`a` as a C-contiguous uint8 or int8 array of rank `ndim` (no conversion between them:
    the same bits mean different numbers)."""
    a = np.asarray(a)
    if a.dtype not in EIGHT_BIT:
        raise ValueError(f"{name}: expected a uint8 or int8 array, found dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, found {a.ndim}-d with shape {a.shape}")
    return np.ascontiguousarray(a)


def type_range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def check_zero(name, zero, dtype):
    """A zero point: an integer the 8-bit type can hold."""
    if isinstance(zero, (bool, np.bool_)) or not isinstance(zero, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer zero point, found {zero!r}")
    lo, hi = type_range(dtype)
    if not lo <= int(zero) <= hi:
        raise ValueError(f"{name}: expected a zero point in [{lo}, {hi}] for {np.dtype(dtype)}, found {zero}")
    return int(zero)


def as_channel_int32(name, a, c, lo=-(1 << 31), hi=(1 << 31) - 1):
    """A per-channel int32 array of shape (c,) with values in [lo, hi]; a scalar is broadcast."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integers, found dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(c, a)
    if a.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},) (one per output channel), found {a.shape}")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], found [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.int32)


def check_multiplier(multiplier, shift):
    """One fixed-point rescaling (fixedpoint.quantize_multiplier's pair): (multiplier, shift) as ints."""
    if isinstance(multiplier, (bool, np.bool_)) or not isinstance(multiplier, (int, np.integer)) \
            or isinstance(shift, (bool, np.bool_)) or not isinstance(shift, (int, np.integer)) \
            or not 0 <= multiplier < 1 << 31 or not -31 <= shift <= 30:
        raise ValueError(f"multiplier, shift: expected integers 0 <= multiplier < 2^31 and -31 <= shift <= 30, "
                         f"found {multiplier!r}, {shift!r}")
    return int(multiplier), int(shift)


def requant_args(c, dtype, *, b, w_zero, multiplier, shift, y_zero, clamp):
    """The epilogue's arguments, checked: (bias, w_zero, multiplier, shift, y_zero, lo, hi)."""
    lo_t, hi_t = type_range(dtype)
    b = np.zeros(c, np.int32) if b is None else as_channel_int32("b", b, c)
    w_zero = as_channel_int32("w_zero", w_zero, c, lo_t, hi_t)
    multiplier = as_channel_int32("multiplier", multiplier, c, 0)
    shift = as_channel_int32("shift", shift, c, -31, 30)
    y_zero = check_zero("y_zero", y_zero, dtype)
    lo, hi = check_int_clamp(clamp, dtype)
    return b, w_zero, multiplier, shift, y_zero, lo, hi


def check_int_clamp(clamp, dtype):
    """The fused activation as an integer range inside the type's; None is the whole type."""
    lo_t, hi_t = type_range(dtype)
    if clamp is None:
        return lo_t, hi_t
    try:
        lo, hi = (int(v) for v in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"clamp: expected None or two integers (lo, hi), found {clamp!r}") from None
    if not lo_t <= lo <= hi <= hi_t:
        raise ValueError(f"clamp: expected {lo_t} <= lo <= hi <= {hi_t} for {np.dtype(dtype)}, found ({lo}, {hi})")
    return lo, hi


def q_output(out, shape, dtype):
    """The array an integer kernel writes: a new one, or the caller's `out` after checking it."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != tuple(shape) \
            or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous {np.dtype(dtype)} array of shape {tuple(shape)}, found "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    return out
