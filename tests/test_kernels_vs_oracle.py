"""Layer 1: every fast kernel equals its float64 oracle, over shapes and attributes drawn by
hypothesis, within the float32 rounding bound of its dot products (bounds.py)."""

import itertools

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bounds import assert_within, gamma
from npmobile.kernels import KERNELS
from npmobile.kernels._product import BLOCK_FLOATS
from npmobile.kernels.depthwise import MAX_TAPS, RUN_FLOATS, run_pixels

CHANNELS = st.integers(1, 40)
KERNEL_SIDE = st.sampled_from([1, 3, 5, 7])


@st.composite
def conv_case(draw, depthwise=False):
    """A convolution problem: input, weights, optional bias and clamp, stride and padding."""
    k_h = draw(KERNEL_SIDE)
    k_w = draw(st.one_of(st.just(k_h), KERNEL_SIDE))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))  # each side on its own
    top, bottom, left, right = pad
    n = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, k_h - top - bottom), 12))  # sizes down to 1x1, odd and even
    w = draw(st.integers(max(1, k_w - left - right), 12))
    c_in = draw(CHANNELS)
    c_out = c_in * draw(st.integers(1, 3)) if depthwise else draw(CHANNELS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, h, w, c_in)).astype(np.float32)
    shape = (k_h, k_w, c_out) if depthwise else (k_h, k_w, c_in, c_out)
    weights = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if draw(st.booleans()) else None
    clamp = draw(st.sampled_from([None, (0.0, 6.0), (-0.5, 0.5)]))
    return x, weights, b, dict(stride=draw(st.sampled_from([1, 2])), pad=pad, clamp=clamp)


def check_linear(name, x, w, b, attrs, terms):
    """Compare a linear kernel (conv, pointwise, dense) with its oracle. The bound's magnitude is
    the oracle on |x|, |w|, |b| without the clamp (a clamp only shrinks the error)."""
    kernel = KERNELS[name]
    y = kernel.fast(x, w, b, **attrs)
    ref = kernel.ref(x, w, b, **attrs)
    magnitude = kernel.ref(np.abs(x), np.abs(w), None if b is None else np.abs(b), **{**attrs, "clamp": None})
    assert_within(y, ref, magnitude, terms + 2)


@given(conv_case())
def test_conv2d(case):
    x, w, b, attrs = case
    check_linear("conv2d", x, w, b, attrs, terms=w.shape[0] * w.shape[1] * w.shape[2])


@given(conv_case(depthwise=True))
def test_depthwise_conv2d(case):
    x, w, b, attrs = case
    check_linear("depthwise_conv2d", x, w, b, attrs, terms=w.shape[0] * w.shape[1])


@given(conv_case())
def test_pointwise_conv2d(case):
    x, w, b, attrs = case
    check_linear("pointwise_conv2d", x, w[0, 0], b, {"clamp": attrs["clamp"]}, terms=w.shape[2])


@given(conv_case())
def test_dense(case):
    x, w, b, attrs = case
    check_linear("dense", x[:, 0, 0, :], w[0, 0], b, {"clamp": attrs["clamp"]}, terms=w.shape[2])


@st.composite
def separable_case(draw):
    """A depthwise-separable layer (kernels/separable.py): a 3x3 depthwise convolution, one filter
    per channel, then a pointwise one, each with its own bias and optional clamp, and optionally
    a shortcut. Sizes past a few blocks of rows (blocks hold whole rows, across images), channel
    counts that are not multiples of 16, strides 1 and 2, each pad side 0..2."""
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    top, bottom, left, right = pad
    n = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, 3 - top - bottom), 19))
    w = draw(st.integers(max(1, 3 - left - right), 19))
    c_in, c_out = draw(CHANNELS), draw(CHANNELS)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, h, w, c_in)).astype(np.float32)
    tensors = [rng.standard_normal(s).astype(np.float32) for s in ((3, 3, c_in), (c_in,), (c_in, c_out), (c_out,))]
    clamps = st.sampled_from([None, (0.0, 6.0), (-0.5, 0.5)])
    attrs = dict(stride=draw(st.sampled_from([1, 2])), pad=pad, clamp_dw=draw(clamps), clamp=draw(clamps))
    if draw(st.booleans()):
        attrs["shortcut"] = None  # drawn below, once the output's shape is known
    return x, tensors, attrs, rng


