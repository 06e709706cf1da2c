"""Batch normalisation at inference time, and folding it into the convolution before it.

    y[..., c] = gamma[c] * (x[..., c] - mean[c]) / sqrt(var[c] + eps) + beta[c]
              = x[..., c] * scale[c] + shift[c],
    scale = gamma / sqrt(var + eps),   shift = beta - mean * scale

mean and var are the running statistics saved at training time; eps is a convention of the
framework that trained the model (1e-3 in Keras, 1e-5 in torchvision), not a free choice.

Cost: one multiply-add per element, n * h * w * c MACs (and 2 * c parameters of scale and shift,
plus 2 * c running statistics).

Folding. A convolution with weights w (output channel on the last axis, as in every layout here)
and bias b, followed by a batch norm, is the convolution with

    w' = w * scale,   b' = (b - mean) * scale + beta

so at inference time the batch norm costs nothing: `fold_batchnorm` computes w', b' once.
"""

import numpy as np

from ._checks import as_float32, output
from ._jit import jit


def _channel_params(x, gamma, beta, mean, var):
    c = x.shape[-1]
    params = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
    out = []
    for name, p in params.items():
        p = as_float32(name, p, ndim=1)
        if p.shape[0] != c:
            raise ValueError(f"{name}: expected shape ({c},) to match the {c} channels of x {x.shape}, "
                             f"found {p.shape}")
        out.append(p)
    return out


def batchnorm_ref(x, gamma, beta, mean, var, *, eps):
    """The oracle: the first line of the equation, in float64."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    return f64(gamma) * (f64(x) - f64(mean)) / np.sqrt(f64(var) + eps) + f64(beta)


@jit
def _scale_shift_jit(x, scale, shift, y):
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            y[r, c] = x[r, c] * scale[c] + shift[c]


def check_batchnorm(x, gamma, beta, mean, var, *, eps, out=None):
    """The arguments of run_batchnorm: x, the per-channel scale and shift, y."""
    x = as_float32("x", x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected channels on the last axis, found shape {x.shape}")
    gamma, beta, mean, var = _channel_params(x, gamma, beta, mean, var)
    if not eps >= 0:
        raise ValueError(f"eps: expected a number >= 0, found {eps!r}")
    scale = gamma / np.sqrt(var + np.float32(eps))
    shift = beta - mean * scale
    return x, scale, shift, output(out, x.shape)


def run_batchnorm(x, scale, shift, y):
    c = x.shape[-1]
    _scale_shift_jit(x.reshape(-1, c), scale, shift, y.reshape(-1, c))
    return y


def batchnorm(x, gamma, beta, mean, var, *, eps, out=None):
    """The fast kernel: scale and shift once per channel, then one multiply-add per element."""
    return run_batchnorm(*check_batchnorm(x, gamma, beta, mean, var, eps=eps, out=out))


def fold_batchnorm(w, b, gamma, beta, mean, var, *, eps):
    """Fold a batch norm into the convolution (or dense layer) before it: returns (w', b').

    w has the output channel on its last axis (HWIO, HWC, IO); b may be None. The arithmetic is
    done in float64 and rounded once to float32, so the folded layer is as exact as float32 allows.
    """
    w64 = np.asarray(w, dtype=np.float64)
    c = w64.shape[-1]
    stats = [np.asarray(p, dtype=np.float64) for p in (gamma, beta, mean, var)]
    for name, p in zip(("gamma", "beta", "mean", "var"), stats):
        if p.shape != (c,):
            raise ValueError(f"{name}: expected shape ({c},) to match the output channels of w {w64.shape}, "
                             f"found {p.shape}")
    gamma, beta, mean, var = stats
    scale = gamma / np.sqrt(var + eps)
    b64 = np.zeros(c) if b is None else np.asarray(b, dtype=np.float64)
    return (w64 * scale).astype(np.float32), ((b64 - mean) * scale + beta).astype(np.float32)
