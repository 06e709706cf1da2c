"""Running a graph: one loop over its nodes with a dict of named values.

Two engines share that loop:
- the fast engine runs the numba kernels on the *fused* graph (`fuse`): every batch norm folded
  into the convolution before it, every ReLU6 fused into the kernel that produces its input;
- the oracle engine runs the float64 NumPy oracles on the graph exactly as built, one node per
  layer, for reading and for tests.

Both can return every intermediate value by node name: a layer-by-layer diff against a framework
is how one finds the first layer that disagrees. A fused node carries the name of the last node it
absorbed, so its value is comparable with the oracle's value of that name.
"""

import numpy as np

from .graph import Graph, Node
from .kernels import KERNELS, fold_batchnorm

_LINEAR = ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "dense")
_PADDED = ("conv2d", "depthwise_conv2d")


def check_input(graph, x):
    """x must be a float batch of the graph's input shape (NHWC)."""
    x = np.asarray(x)
    expected = tuple(graph.input_shape)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"input: expected a float32 NHWC batch, found dtype {x.dtype} "
                         "(uint8 images go through model.preprocess first)")
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(f"input: expected shape (n, {', '.join(map(str, expected))}), found {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"input: expected a batch of at least 1, found {x.shape}")
    return x


def run(graph, params, x, *, oracle=False, intermediates=False):
    """Run `graph` on the NHWC batch x. Returns the output, or {name: value} for every node
    (and "input") when intermediates=True."""
    x = check_input(graph, x)
    values = {"input": x if oracle else x.astype(np.float32, copy=False)}
    last_use = _last_use(graph.nodes)
    for i, node in enumerate(graph.nodes):
        kernel = KERNELS[node.op]
        fn = kernel.ref if oracle else kernel.fast
        args = [values[name] for name in node.inputs] + [params[f"{node.name}.{p}"] for p in node.params]
        values[node.name] = fn(*args, **node.attrs)
        if not intermediates:  # drop what no later node reads, so memory stays at a few layers
            for name in node.inputs:
                if last_use[name] == i:
                    del values[name]
    return values if intermediates else values[graph.output]


def _last_use(nodes):
    """value name -> index of the last node that reads it."""
    return {name: i for i, node in enumerate(nodes) for name in node.inputs}


def _consumers(nodes):
    users = {}
    for node in nodes:
        for name in node.inputs:
            users.setdefault(name, []).append(node)
    return users


def _fold_pads(nodes, output):
    """A zero_pad read only by a convolution becomes that convolution's own padding."""
    users = _consumers(nodes)
    pads = {}  # conv name -> (zero_pad node it absorbs)
    for node in nodes:
        readers = users.get(node.name, [])
        if node.op == "zero_pad" and node.name != output and len(readers) == 1 and readers[0].op in _PADDED:
            pads[readers[0].name] = node
    out = []
    for node in nodes:
        if node.op == "zero_pad" and any(p is node for p in pads.values()):
            continue
        if node.name in pads:
            zp = pads[node.name]
            pad = tuple(a + b for a, b in zip(zp.attrs["pad"], node.attrs.get("pad", (0, 0, 0, 0))))
            node = node._replace(inputs=zp.inputs, attrs={**node.attrs, "pad": pad})
        out.append(node)
    return out


def fuse(graph, params):
    """The fast engine's graph: zero padding folded into the convolution after it, BN folded into
    the linear layer before it, ReLU6 (any clamp) fused into the kernel. Returns (graph, params);
    neither input is modified."""
    nodes = _fold_pads(graph.nodes, graph.output)
    users = _consumers(nodes)

    def only_reader(node, op):
        readers = users.get(node.name, [])
        if len(readers) == 1 and readers[0].op == op and node.name != graph.output:
            return readers[0]
        return None

    fused, new_params, absorbed = [], {}, set()
    for node in nodes:
        if node.name in absorbed:
            continue
        if node.op not in _LINEAR:
            fused.append(node)
            new_params.update({f"{node.name}.{p}": params[f"{node.name}.{p}"] for p in node.params})
            continue
        w = params[f"{node.name}.w"]
        b = params.get(f"{node.name}.b")
        attrs = dict(node.attrs)
        tail = node
        if bn := only_reader(tail, "batchnorm"):
            stats = (params[f"{bn.name}.{p}"] for p in ("gamma", "beta", "mean", "var"))
            w, b = fold_batchnorm(w, b, *stats, eps=bn.attrs["eps"])
            absorbed.add(bn.name)
            tail = bn
        if (clamp := only_reader(tail, "clamp")) and "clamp" not in attrs:
            attrs["clamp"] = (clamp.attrs["lo"], clamp.attrs["hi"])
            absorbed.add(clamp.name)
            tail = clamp
        w = np.ascontiguousarray(w, dtype=np.float32)
        node_params = {"w": w.shape}
        new_params[f"{tail.name}.w"] = w
        if b is not None:
            node_params["b"] = (w.shape[-1],)
            new_params[f"{tail.name}.b"] = np.ascontiguousarray(b, dtype=np.float32)
        fused.append(Node(node.op, tail.name, node.inputs, attrs, node_params, tail.shape))
    return Graph(fused, graph.input_shape, dict(graph.config)), new_params


class Plan:
    """The fused graph prepared for one batch size, with its activation buffers.

    Every node's output is a view into one of a few flat float32 buffers, allocated once and
    reused by every later call. A buffer is handed to a new node as soon as no later node reads
    the value it holds (liveness, as a register allocator does), and never to a node that reads
    it, so a kernel's output never overlaps its input. For MobileNetV2 at batch 1 that is three
    buffers instead of one allocation per layer per call.

    A Plan is not thread-safe (its buffers are shared state): Model keeps one per thread.
    """

    def __init__(self, graph, params, batch):
        self.graph, self.batch = graph, batch
        last_use = _last_use(graph.nodes)
        sizes, free, self.slots = [], [], {}
        for i, node in enumerate(graph.nodes):
            size = batch * int(np.prod(node.shape))
            fits = [b for b in free if sizes[b] >= size]
            if fits:
                buf = min(fits, key=lambda b: sizes[b])  # the smallest free buffer that fits
                free.remove(buf)
            elif free:  # grow the largest free buffer rather than add one
                buf = max(free, key=lambda b: sizes[b])
                free.remove(buf)
                sizes[buf] = size
            else:
                buf = len(sizes)
                sizes.append(size)
            self.slots[node.name] = (buf, size, (batch, *node.shape))
            # Values read for the last time by this node free their buffer for later nodes
            # (not for this one: it is still reading them).
            free += [self.slots[name][0] for name in set(node.inputs)
                     if last_use.get(name) == i and name in self.slots]
            if node.name not in last_use and node.name != graph.output:
                free.append(buf)
        self.buffers = [np.empty(s, dtype=np.float32) for s in sizes]
        self.views = {name: self.buffers[buf][:size].reshape(shape) for name, (buf, size, shape) in self.slots.items()}
        # The caller's batch is copied into a buffer of its own (17 µs at 224x224), so that every
        # step can be bound once, here, to the buffers it reads and writes: `kernel.check` checks
        # the arguments once and returns what `kernel.run` takes, and a call runs loops and
        # nothing else.
        self.views["input"] = np.empty((batch, *graph.input_shape), dtype=np.float32)
        self.steps = [(KERNELS[node.op].run,
                       KERNELS[node.op].check(*[self.views[i] for i in node.inputs],
                                              *[params[f"{node.name}.{p}"] for p in node.params],
                                              **node.attrs, out=self.views[node.name]))
                      for node in graph.nodes]

    def run(self, x):
        """Run on x (batch, h, w, c) float32; returns a new array (the buffers are reused)."""
        np.copyto(self.views["input"], x)
        for run, args in self.steps:
            run(*args)
        return self.views[self.graph.output].copy()