def check_separable(x, tensors, attrs, rng):
    """separable_conv2d against its oracle. The bound composes the two dot products': 9 taps
    and a bias, then c_in terms and a bias (and the shortcut); its magnitude is the oracle on the
    absolute values without the clamps (a clamp only shrinks an error)."""
    kernel = KERNELS["separable_conv2d"]
    if "shortcut" in attrs:
        shape = kernel.ref(x, *tensors, **{**attrs, "shortcut": None}).shape
        attrs = {**attrs, "shortcut": rng.standard_normal(shape).astype(np.float32)}
    y = kernel.fast(x, *tensors, **attrs)
    magnitude = kernel.ref(np.abs(x), *map(np.abs, tensors), **{**attrs, "clamp_dw": None, "clamp": None,
                                                                "shortcut": None if attrs.get("shortcut") is None
                                                                else np.abs(attrs["shortcut"])})
    assert_within(y, kernel.ref(x, *tensors, **attrs), magnitude, 9 + 2 + x.shape[3] + 3)
    return y


@given(separable_case())
def test_separable_conv2d(case):
    check_separable(*case)


@st.composite
def activations(draw, min_rank=4):
    rank = draw(st.integers(min_rank, 4))
    shape = tuple(draw(st.integers(1, 9)) for _ in range(rank - 1)) + (draw(CHANNELS),)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return (3 * rng.standard_normal(shape)).astype(np.float32), rng


@given(activations(min_rank=1), st.sampled_from([1e-3, 1e-5]))
def test_batchnorm(case, eps):
    x, rng = case
    c = x.shape[-1]
    gamma, beta, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.0, 3.0, c).astype(np.float32)
    y = KERNELS["batchnorm"].fast(x, gamma, beta, mean, var, eps=eps)
    ref = KERNELS["batchnorm"].ref(x, gamma, beta, mean, var, eps=eps)
    # scale = gamma / sqrt(var + eps) and shift = beta - mean * scale carry a few roundings each;
    # y = x * scale + shift two more: 8 roundings over |x * scale| + |mean * scale| + |beta|.
    scale = np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
    assert_within(y, ref, np.abs(x) * scale + np.abs(mean) * scale + np.abs(beta), 8)


@given(activations(min_rank=1), st.sampled_from([(0.0, 6.0), (0.0, np.inf), (-1.5, 0.25)]))
def test_clamp(case, bounds):
    x, _ = case
    lo, hi = bounds
    y = KERNELS["clamp"].fast(x, lo=lo, hi=hi)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, KERNELS["clamp"].ref(x, lo=lo, hi=hi).astype(np.float32))


@given(activations(), st.tuples(*[st.integers(0, 3)] * 4))
def test_zero_pad(case, pad):
    x, _ = case
    y = KERNELS["zero_pad"].fast(x, pad=pad)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, KERNELS["zero_pad"].ref(x, pad=pad).astype(np.float32))


@given(activations(min_rank=1))
def test_add(case):
    x1, rng = case
    x2 = rng.standard_normal(x1.shape).astype(np.float32)
    ref = KERNELS["add"].ref(x1, x2)
    assert_within(KERNELS["add"].fast(x1, x2), ref, np.abs(ref), 1)


@given(activations())
def test_global_avg_pool(case):
    x, _ = case
    k = x.shape[1] * x.shape[2]
    ref = KERNELS["global_avg_pool"].ref(x)
    assert_within(KERNELS["global_avg_pool"].fast(x), ref, KERNELS["global_avg_pool"].ref(np.abs(x)), k + 2)


@given(activations())
def test_global_max_pool(case):
    x, _ = case
    y = KERNELS["global_max_pool"].fast(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, KERNELS["global_max_pool"].ref(x).astype(np.float32))


@given(activations(min_rank=1))
def test_softmax(case):
    x, _ = case
    k = x.shape[-1]
    ref = KERNELS["softmax"].ref(x)
    # exp(d) with d = x - max rounded once amplifies that rounding by |d|; the sum of k positive
    # terms adds gamma(k); exp, the divide and the output add a few roundings more.
    spread = float(np.max(x.max(axis=-1) - x.min(axis=-1)))
    assert_within(KERNELS["softmax"].fast(x), ref, ref, k + int(np.ceil(2 * spread)) + 8)


