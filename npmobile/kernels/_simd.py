"""Sixteen int32 lanes as a value numba can hold, and the AVX-512 VNNI instruction that makes
8-bit products fast: a few intrinsics, so that an integer matrix product reads as a loop.

numba has no vector type: its loops reach SIMD only where LLVM vectorises them, and LLVM never
turns a matrix product into VNNI's dot-product instruction. Here `I32x16` is a numba type whose
value is LLVM's <16 x i32> (one zmm register), and each function below is one instruction:

    zeros()                 all lanes 0
    splat(v)                the int32 v in every lane
    load(addr)              64 bytes at addr (any alignment)
    broadcast4(addr)        the 4 bytes at addr, as one int32, in every lane
    broadcast_lane(v, i)    lane i of v in every lane
    dot_u8s8(acc, a, b)     VPDPBUSD: acc[i] + sum_{j<4} u8(a[i] byte j) * s8(b[i] byte j)
    dot_i16(acc, a, b)      VPDPWSSD: acc[i] + sum_{j<2} i16(a[i] half j) * i16(b[i] half j)
    store(addr, v)          64 bytes to addr
    load_u8(addr, n)        the n bytes at addr .. addr + n - 1 (n <= 16), widened to n lanes
    load_s8(addr, n)        the same, read as int8
    store_bytes(addr, v, n) the low byte of the first n lanes to addr .. addr + n - 1
    add, sub, mul, and_, xor, shl, sra, minimum, maximum, greater, srdhm: lane by lane
    to_float, fmul, fmin, fmax, round_to_int: the same on float32 lanes (held as their bits)

VPDPBUSD does 64 multiply-adds (16 lanes x 4 byte pairs) in one instruction, exact in int32
(no saturation: its products and the 4-sum stay far below 2^31, and the accumulator wraps only
where a C int32 would). A float32 FMA does 16. Measured here, one thread: a 4 x 48 block of
outputs kept in 12 registers runs 500 G multiply-adds/s, 4-5x OpenBLAS's sgemm on the same shapes.

The functions compile only for a CPU with AVX-512 VNNI (`HAVE_VNNI`): LLVM cannot select the
instruction otherwise, so callers check the flag before they call a loop built on them.
Addresses are integers (an array's `.ctypes.data` plus a byte offset); nothing here checks
bounds: the caller's loop is where that is done. An address does not keep its array alive:
numba frees a local array after its last use as an array, so a loop that reads through an
address must still hold the array (pass it along, or take `.ctypes.data` where it is used).
"""

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_LANES = ir.VectorType(ir.IntType(32), 16)


def _host_has_vnni():
    """True when this CPU has AVX-512 VNNI (and so AVX-512F), as numba compiles for the host."""
    try:
        features = binding.get_host_cpu_features()
    except RuntimeError:  # llvmlite cannot read the features on this platform
        return False
    return bool(features.get("avx512f")) and bool(features.get("avx512vnni"))


HAVE_VNNI = _host_has_vnni()
# Whether the kernels may choose their VNNI loops (tests turn it off to reach their other ones).
USE_VNNI = HAVE_VNNI


class I32x16(types.Type):
    """Sixteen int32 lanes: one AVX-512 register."""

    def __init__(self):
        super().__init__(name="I32x16")


i32x16 = I32x16()


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LANES)


def _pointer(builder, addr, pointee):
    return builder.inttoptr(addr, pointee.as_pointer())


@intrinsic
def zeros(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_LANES, None)
    return i32x16(), codegen


@intrinsic
def load(typingctx, addr):
    def codegen(context, builder, sig, args):
        return builder.load(_pointer(builder, args[0], _LANES), align=1)
    return i32x16(types.intp), codegen


@intrinsic
def broadcast4(typingctx, addr):
    def codegen(context, builder, sig, args):
        word = builder.load(_pointer(builder, args[0], ir.IntType(32)), align=1)
        one = builder.insert_element(ir.Constant(_LANES, None), word, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_LANES, None), ir.Constant(_LANES, [0] * 16))
    return i32x16(types.intp), codegen


@intrinsic
def splat(typingctx, value):
    def codegen(context, builder, sig, args):
        word = builder.trunc(args[0], ir.IntType(32))
        one = builder.insert_element(ir.Constant(_LANES, None), word, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_LANES, None), ir.Constant(_LANES, [0] * 16))
    return i32x16(types.int64), codegen


