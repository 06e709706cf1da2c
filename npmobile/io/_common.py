"""What the importers share, written once (the error plumbing, `needs` and `reading`, is in
npmobile/errors.py, which the native reader and the image reader use too):
- `from_torch` / `to_torch`: torch's (and ONNX's) weight layouts to npmobile's and back;
- `dequantize`, one error for every unsupported node (`refuse_unsupported`), and `Emitter`, which
  appends npmobile nodes (named, shaped, with their float32 weights) so the ONNX and TFLite
  importers only translate their own ops.

Weights arrive here already in npmobile's layout: conv2d HWIO (k, k, c_in, c_out), depthwise
HWC (k, k, c_in * multiplier); the emitter chooses the kernel (a 1x1 stride-1 unpadded conv is a
pointwise conv, a 1x1 conv on a pooled vector is a dense layer) so both formats map alike.
"""

import numpy as np

from ..config import Config
from ..errors import WeightFileError
from ..graph import Builder, Graph, conv_out


# --- weight layouts: torch (OIHW, and ONNX's Conv/Gemm) <-> npmobile (HWIO, HWC, IO) ----------

def from_torch(op, w):
    """A torch weight in the graph's layout: conv OIHW -> HWIO; depthwise (c*m, 1, k, k) ->
    (k, k, c*m); 1x1 conv (c_out, c_in, 1, 1) -> (c_in, c_out); linear (out, in) -> (in, out).
    Any other shape is returned as found, so the shape check names it."""
    if op == "conv2d" and w.ndim == 4:
        return w.transpose(2, 3, 1, 0)
    if op == "depthwise_conv2d" and w.ndim == 4 and w.shape[1] == 1:
        return w[:, 0].transpose(1, 2, 0)
    if op in ("pointwise_conv2d", "dense") and w.ndim == 4 and w.shape[2:] == (1, 1):
        return w[:, :, 0, 0].T
    if op in ("pointwise_conv2d", "dense") and w.ndim == 2:
        return w.T
    return w


def to_torch(op, w):
    """The inverse of from_torch: the graph's layout -> torch's (contiguous), for torch twins."""
    if op == "conv2d":
        w = w.transpose(3, 2, 0, 1)
    elif op == "depthwise_conv2d":
        w = w.transpose(2, 0, 1)[:, None]
    elif op == "pointwise_conv2d":
        w = w.T[:, :, None, None]
    elif op == "dense":
        w = w.T
    return np.ascontiguousarray(w)


def dequantize(q, scale, zero_point, axis=0):
    """real = scale * (q - zero_point), per tensor (one scale) or per channel along `axis`."""
    q = np.asarray(q).astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    zero_point = np.asarray(zero_point, dtype=np.float64).reshape(-1)
    if scale.size > 1 or zero_point.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (scale * (q - zero_point)).astype(np.float32)


def read_member(z, name, limit, source):
    """One zip member's bytes, refused when its header declares more than `limit` bytes and read
    with that cap whatever the header says (a deflated member can inflate 1000-fold)."""
    info = z.getinfo(name)
    if info.file_size > limit:
        raise WeightFileError(f"{source}: zip member {name!r} declares {info.file_size:,} bytes, "
                              f"expected at most {limit:,}")
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise WeightFileError(f"{source}: zip member {name!r} inflates beyond {limit:,} bytes")
    return data


MAX_ZIP_MEMBERS = 100_000


def check_zip_sizes(z, limit):
    """Refuse, from the zip's headers alone, an archive whose members would inflate beyond
    `limit` bytes in all (a CRC-32 pass, zipfile.testzip, reads every member to its end, and a
    member never yields more than its header declares)."""
    infos = z.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise WeightFileError(f"{len(infos):,} zip members, expected at most {MAX_ZIP_MEMBERS:,}")
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise WeightFileError(f"its zip members declare {total:,} bytes in all, above {limit:,} "
                              "($NPMOBILE_MAX_WEIGHT_BYTES)")