def test_registry_pairs_every_kernel_with_an_oracle():
    for name, kernel in KERNELS.items():
        assert kernel.fast.__name__ == name
        assert kernel.ref.__name__ == name + "_ref"
        assert kernel.fast.__module__ == kernel.ref.__module__, f"{name}: oracle and kernel in one file"


def test_the_bound_accepts_rounding_and_rejects_an_error_just_beyond_it():
    """assert_within is what every kernel test stands on: it must pass a float32 dot product and
    fail one whose error exceeds gamma(k) * sum|x*w| by a hair."""
    rng = np.random.default_rng(0)
    k = 300
    x, w = rng.standard_normal((50, k)), rng.standard_normal(k)
    ref, magnitude = x @ w, np.abs(x) @ np.abs(w)
    y = (x.astype(np.float32) @ w.astype(np.float32)).astype(np.float32)
    assert_within(y, ref, magnitude, k)
    off = (ref + 1.01 * gamma(k) * magnitude * (np.arange(50) == 7)).astype(np.float32)
    with pytest.raises(AssertionError, match="1 of 50 elements outside the float32 bound"):
        assert_within(off, ref, magnitude, k)


def test_pointwise_on_more_rows_than_one_block():
    """pointwise_conv2d runs its product in blocks of BLOCK_FLOATS // c_out rows; draw past two."""
    rng = np.random.default_rng(3)
    rows = 2 * (BLOCK_FLOATS // 40) + 37  # two whole blocks and a partial one
    x = rng.standard_normal((1, 1, rows, 24)).astype(np.float32)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    check_linear("pointwise_conv2d", x, w, b, {"clamp": (0.0, 6.0)}, terms=24)


def test_depthwise_on_a_mobilenet_sized_layer():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 56, 56, 144)).astype(np.float32)
    w = rng.standard_normal((3, 3, 144)).astype(np.float32)
    for stride, pad in ((1, (1, 1, 1, 1)), (2, (0, 1, 0, 1)), (2, (1, 1, 1, 1))):
        check_linear("depthwise_conv2d", x, w, None, dict(stride=stride, pad=pad, clamp=(0.0, 6.0)), terms=9)


def test_conv2d_on_the_first_mobilenet_layer():
    """3x3 taps of 3 channels, stride 2: the shape conv2d's im2col copies with a fixed trip count."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 33, 34, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    for pad in ((0, 1, 0, 1), (1, 1, 1, 1), (0, 0, 0, 0)):
        check_linear("conv2d", x, w, b, dict(stride=2, pad=pad, clamp=(0.0, 6.0)), terms=27)


# Each specialised path at, below and above its tile (XNNPACK's micro-kernel tests): the
# properties above draw such cases only now and then.

@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_3x3_paths_at_below_and_above_their_tiles(stride):
    """MobileNet's 3x3 path splits each output row into border pixels, inside pixels two at a
    time (stride 1 and stride 2 pairs) and an odd last one alone: widths 1..8 give 0 to 6 inside
    pixels (odd and even counts), heights 1..4 rows with and without the inside ones, each pad
    pattern, channel counts below, at and above a 16-float vector, with and without the clamp."""
    rng = np.random.default_rng(6)
    for h, w, c in itertools.product(range(1, 5), range(1, 9), (1, 7, 16, 33)):
        x = rng.standard_normal((1, h, w, c)).astype(np.float32)
        weights = rng.standard_normal((3, 3, c)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        for pad in ((0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (1, 0, 1, 0), (2, 0, 0, 2)):
            if h + pad[0] + pad[1] >= 3 and w + pad[2] + pad[3] >= 3:
                clamp = (-1.0, 1.0) if (h + w) % 2 else None
                check_linear("depthwise_conv2d", x, weights, b, dict(stride=stride, pad=pad, clamp=clamp), terms=9)


@pytest.mark.parametrize("c", [16, 33, RUN_FLOATS // 2, RUN_FLOATS + 1, 2 * RUN_FLOATS + 76])
def test_depthwise_3x3_stride1_runs_at_below_and_above_their_length(c):
    """At stride 1 the inside pixels go in runs of run_pixels(c) whole pixels (channels split in
    shares of at most RUN_FLOATS when wider), two output rows at once when both are inside: one
    pixel less, exactly, one more and two runs and one pixel; an odd and an even number of inside
    rows; padding on each side or none."""
    rng = np.random.default_rng(c)
    run = run_pixels(c)
    for width, h in itertools.product(sorted({run + 1, run + 2, run + 3, 2 * run + 3}), (4, 5)):
        x = rng.standard_normal((1, h, width, c)).astype(np.float32)
        w = rng.standard_normal((3, 3, c)).astype(np.float32)
        for pad in ((1, 1, 1, 1), (0, 0, 0, 0), (2, 0, 0, 2)):
            if width + pad[2] + pad[3] >= 3:
                check_linear("depthwise_conv2d", x, w, rng.standard_normal(c).astype(np.float32),
                             dict(stride=1, pad=pad, clamp=(0.0, 6.0) if h == 4 else None), terms=9)


def test_depthwise_3x3_stride3():
    """Strides above 2 take the single-pixel path inside (the pairs are for stride 2 only)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 11, 13, 24)).astype(np.float32)
    w = rng.standard_normal((3, 3, 24)).astype(np.float32)
    for pad in ((1, 1, 1, 1), (0, 0, 0, 0)):
        check_linear("depthwise_conv2d", x, w, rng.standard_normal(24).astype(np.float32),
                     dict(stride=3, pad=pad, clamp=None), terms=9)