def _lanewise(name, emit):
    """An intrinsic (a, b) -> a op b on every lane, op emitted by emit(builder, a, b)."""
    def typer(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return emit(builder, *args)
        return i32x16(i32x16, i32x16), codegen
    typer.__name__ = name
    return intrinsic(typer)


xor = _lanewise("xor", lambda b, x, y: b.xor(x, y))
add = _lanewise("add", lambda b, x, y: b.add(x, y))
sub = _lanewise("sub", lambda b, x, y: b.sub(x, y))
mul = _lanewise("mul", lambda b, x, y: b.mul(x, y))  # the low 32 bits of each product
and_ = _lanewise("and_", lambda b, x, y: b.and_(x, y))
shl = _lanewise("shl", lambda b, x, y: b.shl(x, y))  # by each lane's own count, 0..31
sra = _lanewise("sra", lambda b, x, y: b.ashr(x, y))  # arithmetic: the sign bit shifted in
minimum = _lanewise("minimum", lambda b, x, y: b.select(b.icmp_signed("<", x, y), x, y))
maximum = _lanewise("maximum", lambda b, x, y: b.select(b.icmp_signed(">", x, y), x, y))
# -1 (all bits set) where a > b, else 0: a mask, as SIMD comparisons give it
greater = _lanewise("greater", lambda b, x, y: b.sext(b.icmp_signed(">", x, y), _LANES))


_FLOATS = ir.VectorType(ir.FloatType(), 16)


def _as_floats(builder, v):
    return builder.bitcast(v, _FLOATS)


def _as_lanes(builder, v):
    return builder.bitcast(v, _LANES)


# Float32 lanes travel as their bits in an I32x16: to_float converts int32 lanes to float32
# (rounded to nearest, halves to even, as float32(int) does), round_to_int rounds float32 lanes
# to the nearest int32 (halves to even: rint in the default rounding mode), and fmul, fmin, fmax
# work on the float32 values.
@intrinsic
def to_float(typingctx, v):
    def codegen(context, builder, sig, args):
        return _as_lanes(builder, builder.sitofp(args[0], _FLOATS))
    return i32x16(i32x16), codegen


fmul = _lanewise("fmul", lambda b, x, y: _as_lanes(b, b.fmul(_as_floats(b, x), _as_floats(b, y))))
fmin = _lanewise("fmin", lambda b, x, y: _as_lanes(b, b.select(b.fcmp_ordered("<", _as_floats(b, x), _as_floats(b, y)),
                                                               _as_floats(b, x), _as_floats(b, y))))
fmax = _lanewise("fmax", lambda b, x, y: _as_lanes(b, b.select(b.fcmp_ordered(">", _as_floats(b, x), _as_floats(b, y)),
                                                               _as_floats(b, x), _as_floats(b, y))))


@intrinsic
def round_to_int(typingctx, v):
    def codegen(context, builder, sig, args):
        rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_FLOATS, [_FLOATS]), "llvm.rint.v16f32")
        return builder.fptosi(builder.call(rint, [_as_floats(builder, args[0])]), _LANES)
    return i32x16(i32x16), codegen


@intrinsic
def fma(typingctx, u, v, w):
    """u * v + w on float32 scalars, rounded once (the FMA instruction, or libm's fmaf)."""
    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3),
                                                           "llvm.fma.f32"), args)
    return types.float32(types.float32, types.float32, types.float32), codegen


def _emit_srdhm(builder, a, m):
    """(a * m + 2^30) >> 31 per lane, the products in 64 bits: the even lanes and the odd lanes
    as two vectors of 8 int64 (each lane's int32 sign-extended in place: vpmuldq's operands).
    An even lane's result is the low half of its 64-bit (t >> 31), an odd lane's the high half
    of (t << 1): one blend puts the 16 back together."""
    i64x8 = ir.VectorType(ir.IntType(64), 8)
    c32 = ir.Constant(i64x8, [32] * 8)

    def halves(v):
        wide = builder.bitcast(v, i64x8)
        return builder.ashr(builder.shl(wide, c32), c32), builder.ashr(wide, c32)
    (a_even, a_odd), (m_even, m_odd) = halves(a), halves(m)
    nudge = ir.Constant(i64x8, [1 << 30] * 8)
    even = builder.lshr(builder.add(builder.mul(a_even, m_even), nudge), ir.Constant(i64x8, [31] * 8))
    odd = builder.shl(builder.add(builder.mul(a_odd, m_odd), nudge), ir.Constant(i64x8, [1] * 8))
    order = [k + (16 if k % 2 else 0) for k in range(16)]
    return builder.shuffle_vector(builder.bitcast(even, _LANES), builder.bitcast(odd, _LANES), ir.Constant(_LANES, order))


# SaturatingRoundingDoublingHighMul for multipliers m >= 0: floor((a * m + 2^30) / 2^31) per
# lane (fixedpoint.srdhm; m >= 0 never meets its one saturating case, (-2^31) * (-2^31)).
srdhm = _lanewise("srdhm", _emit_srdhm)


