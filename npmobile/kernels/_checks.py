"""Input checks shared by the fast kernels.

Every public fast kernel checks its arguments here before it calls its numba loop, so that bad
input fails with a ValueError that names the argument, what was expected and what was found,
instead of crashing inside compiled code or returning a silently wrong answer.
"""

import numpy as np

from ._jit import jit

# The largest size, stride or pad side a kernel accepts: the int32 range in which ONNX and TFLite
# store them. Every index a loop computes (oy * stride - top + p, ...) then stays far inside
# int64, so no bounds test in a loop can wrap around and read outside its array.
MAX_SIZE = 2**31 - 1


def check_size(name, value):
    """An integer size, stride or pad side must lie in 0 .. MAX_SIZE."""
    if not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{name}: expected at most {MAX_SIZE} (2**31 - 1), found {value}")
    return value


def as_float32(name, a, ndim=None):
    """Return `a` as a C-contiguous float32 array, checking its dtype and rank.

    float32 passes through untouched; other real floating types (float16, float64) are
    converted, so the kernel computes in float32 whatever precision arrives. Integers, booleans
    and complex numbers are refused: an integer image fed to a float network is a bug upstream.
    """
    if type(a) is np.ndarray and a.dtype == np.float32 and a.flags.c_contiguous and (ndim is None or a.ndim == ndim):
        return a  # the common case, checked in a few hundred nanoseconds
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected a real floating-point array (float32), found dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, found {a.ndim}-d with shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def as_bias(b, c_out):
    """The bias as float32 of shape (c_out,), or zeros when there is none."""
    if b is None:
        return np.zeros(c_out, dtype=np.float32)  # (the fused graphs the engine runs always have a bias)
    b = as_float32("b", b, ndim=1)
    if b.shape[0] != c_out:
        raise ValueError(f"b: expected shape ({c_out},) to match the output channels, found {b.shape}")
    return b


def check_stride(stride):
    if isinstance(stride, (bool, np.bool_)) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, found {stride!r}")
    return check_size("stride", int(stride))


def check_pad(pad):
    """pad is (top, bottom, left, right), each an integer >= 0."""
    try:
        values = tuple(pad)
    except TypeError:
        values = ()
    if len(values) != 4 or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in values):
        raise ValueError(f"pad: expected 4 integers (top, bottom, left, right), found {pad!r}")
    if min(values) < 0:
        raise ValueError(f"pad: expected every side >= 0, found {values}")
    return tuple(check_size("pad", int(p)) for p in values)


def check_fused_clamp(clamp):
    """clamp is None (no clamp) or (lo, hi) with lo <= hi; returned as (flag, lo, hi)."""
    if clamp is None:
        return False, np.float32(0), np.float32(0)
    try:
        lo, hi = clamp
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"clamp: expected None or (lo, hi), found {clamp!r}") from None
    if not lo <= hi:
        raise ValueError(f"clamp: expected lo <= hi, found ({lo}, {hi})")
    return True, np.float32(lo), np.float32(hi)


def conv_output_size(name, size, k, stride, pad_before, pad_after):
    """Output side of a convolution or pool window: floor((size + pads - k) / stride) + 1."""
    check_size(f"{name}: kernel", k)
    padded = check_size(f"{name}: padded input", size + pad_before + pad_after)
    if k > padded:
        raise ValueError(f"{name}: expected a kernel no larger than the padded input, "
                         f"found kernel {k} > padded input {padded} ({size} + pads {pad_before}, {pad_after})")
    return (padded - k) // stride + 1


def check_window(x, k_h, k_w, stride, pad):
    """A k_h x k_w window sliding over x (n, h, w, c) with this stride and padding: returns
    (stride, top, left, h_out, w_out), all checked."""
    stride = check_stride(stride)
    top, bottom, left, right = check_pad(pad)
    h_out = conv_output_size("w (kernel height)", x.shape[1], k_h, stride, top, bottom)
    w_out = conv_output_size("w (kernel width)", x.shape[2], k_w, stride, left, right)
    return stride, top, left, h_out, w_out


@jit
def inside_range(size, size_out, k, stride, pad_before):
    """The outputs o0 .. o1 - 1 along one axis whose window lies inside x, clear of the padding:
    0 <= o * stride - pad_before <= size - k. Kernels run these by a fast path, the others by a
    border path. (Compiled: the depthwise loops call it too.)"""
    o0 = min(size_out, -(-pad_before // stride))
    o1 = max(o0, min(size_out, (size - k + pad_before) // stride + 1)) if size >= k else o0
    return o0, o1


PAGE = 4096


def page_buffer(nbytes, offset=0):
    """`nbytes` uint8 starting `offset` bytes (a multiple of 64) past a 4 KiB page boundary. NumPy's
    own allocations start 16 bytes past a 64-byte one: a 64-byte SIMD load from them straddles two
    cache lines. The offset lets buffers that one kernel reads and another writes start at
    different places in the page (engine._lay_out): a store and a load 4 KiB apart stall the CPU
    as if they were the same address ("4K aliasing")."""
    raw = np.empty(nbytes + PAGE, dtype=np.uint8)
    start = (offset - raw.ctypes.data) % PAGE
    return raw[start:start + nbytes]


def zeros_aligned(shape):
    """A float32 array of zeros starting on a page boundary (page_buffer)."""
    array = page_buffer(4 * int(np.prod(shape))).view(np.float32).reshape(shape)
    array[...] = 0
    return array


def output(out, shape):
    """The array a fast kernel writes: a new one, or the caller's `out` (the engine passes
    buffers it reuses across layers and calls) after checking it fits exactly."""
    if out is None:
        try:
            return np.empty(shape, dtype=np.float32)
        except (MemoryError, ValueError):  # ValueError: numpy's "array is too big"
            raise ValueError(f"out: expected an output that fits in memory, found shape {tuple(shape)} "
                             f"({4 * float(np.prod(shape, dtype=np.float64)):.3g} bytes)") from None
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != tuple(shape) \
            or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous float32 array of shape {tuple(shape)}, found "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    return out