@pytest.mark.parametrize("c", [MAX_TAPS, MAX_TAPS + 1])
def test_depthwise_3x3_at_and_above_the_widest_laid_out_weights(c):
    """Layers up to MAX_TAPS channels read their weights from the laid-out `taps`; wider ones
    take the single-pixel path on w and b for every inside pixel."""
    rng = np.random.default_rng(c)
    x = rng.standard_normal((1, 5, 6, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c)).astype(np.float32)
    for stride in (1, 2):
        check_linear("depthwise_conv2d", x, w, rng.standard_normal(c).astype(np.float32),
                     dict(stride=stride, pad=(1, 1, 1, 1), clamp=(0.0, 6.0)), terms=9)


@pytest.mark.parametrize("shape, stride, pad", [((3, 23, 21, 24), 1, (1, 1, 1, 1)), ((2, 30, 19, 40), 2, (0, 1, 0, 1)),
                                                ((1, 112, 9, 32), 1, (1, 1, 1, 1)), ((2, 9, 9, 8), 2, (1, 1, 1, 1)),
                                                ((1, 21, 40, 16), 1, (1, 1, 1, 1)), ((1, 7, 7, 600), 1, (1, 1, 1, 1))])
def test_depthwise_3x3_same_bits_on_one_and_two_threads(shape, stride, pad):
    """The rows are cut into blocks by shape alone and each output is computed the same way in
    any block: one thread (the serial loop) and two (the parallel one) give the same bits."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((3, 3, shape[3])).astype(np.float32)
    b = rng.standard_normal(shape[3]).astype(np.float32)
    depthwise = KERNELS["depthwise_conv2d"].fast
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = depthwise(x, w, b, stride=stride, pad=pad, clamp=(0.0, 6.0))
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = depthwise(x, w, b, stride=stride, pad=pad, clamp=(0.0, 6.0))
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("shape, c_out, stride, pad", [
    ((1, 56, 56, 144), 24, 1, (1, 1, 1, 1)),  # V2's block_2: blocks of L1-sized products
    ((2, 28, 28, 256), 256, 1, (1, 1, 1, 1)),  # V1's conv_dw_5 at batch 2: blocks of L2-sized products
    ((2, 57, 31, 40), 17, 2, (0, 1, 0, 1)),    # stride 2, odd sizes, blocks across the two images
    ((3, 5, 4, 7), 20, 2, (1, 1, 1, 1)),        # fewer pixels than output channels: PARTS blocks all the same
])
def test_separable_same_bits_on_one_and_two_threads_and_against_the_oracle(shape, c_out, stride, pad):
    """The fused kernel's blocks depend on the shape only, and each runs the depthwise rows and
    the product the same way: one thread (the serial driver) and two give the same bits, with and
    without a shortcut. Its depthwise values are the depthwise kernel's own (the rows function on
    a view of x), so with a 1x1 identity pointwise it returns the depthwise kernel's bits."""
    rng = np.random.default_rng(sum(shape) + c_out)
    x = rng.standard_normal(shape).astype(np.float32)
    c_in = shape[3]
    tensors = [rng.standard_normal(s).astype(np.float32) for s in ((3, 3, c_in), (c_in,), (c_in, c_out), (c_out,))]
    attrs = dict(stride=stride, pad=pad, clamp_dw=(0.0, 6.0), clamp=(-1.0, 1.0))
    separable = KERNELS["separable_conv2d"].fast
    threads = numba.get_num_threads()
    for shortcut in (False, True):
        if shortcut:
            attrs["shortcut"] = rng.standard_normal(separable(x, *tensors, **attrs).shape).astype(np.float32)
        try:
            numba.set_num_threads(1)
            one = separable(x, *tensors, **attrs)
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            two = separable(x, *tensors, **attrs)
        finally:
            numba.set_num_threads(threads)
        np.testing.assert_array_equal(one, two)
    check_separable(x, tensors, attrs, rng)
    depthwise = KERNELS["depthwise_conv2d"].fast(x, tensors[0], tensors[1], stride=stride, pad=pad, clamp=(0.0, 6.0))
    identity = separable(x, tensors[0], tensors[1], np.eye(c_in, dtype=np.float32), stride=stride, pad=pad,
                         clamp_dw=(0.0, 6.0))
    np.testing.assert_array_equal(identity, depthwise)