@intrinsic
def broadcast_lane(typingctx, v, i):
    """Lane i of v (0 <= i < 16) in every lane."""
    def codegen(context, builder, sig, args):
        word = builder.extract_element(args[0], builder.trunc(args[1], ir.IntType(32)))
        one = builder.insert_element(ir.Constant(_LANES, None), word, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_LANES, None), ir.Constant(_LANES, [0] * 16))
    return i32x16(i32x16, types.int64), codegen


def _dot(name, llvm_name):
    """An intrinsic (acc, a, b) -> acc + VNNI's dot products of a and b's sub-lanes."""
    def typer(typingctx, acc, a, b):
        def codegen(context, builder, sig, args):
            instruction = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LANES, [_LANES] * 3),
                                                         llvm_name)
            return builder.call(instruction, args)
        return i32x16(i32x16, i32x16, i32x16), codegen
    typer.__name__ = name
    return intrinsic(typer)


dot_u8s8 = _dot("dot_u8s8", "llvm.x86.avx512.vpdpbusd.512")
dot_i16 = _dot("dot_i16", "llvm.x86.avx512.vpdpwssd.512")


@intrinsic
def store(typingctx, addr, v):
    def codegen(context, builder, sig, args):
        builder.store(args[1], _pointer(builder, args[0], _LANES), align=1)
        return context.get_dummy_value()
    return types.none(types.intp, i32x16), codegen


def _first_lanes(builder, count):
    """<16 x i1>: lane i set where i < count."""
    i64x16 = ir.VectorType(ir.IntType(64), 16)
    limit = builder.insert_element(ir.Constant(i64x16, None), count, ir.Constant(ir.IntType(32), 0))
    limit = builder.shuffle_vector(limit, limit, ir.Constant(_LANES, [0] * 16))
    return builder.icmp_signed("<", ir.Constant(i64x16, list(range(16))), limit)


def _load_bytes(extend):
    """An intrinsic (addr, count): the first `count` bytes at addr (all 16 when count >= 16),
    each widened to an int32 lane by extend ('zext' or 'sext'); lanes past count are 0. A masked
    load where count < 16: nothing past them is read (a plain load otherwise: making the mask
    cost more than the load)."""
    def typer(typingctx, addr, count):
        def codegen(context, builder, sig, args):
            i8x16, i1x16 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(1), 16)
            i8_ptr = ir.PointerType(ir.IntType(8))
            full = builder.icmp_signed(">=", args[1], ir.Constant(ir.IntType(64), 16))
            with builder.if_else(full, likely=True) as (whole, part):
                with whole:
                    v_whole = builder.load(_pointer(builder, args[0], i8x16), align=1)
                    b_whole = builder.block
                with part:
                    masked_load = cgutils.get_or_insert_function(
                        builder.module, ir.FunctionType(i8x16, [i8_ptr, ir.IntType(32), i1x16, i8x16]),
                        "llvm.masked.load.v16i8.p0")
                    v_part = builder.call(masked_load, [builder.inttoptr(args[0], i8_ptr), ir.Constant(ir.IntType(32), 1),
                                                        _first_lanes(builder, args[1]), ir.Constant(i8x16, None)])
                    b_part = builder.block
            v = builder.phi(i8x16)
            v.add_incoming(v_whole, b_whole)
            v.add_incoming(v_part, b_part)
            return getattr(builder, extend)(v, _LANES)
        return i32x16(types.intp, types.int64), codegen
    typer.__name__ = f"load_bytes_{extend}"
    return intrinsic(typer)


load_u8 = _load_bytes("zext")  # uint8 bytes
load_s8 = _load_bytes("sext")  # int8 bytes


@intrinsic
def store_bytes(typingctx, addr, v, count):
    """The low byte of each of the first `count` lanes (all 16 when count >= 16) to addr ..
    addr + count - 1: a masked store where count < 16, so that nothing past them is written."""
    def codegen(context, builder, sig, args):
        addr, v, count = args
        i8x16, i1x16 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(1), 16)
        v8 = builder.trunc(v, i8x16)
        full = builder.icmp_signed(">=", count, ir.Constant(ir.IntType(64), 16))
        with builder.if_else(full, likely=True) as (whole, part):
            with whole:
                builder.store(v8, _pointer(builder, addr, i8x16), align=1)
            with part:
                masked_store = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [i8x16, ir.PointerType(ir.IntType(8)), ir.IntType(32), i1x16]),
                    "llvm.masked.store.v16i8.p0")
                builder.call(masked_store, [v8, builder.inttoptr(addr, ir.PointerType(ir.IntType(8))),
                                            ir.Constant(ir.IntType(32), 1), _first_lanes(builder, count)])
        return context.get_dummy_value()
    return types.none(types.intp, i32x16, types.int64), codegen