def refuse_unsupported(path, what, problems):
    """One WeightFileError naming every node the engine cannot run: [(node, op, reason), ...]."""
    lines = [f"{path}: {len(problems)} {what} node(s) npmobile cannot run (nothing was skipped):"]
    lines += [f"  node {name!r} ({op}): {reason}" for name, op, reason in problems]
    raise WeightFileError("\n".join(lines))


def guess_arch(nodes):
    """"mobilenet_v2" for depthwise convs with residual adds, "mobilenet_v1" without, else
    "imported": a label for people, the graph itself is what runs."""
    ops = {n.op for n in nodes}
    if "depthwise_conv2d" not in ops:
        return "imported"
    return "mobilenet_v2" if "add" in ops else "mobilenet_v1"


class Emitter:
    """A Builder plus the float32 tensors of every node, with unique names."""

    def __init__(self, input_shape):
        self.builder = Builder(input_shape)
        self.params = {}

    def shape(self, value):
        return self.builder.shapes[value]

    def _name(self, name):
        name, i = name or "node", 1
        base = name
        while name in self.builder.shapes:
            i += 1
            name = f"{base}_{i}"
        return name

    def _add(self, op, name, inp, attrs, tensors, shape):
        name = self._name(name)
        inputs = inp if isinstance(inp, tuple) else (inp,)
        params = {}
        for p, a in tensors.items():
            if a is not None:
                self.params[f"{name}.{p}"] = np.ascontiguousarray(a, dtype=np.float32)
                params[p] = self.params[f"{name}.{p}"].shape
        return self.builder.add(op, name, attrs, params, shape, inputs=inputs)

    def linear(self, name, inp, w, b=None, *, stride=1, pad=(0, 0, 0, 0), depthwise=False):
        """A convolution with weights w (HWIO, or HWC when depthwise), as the cheapest kernel
        that computes it. Returns the node name."""
        s = self.shape(inp)
        k_h, k_w = w.shape[:2]
        c_in = s[-1]
        if depthwise:
            if w.shape[2] % c_in:
                raise ValueError(f"depthwise weights {w.shape} do not fit {c_in} input channels")
        elif w.shape[2] != c_in:
            raise ValueError(f"weights {w.shape} expect {w.shape[2]} input channels, found {c_in}")
        if len(s) == 1:  # a pooled vector: only a 1x1 convolution (a dense layer) applies
            if (k_h, k_w) != (1, 1) or depthwise:
                raise ValueError(f"a {k_h}x{k_w} {'depthwise ' if depthwise else ''}convolution on a pooled "
                                 f"vector of {c_in} channels: only 1x1 convolutions are supported there")
            return self._add("dense", name, inp, {}, {"w": w.reshape(c_in, -1), "b": b}, (w.shape[-1],))
        h = conv_out(s[0], k_h, stride, pad[0], pad[1])
        wo = conv_out(s[1], k_w, stride, pad[2], pad[3])
        if h < 1 or wo < 1:
            raise ValueError(f"a {k_h}x{k_w} window with stride {stride} and pads {pad} on a {s[0]}x{s[1]} map")
        if k_h != k_w:
            raise ValueError(f"non-square {k_h}x{k_w} kernels are not supported")
        attrs = {"stride": int(stride), "pad": tuple(int(p) for p in pad)}
        if depthwise:
            return self._add("depthwise_conv2d", name, inp, attrs, {"w": w, "b": b}, (h, wo, w.shape[2]))
        if k_h == 1 and stride == 1 and not any(pad):
            return self._add("pointwise_conv2d", name, inp, {}, {"w": w.reshape(c_in, -1), "b": b},
                             (s[0], s[1], w.shape[-1]))
        return self._add("conv2d", name, inp, attrs, {"w": w, "b": b}, (h, wo, w.shape[-1]))

    def affine(self, name, scale=None, shift=None):
        """y -> scale * y + shift per output channel, folded into the linear node `name`'s
        weights and bias (ONNX's Mul/Add after a conv: Keras' unfolded batch norm, a bias)."""
        i = next(i for i, n in enumerate(self.builder.nodes) if n.name == name)
        node = self.builder.nodes[i]
        w = self.params[f"{name}.w"].astype(np.float64)
        b = self.params.get(f"{name}.b", np.zeros(w.shape[-1])).astype(np.float64)
        if scale is not None:
            w, b = w * scale, b * scale
        if shift is not None:
            b = b + shift
        self.params[f"{name}.w"] = w.astype(np.float32)
        self.params[f"{name}.b"] = b.astype(np.float32)
        self.builder.nodes[i] = node._replace(params={"w": w.shape, "b": b.shape})

    def clamp(self, name, inp, lo, hi):
        return self._add("clamp", name, inp, {"lo": float(lo), "hi": float(hi)}, {}, self.shape(inp))

    def activation(self, name, inp, kind):
        """A fused activation: None, "relu" (clamp 0..inf) or "relu6" (clamp 0..6)."""
        if kind is None:
            return inp
        return self.clamp(name, inp, 0.0, 6.0 if kind == "relu6" else np.inf)

    def add(self, name, a, b):
        if self.shape(a) != self.shape(b):
            raise ValueError(f"adds values of shapes {self.shape(a)} and {self.shape(b)}")
        return self._add("add", name, (a, b), {}, {}, self.shape(b))

    def zero_pad(self, name, inp, pad):
        h, w, c = self.shape(inp)
        return self._add("zero_pad", name, inp, {"pad": tuple(int(p) for p in pad)}, {},
                         (h + pad[0] + pad[1], w + pad[2] + pad[3], c))

    def global_avg_pool(self, name, inp):
        if len(self.shape(inp)) != 3:
            raise ValueError(f"global pooling of a value of shape {self.shape(inp)}")
        return self._add("global_avg_pool", name, inp, {}, {}, (self.shape(inp)[-1],))

    def batchnorm(self, name, inp, gamma, beta, mean, var, eps):
        return self._add("batchnorm", name, inp, {"eps": float(eps)},
                         {"gamma": gamma, "beta": beta, "mean": mean, "var": var}, self.shape(inp))

    def softmax(self, name, inp):
        if len(self.shape(inp)) != 1:
            raise ValueError(f"softmax over the channels of a {self.shape(inp)} map: only a vector is supported")
        return self._add("softmax", name, inp, {}, {}, self.shape(inp))

    def graph(self, output, **config):
        """The Graph ending at `output`, which must be the last node (a chain, not a branch);
        config: Config's fields but arch and output, which are read off the nodes."""
        nodes = self.builder.nodes
        if not nodes:
            raise ValueError("the graph has no node npmobile computes")
        if nodes[-1].name != output:
            raise ValueError(f"the graph's output is {output!r}, but the last node computed is "
                             f"{nodes[-1].name!r}: a branch npmobile cannot run")
        read = {i for n in nodes for i in n.inputs}
        dead = [n.name for n in nodes[:-1] if n.name not in read]
        if dead:
            raise ValueError(f"node(s) {', '.join(dead[:5])} compute values that neither the output nor any "
                             "later node reads: a second output or branch npmobile cannot run")
        kind = {"softmax": "probabilities", "dense": "logits"}.get(nodes[-1].op, "features")
        config = Config(arch=guess_arch(nodes), output=kind, classes=self.shape(output)[-1], **config)
        return Graph(list(nodes), self.builder.shapes["input"], config)


class IntegerEmitter:
    """What the quantized importers (tflite_int, onnx_int) emit into: a Builder, the integer
    tensors and every value's (scale, zero_point)."""

    def __init__(self, input_shape):
        self.builder = Builder(input_shape)
        self.params, self.quant = {}, {}

    def shape(self, value):
        return self.builder.shapes[value]

    def add(self, op, name, inputs, attrs, params, shape, quant):
        """Append a node (name made unique: name_2, ...) whose value has `quant`; returns its name."""
        base, i = name, 1
        while name in self.builder.shapes:
            i += 1
            name = f"{base}_{i}"
        for p, a in params.items():
            self.params[f"{name}.{p}"] = np.ascontiguousarray(a)
        self.builder.add(op, name, attrs, {p: a.shape for p, a in params.items()}, shape, inputs=inputs)
        self.quant[name] = quant
        return name