def test_separable_refuses_other_depthwise_windows():
    """The fused kernel runs MobileNet's depthwise layers (3x3, one filter per channel): other
    windows are refused with a message naming the two kernels to use instead."""
    x = np.ones((1, 6, 6, 4), np.float32)
    with pytest.raises(ValueError, match=r"w_dw: expected .*\(3, 3, 4\).*depthwise_conv2d, then pointwise_conv2d.*\(5, 5, 4\)"):
        KERNELS["separable_conv2d"].fast(x, np.ones((5, 5, 4), np.float32), None, np.ones((4, 2), np.float32))


@pytest.mark.parametrize("k_h, k_w, c_in", [(3, 3, 5), (3, 3, 6), (1, 1, 16), (1, 1, 17), (2, 8, 2), (2, 8, 3)])
def test_conv2d_both_patch_layouts_at_their_crossover(k_h, k_w, c_in):
    """conv2d gathers taps one by one when a window row is at most 16 floats (k_w * c_in <= 16)
    and copies whole window rows above that: each side of the line, with padding."""
    rng = np.random.default_rng(k_w * c_in)
    x = rng.standard_normal((2, 9, 10, c_in)).astype(np.float32)
    w = rng.standard_normal((k_h, k_w, c_in, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    for stride, pad in ((1, (0, 0, 0, 0)), (2, (1, 2, 3, 1)), (1, (2, 0, 1, 0))):
        check_linear("conv2d", x, w, b, dict(stride=stride, pad=pad, clamp=(-2.0, 2.0)), terms=k_h * k_w * c_in)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_first_layer_paths_inside_and_at_the_border(stride):
    """MobileNet's first layer (3x3 windows over 3 channels, a multiple of 16 output channels up
    to ROW) runs without a patch matrix: the pixels whose window lies inside x in whole SIMD
    vectors of 16 channels, the others tap by tap. Heights and widths with no inside pixel up to
    several, odd and even, each pad pattern, c_out on the path (16, 32, ROW) and just off it
    (15, 17, 24, ROW + 16: the general path), with and without a clamp, two images."""
    from npmobile.kernels.conv2d import ROW
    rng = np.random.default_rng(12 + stride)
    sizes = [(3, 3), (3, 8), (4, 7), (7, 4), (9, 10)]
    for k, ((h, w), c_out) in enumerate(itertools.product(sizes, (15, 16, 17, 24, 32, ROW, ROW + 16))):
        x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
        weights = rng.standard_normal((3, 3, 3, c_out)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        for pad in ((0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (2, 0, 1, 2)):
            clamp = (-1.0, 1.0) if k % 2 else None
            check_linear("conv2d", x, weights, b, dict(stride=stride, pad=pad, clamp=clamp), terms=27)


def test_conv2d_first_layer_same_bits_on_one_thread_and_on_all():
    """The first layer's rows are shared out across numba's threads, or run in a plain loop on
    one: each row is computed alike either way, so the outputs are the same bits."""
    import numba
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 31, 30, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    attrs = dict(stride=2, pad=(1, 1, 1, 1), clamp=(0.0, 6.0))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        y_1 = KERNELS["conv2d"].fast(x, w, b, **attrs)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(KERNELS["conv2d"].fast(x, w, b, **attrs), y_1)


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_pointwise_block_edges(extra):
    """One row fewer than a block, exactly one block, one row more (a second block of one row)."""
    rng = np.random.default_rng(8 + extra)
    rows = BLOCK_FLOATS // 16 + extra
    x = rng.standard_normal((1, 1, rows, 8)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    check_linear("pointwise_conv2d", x, w, rng.standard_normal(16).astype(np.float32), {"clamp": (0.0, 6.0)}, terms=8)


@pytest.mark.parametrize("rows, c_out", [(1, 8), (1, 1000), (2, 2), (3, 1), (2, 8), (3, 8), (7, 40), (8, 3), (9, 2), (40, 7)])
def test_product_split_into_blocks(rows, c_out):
    """The product is cut into row blocks (rows >= c_out) or column blocks (fewer rows), a
    multiple of PARTS: sizes below, at and above PARTS on each side (one row, one image's classifier:
    column blocks of sgemv; blocks of one row of a larger product: sgemm). The cut depends on the shape
    only, so the bits are the same on numba's threads as on the calling thread (the serial
    driver that one thread runs), with and without a shortcut."""
    import numba
    from npmobile.kernels import _product
    if not _product.HAVE_SGEMM:
        pytest.skip("NumPy is not built on OpenBLAS here: the product runs np.matmul")
    rng = np.random.default_rng(rows * 100 + c_out)
    x = rng.standard_normal((rows, 5)).astype(np.float32)
    w = rng.standard_normal((5, c_out)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    s = rng.standard_normal((rows, c_out)).astype(np.float32)
    lo, hi = np.float32(-1), np.float32(1)
    ref = KERNELS["dense"].ref(x, w, b, clamp=(-1, 1))
    for has_shortcut in (False, True):
        y, y_t, y_1 = np.full((3, rows, c_out), np.nan, np.float32)
        _product._product_jit(x, False, w, b, True, lo, hi, has_shortcut, s, y)
        # and x given transposed, as conv2d's first layer gives its patches
        _product._product_jit(np.ascontiguousarray(x.T), True, w, b, True, lo, hi, has_shortcut, s, y_t)
        np.testing.assert_array_equal(y_t, y)
        _product._product_serial_jit(x, False, w, b, True, lo, hi, has_shortcut, s, y_1)
        np.testing.assert_array_equal(y_1, y)
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:  # product() on one thread takes the serial driver
            _product.product(x, False, w, b, True, lo, hi, y_1, s if has_shortcut else None)
        finally:
            numba.set_num_threads(threads)
        np.testing.assert_array_equal(y_1, y)
        assert_within(y, ref + s * has_shortcut, KERNELS["dense"].ref(np.abs(x), np.abs(w), np.abs(b)) + np.abs(s), 8)


@pytest.mark.parametrize("rows, c_in, c_out", [
    (700, 16, 96),   # w fits in half the L1: blocks of at most SMALL_BLOCK_FLOATS outputs
    (300, 64, 128),  # w does not: blocks of at most BLOCK_FLOATS
    (5, 64, 128),    # fewer rows than columns: column blocks
])
def test_pointwise_with_a_shortcut_at_each_block_size(rows, c_in, c_out):
    """The residual add fused into the epilogue (y = clamp(x @ w + b) + shortcut) on every kind
    of block, with and without the clamp; the shortcut of the wrong shape is refused."""
    from npmobile.kernels import _product
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((1, 1, rows, c_in)).astype(np.float32)
    w = rng.standard_normal((c_in, c_out)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    shortcut = rng.standard_normal((1, 1, rows, c_out)).astype(np.float32)
    blocks = _product.blocks(rows, c_in, c_out)
    assert blocks[0] * blocks[1] >= _product.PARTS
    for clamp in (None, (0.0, 6.0)):
        check_linear("pointwise_conv2d", x, w, b, {"clamp": clamp, "shortcut": shortcut}, terms=c_in + 1)
        # the same float32 additions in the same order as a separate add after the layer: same bits
        alone = KERNELS["add"].fast(shortcut, KERNELS["pointwise_conv2d"].fast(x, w, b, clamp=clamp))
        np.testing.assert_array_equal(KERNELS["pointwise_conv2d"].fast(x, w, b, clamp=clamp, shortcut=shortcut), alone)
    with pytest.raises(ValueError, match=r"shortcut: expected the output's shape \(1, 1, %d, %d\)" % (rows, c_out)):
        KERNELS["pointwise_conv2d"].fast(x, w, b, shortcut=shortcut[..., :-1])


@pytest.mark.parametrize("rows, c_out", [(3, 1024), (1500, 1024), (1, 2048), (5, 1000)])
def test_product_on_weight_rows_laid_out_apart(rows, c_out):
    """w of 1024 or 2048 columns (rows a multiple of 4 KiB) is laid out with padded rows once
    (padded_rows, as engine.fuse stores it): the product reads it in place, with the same bits as
    from the plain array, in column blocks, row blocks and the one-row gemv; 1000 columns stay."""
    from npmobile.kernels._product import PAD_FLOATS, padded_rows
    rng = np.random.default_rng(c_out + rows)
    x = rng.standard_normal((1, 1, rows, 24)).astype(np.float32)
    w = rng.standard_normal((24, c_out)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    laid_out = padded_rows(w)
    np.testing.assert_array_equal(laid_out, w)
    assert laid_out.strides[0] == 4 * (c_out + (PAD_FLOATS if c_out % 1024 == 0 else 0))
    for kernel, xs in (("pointwise_conv2d", x), ("dense", x[0, 0])):
        y = KERNELS[kernel].fast(xs, laid_out, b, clamp=(0.0, 6.0))
        np.testing.assert_array_equal(y, KERNELS[kernel].fast(xs, w, b, clamp=(0.0, 6.0)))
    check_linear("pointwise_conv2d", x, laid_out, b, {"clamp": (0.0, 6.0)}, terms=24)


def test_blocks_follow_the_size_of_w():
    """Row blocks of at most SMALL_BLOCK_FLOATS outputs when w fits in half the L1, else of at
    most BLOCK_FLOATS; a multiple of PARTS either way; PARTS column blocks for fewer rows."""
    from npmobile.kernels._product import BLOCK_FLOATS, PARTS, SMALL_BLOCK_FLOATS, blocks
    small_k = SMALL_BLOCK_FLOATS // 2 // 64  # w (small_k, 64) is exactly half the L1
    for k, floats in ((small_k, SMALL_BLOCK_FLOATS), (small_k + 1, BLOCK_FLOATS)):
        for m in (64, 65, floats // 64, floats // 64 + 1, 10 * floats // 64 + 5):
            rows, cols = blocks(m, k, 64)
            assert cols == 1 and rows % PARTS == 0
            assert rows == PARTS or m * 64 / rows <= floats < m * 64 / (rows - PARTS)  # as few as fit
    assert blocks(63, 1000, 64) == (1, PARTS)


def test_product_without_openblas_falls_back_to_matmul(monkeypatch):
    """Where NumPy is not built on OpenBLAS, the product runs np.matmul block by block."""
    from npmobile.kernels import _product
    monkeypatch.setattr(_product, "HAVE_SGEMM", False)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    check_linear("pointwise_conv2d", x, w[0, 0], b, {"clamp": (0.0, 6.0)}, terms=6)
    check_linear("conv2d", x[..., :2], w[:, :, :2], b, dict(stride=2, pad=(1, 1, 1, 1), clamp=None), terms=18)
    check_linear("conv2d", x, w, b, dict(stride=1, pad=(0, 1, 0, 1), clamp=None), terms=54)
