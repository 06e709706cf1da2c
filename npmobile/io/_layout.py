"""Layout tracking: which ONNX axis of an activation is which axis of npmobile's value.

npmobile keeps every activation NHWC: per sample (h, w, c), or (c,) once pooled. An ONNX file
may hold the same tensor as NCHW (torch exports), NHWC (between Keras' transposes), NC11 (after
a global pool with keepdims) or NC (after Flatten). An `Act` pairs the npmobile value with its
ONNX *layout*: one letter per ONNX axis, "N" (batch), "C", "H", "W", or "1" (an axis of size 1).
A Transpose or a Reshape that only moves 1-axes then changes the letters and computes nothing;
every other op reads the letters to find its axes (the channels of a BatchNormalization, the
H and W of a Pad or a pool).
"""

from typing import NamedTuple

import numpy as np


class Act(NamedTuple):
    value: str  # the npmobile value that holds the activation
    layout: str  # one letter per ONNX axis


def onnx_shape(act, shape):
    """The ONNX shape, at batch 1, of an activation whose npmobile per-sample shape is `shape`."""
    spatial = len(shape) == 3
    dims = {"N": 1, "1": 1, "C": shape[-1], "H": shape[0] if spatial else 1, "W": shape[1] if spatial else 1}
    return tuple(dims[a] for a in act.layout)


def transposed(act, perm):
    """The activation after an ONNX Transpose (perm None: reversed axes); the batch stays first."""
    perm = list(range(len(act.layout)))[::-1] if perm is None else list(perm)
    if perm[0] != 0:
        raise ValueError(f"perm {perm} moves the batch axis")
    return act._replace(layout="".join(act.layout[p] for p in perm))


def pooled(act, keepdims):
    """The layout after an average over H and W: 1-axes in their place, or gone."""
    if keepdims:
        return "".join("1" if a in "HW" else a for a in act.layout)
    return "".join(a for a in act.layout if a not in "HW")


def reshaped(act, shape, new_shape):
    """A reshape of a pooled vector (npmobile shape (c,)) that only drops or adds 1-axes, keeping
    the batch first: the same value under a new layout."""
    old = onnx_shape(act, shape)
    if tuple(new_shape) == old:
        return act
    rest = list(new_shape[1:])
    if len(shape) != 1 or new_shape[0] != 1 or sorted(rest) != sorted([shape[0]] + [1] * (len(rest) - 1)):
        raise ValueError(f"reshapes {old} to {tuple(new_shape)}: only dropping or adding 1-axes of a pooled vector "
                         "(keeping the batch first) is supported")
    i = rest.index(shape[0])
    return act._replace(layout="N" + "".join("C" if j == i else "1" for j in range(len(rest))))


def per_channel(act, shape, k):
    """A constant k that broadcasts against the activation, as one value per channel (or a
    ValueError when it varies along any other axis or broadcasts beyond the activation)."""
    full_shape = onnx_shape(act, shape)
    k = np.asarray(k, dtype=np.float64)
    if np.broadcast_shapes(full_shape, k.shape) != full_shape:
        raise ValueError(f"a constant of shape {k.shape} broadcasts beyond the activation's {full_shape}")
    c = act.layout.index("C")
    vec = np.moveaxis(np.broadcast_to(k, full_shape), c, -1).reshape(-1, full_shape[c])
    if not (vec == vec[:1]).all():
        raise ValueError(f"a constant of shape {k.shape} that is not per channel")
    return vec[0]


def spatial_pads(act, pads, axes):
    """ONNX Pad's pads (all befores, then all afters, over `axes`) as npmobile's (top, bottom,
    left, right); refuses pads of the batch or the channels, and negative ones."""
    rank = len(act.layout)
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    pads = [int(p) for p in np.ravel(pads)]
    before = {act.layout[a]: pads[i] for i, a in enumerate(axes)}
    after = {act.layout[a]: pads[len(axes) + i] for i, a in enumerate(axes)}
    if any(side.get(a, 0) for side in (before, after) for a in "NC") or min(pads) < 0:
        raise ValueError(f"pads {pads} (only non-negative pads of H and W)")
    return before.get("H", 0), after.get("H", 0), before.get("W", 0), after.get("W", 0)


def softmax_over_channels(act, axis, opset):
    """Does an ONNX Softmax over `axis` take the softmax over the channels of a vector? (Before
    opset 13 it flattens the axes from `axis` on, so 1-axes around C do not matter.)"""
    rank = len(act.layout)
    axis = axis % rank
    if opset >= 13:
        return act.layout[axis] == "C"
    return "C" in act.layout[axis:] and set(act.layout[1:axis]) <= {"1"}
