"""Layer 2: every oracle equals torch.nn.functional, the spec check for layout, padding and eps.

Both sides compute in float64, through an NHWC <-> NCHW permute, so any difference above 1e-9 is
a disagreement about what the op means, not rounding. Keras' bottom/right-only padding on
stride-2 layers and torch's symmetric padding are both drawn (each pad side is independent).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npmobile.kernels import KERNELS

torch = pytest.importorskip("torch")
F = torch.nn.functional

PADS = st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 0, 1), (2, 0, 1, 3), (3, 3, 3, 3)])


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a, np.float64), -1, 1)))


def nhwc(t):
    return np.moveaxis(t.numpy(), 1, -1)


def close(ours, theirs):
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


@st.composite
def conv_problem(draw, depthwise):
    k = draw(st.sampled_from([1, 3, 5, 7]))
    pad = draw(PADS)
    n, c_in = draw(st.integers(1, 2)), draw(st.integers(1, 12))
    h = draw(st.integers(max(1, k - pad[0] - pad[1]), 11))
    w = draw(st.integers(max(1, k - pad[2] - pad[3]), 11))
    m = draw(st.integers(1, 3))
    c_out = c_in * m if depthwise else draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, h, w, c_in))
    wt = rng.standard_normal((k, k, c_out) if depthwise else (k, k, c_in, c_out))
    b = rng.standard_normal(c_out)
    return x, wt, b, draw(st.sampled_from([1, 2])), pad


def torch_conv(x, w_oihw, b, stride, pad, groups=1):
    top, bottom, left, right = pad
    xt = F.pad(nchw(x), (left, right, top, bottom))  # F.pad lists the last axis first
    return nhwc(F.conv2d(xt, w_oihw, torch.from_numpy(b), stride=stride, groups=groups))


@given(conv_problem(depthwise=False))
def test_conv2d_is_torch_conv2d(problem):
    x, w, b, stride, pad = problem
    theirs = torch_conv(x, torch.from_numpy(w).permute(3, 2, 0, 1), b, stride, pad)  # HWIO -> OIHW
    close(KERNELS["conv2d"].ref(x, w, b, stride=stride, pad=pad), theirs)


@given(conv_problem(depthwise=True))
def test_depthwise_is_torch_grouped_conv2d(problem):
    x, w, b, stride, pad = problem
    # HWC -> (c_out, 1, k, k): output channel c of group c // m, torch's depthwise order.
    w_t = torch.from_numpy(w).permute(2, 0, 1)[:, None]
    theirs = torch_conv(x, w_t, b, stride, pad, groups=x.shape[3])
    close(KERNELS["depthwise_conv2d"].ref(x, w, b, stride=stride, pad=pad), theirs)


@given(conv_problem(depthwise=False))
def test_pointwise_is_torch_1x1_conv2d(problem):
    x, w, b, _, _ = problem
    w1 = w[0, 0]
    theirs = torch_conv(x, torch.from_numpy(w1).T[:, :, None, None].contiguous(), b, 1, (0, 0, 0, 0))
    close(KERNELS["pointwise_conv2d"].ref(x, w1, b), theirs)


@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1e-5]))
def test_batchnorm_is_torch_batch_norm(seed, eps):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 4, 7))
    gamma, beta, mean = rng.standard_normal((3, 7))
    var = rng.uniform(0.01, 3, 7)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    theirs = nhwc(F.batch_norm(nchw(x), t(mean), t(var), t(gamma), t(beta), training=False, eps=eps))
    close(KERNELS["batchnorm"].ref(x, gamma, beta, mean, var, eps=eps), theirs)


@given(st.integers(0, 2**32 - 1))
def test_clamp_is_torch_hardtanh_0_6(seed):
    x = 5 * np.random.default_rng(seed).standard_normal((2, 3, 3, 5))
    close(KERNELS["clamp"].ref(x), F.hardtanh(torch.from_numpy(x), 0.0, 6.0).numpy())


@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 9))
def test_global_avg_pool_is_torch_adaptive_avg_pool(seed, h, w):
    x = np.random.default_rng(seed).standard_normal((2, h, w, 6))
    theirs = F.adaptive_avg_pool2d(nchw(x), 1)[:, :, 0, 0].numpy()
    close(KERNELS["global_avg_pool"].ref(x), theirs)


@given(st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 9))
def test_global_max_pool_is_torch_adaptive_max_pool(seed, h, w):
    x = np.random.default_rng(seed).standard_normal((2, h, w, 6))
    close(KERNELS["global_max_pool"].ref(x), F.adaptive_max_pool2d(nchw(x), 1)[:, :, 0, 0].numpy())


@given(st.integers(0, 2**32 - 1))
def test_dense_is_torch_linear(seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((3, 10)), rng.standard_normal((10, 4)), rng.standard_normal(4)
    theirs = F.linear(torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(b)).numpy()
    close(KERNELS["dense"].ref(x, w, b), theirs)


@given(st.integers(0, 2**32 - 1))
def test_softmax_is_torch_softmax(seed):
    x = 10 * np.random.default_rng(seed).standard_normal((3, 11))
    close(KERNELS["softmax"].ref(x), F.softmax(torch.from_numpy(x), dim=-1).numpy())


@given(st.integers(0, 2**32 - 1), PADS)
def test_zero_pad_is_torch_pad(seed, pad):
    x = np.random.default_rng(seed).standard_normal((1, 3, 4, 2))
    top, bottom, left, right = pad
    close(KERNELS["zero_pad"].ref(x, pad=pad), nhwc(F.pad(nchw(x), (left, right, top, bottom))))


def test_add_is_torch_add():
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((2, 2, 3, 3, 4))
    close(KERNELS["add"].ref(x1, x2), torch.add(torch.from_numpy(x1), torch.from_numpy(x2)).numpy())
