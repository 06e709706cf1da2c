"""Running a graph: a `Plan` binds each node to its kernel once, then `run` is one loop.

As in ONNX's reference evaluator: implementations are bound once, the loop runs them in order
over named values, and any intermediate value is returned on request (a layer-by-layer diff
against a framework is how one finds the first layer that disagrees). Fast or oracle is chosen
when the plan is built:
- fast: the numba kernels on the *fused* graph (`fuse`): zero padding folded into the
  convolution after it, every batch norm into the linear layer before it, every clamp (ReLU6)
  into the kernel that produces its input, a residual add into the pointwise convolution that
  produces one of its inputs, a 3x3 depthwise convolution and the pointwise one that reads it
  into one separable convolution (`_fuse_separable`); every value a view into a few float32
  buffers allocated once (`_lay_out`);
- oracle: the float64 NumPy oracles on the graph exactly as built, one node per layer.
A fused node carries the name of the last node it absorbed, so its value is comparable with
the oracle's value of that name. The values it absorbed are not computed as such (a convolution
before its BN, a depthwise output inside a separable step): the fast plan's intermediates hold
the fused graph's values only, the oracle's every node's.
"""

import contextlib
import functools

import numpy as np

from .graph import LINEAR_OPS, Graph, Node
from .kernels import KERNELS, fold_batchnorm, separable
from .kernels._blas import one_thread
from .kernels._checks import PAGE, page_buffer
from .kernels._product import padded_rows
_PADDED = ("conv2d", "depthwise_conv2d")
# The ops whose kernel adds a residual's shortcut in its epilogue (keyword `shortcut`). A fused
# node of one reads the shortcut as its second input.
_RESIDUAL = ("pointwise_conv2d", "separable_conv2d")
_ROWS = ("pointwise_conv2d", "dense")  # the ops whose w is the (c_in, c_out) matrix of one product


def check_input(graph, x, dtype=None):
    """x must be a batch of the graph's input shape (NHWC): float (dtype None, the float graphs),
    else exactly of `dtype` (an integer graph's input type: the same bits mean different numbers
    in uint8 and int8, so nothing is converted)."""
    x = np.asarray(x)
    expected = tuple(graph.input_shape)
    if dtype is None and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"input: expected a float32 NHWC batch, found dtype {x.dtype} "
                         "(uint8 images go through model.preprocess first)")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"input: expected a {np.dtype(dtype)} NHWC batch, found dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(f"input: expected shape (n, {', '.join(map(str, expected))}), found {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"input: expected a batch of at least 1, found {x.shape}")
    return x


class Plan:
    """`graph` bound to its fast kernels (oracle=False) or oracles, for batches of `batch` images;
    `run` is the one loop. The fast engine is a fast Plan of `fuse(graph, params)`; the integer
    engine (npmobile.qmodel) a Plan of an integer graph with kernels=QKERNELS and `dtypes`, the
    integer type of each value ({value name: dtype}; None: every value float32).

    A Plan holds the values of its last run (the fast plan in buffers reused call after call),
    so it is not thread-safe: Model keeps one per thread.
    """

    def __init__(self, graph, params, batch, *, oracle=False, kernels=KERNELS, dtypes=None):
        self.graph, self.oracle, self.batch = graph, oracle, batch
        self.input_dtype = None if dtypes is None else dtypes["input"]
        if oracle:
            self.values, last_use = {}, _last_use(self.graph.nodes)
            self.steps = [_bind_oracle(kernels[node.op].ref, node, params, self.values,
                                       {n for n in node.inputs if last_use[n] == i})
                          for i, node in enumerate(self.graph.nodes)]
        else:
            self.values = _lay_out(self.graph, batch, dtypes)
            self.steps = [_bind_fast(kernels[node.op], node, params, self.values) for node in self.graph.nodes]

    def run(self, x, *, intermediates=False):
        """Run on x, a (batch, h, w, c) batch (float, or the integer graph's input type). Returns a
        new array holding the output, or, with intermediates, {name: value} for "input" and every
        node."""
        x = check_input(self.graph, x, self.input_dtype)
        if len(x) != self.batch:
            raise ValueError(f"input: this plan runs batches of {self.batch}, found {len(x)}")
        if self.oracle:
            self.values["input"] = x
        else:
            np.copyto(self.values["input"], x)
        seen = {"input": np.array(x)} if intermediates else None
        # The fast kernels split each layer across numba's threads and call OpenBLAS once per
        # block: OpenBLAS must not start threads of its own inside them (kernels/_blas.py).
        with contextlib.nullcontext() if self.oracle else one_thread():
            for node, step in zip(self.graph.nodes, self.steps):
                step()
                if intermediates:  # a copy: a later node may reuse this buffer
                    seen[node.name] = self.values[node.name].copy()
        return seen if intermediates else self.values[self.graph.output].copy()


def _tensors(node, params):
    """A node's weight tensors by parameter name (w, b, gamma, ...; an integer node's w_zero,
    multiplier, shift), passed by keyword: every kernel names its tensors as the graph does."""
    return {p: params[f"{node.name}.{p}"] for p in node.params}


def _bind_fast(kernel, node, params, views):
    """The node's fast kernel checked once against the buffers it reads and writes
    (`kernel.check`); returns the step that runs its loops on them (`kernel.run`)."""
    inputs = [views[name] for name in node.inputs]
    shortcut = {"shortcut": inputs.pop()} if node.op in _RESIDUAL and len(inputs) == 2 else {}
    args = kernel.check(*inputs, **_tensors(node, params), **node.attrs, **shortcut, out=views[node.name])
    return functools.partial(kernel.run, *args)


def _bind_oracle(ref, node, params, values, done):
    """A step that runs the node's oracle `ref` on `values` and stores its result there, then
    drops the values in `done` (read for the last time) so memory stays at a few layers."""
    weights = _tensors(node, params)

    def step():
        values[node.name] = np.asarray(ref(*[values[name] for name in node.inputs], **weights, **node.attrs))
        for name in done:
            del values[name]
    return step


def _last_use(nodes):
    """value name -> index of the last node that reads it."""
    return {name: i for i, node in enumerate(nodes) for name in node.inputs}


def _lay_out(graph, batch, dtypes=None):
    """{value name: view} for "input" and every node (float32, or dtypes[name]), the node views
    sharing a few flat byte buffers. A buffer is handed to a new node as soon as no later node
    reads the value it holds (liveness, as a register allocator does), and never to a node that
    reads it, so a kernel's output never overlaps its input. For MobileNetV2 at batch 1 that is
    three buffers instead of one allocation per layer per call."""
    def dtype(name):
        return np.dtype(np.float32 if dtypes is None else dtypes[name])
    last_use = _last_use(graph.nodes)
    sizes, free, slots = [], [], {}
    for i, node in enumerate(graph.nodes):
        size = batch * int(np.prod(node.shape)) * dtype(node.name).itemsize
        slots[node.name] = (_take_buffer(sizes, free, size), size, (batch, *node.shape))
        # Values read for the last time by this node free their buffer for later nodes
        # (not for this one: it is still reading them).
        free += [slots[name][0] for name in set(node.inputs) if last_use.get(name) == i and name in slots]
        if node.name not in last_use and node.name != graph.output:
            free.append(slots[node.name][0])
    # The caller's batch is copied into a buffer of its own (the last), so that every step can be
    # bound once to the buffers it reads and writes.
    sizes.append(batch * int(np.prod(graph.input_shape)) * dtype("input").itemsize)
    # Each buffer starts at its own offset in a 4 KiB page, 64-byte aligned (page_buffer says why:
    # numpy's buffers sat 112-128 bytes apart modulo 4 KiB and a depthwise layer ran 10-25% slower).
    buffers = [page_buffer(size, k * PAGE // len(sizes) // 64 * 64) for k, size in enumerate(sizes)]
    views = {name: buffers[buf][:size].view(dtype(name)).reshape(shape) for name, (buf, size, shape) in slots.items()}
    views["input"] = buffers[-1].view(dtype("input")).reshape((batch, *graph.input_shape))
    return views


def _take_buffer(sizes, free, size):
    """The index of a buffer for `size` bytes: the smallest free one that fits, else the largest
    free one grown to fit, else a new one."""
    fits = [b for b in free if sizes[b] >= size]
    if fits:
        buf = min(fits, key=lambda b: sizes[b])
    elif free:
        buf = max(free, key=lambda b: sizes[b])
        sizes[buf] = size
    else:
        sizes.append(size)
        return len(sizes) - 1
    free.remove(buf)
    return buf


# --- the fused graph ----------------------------------------------------------------------

def _readers(nodes):
    """value name -> the nodes that read it."""
    users = {}
    for node in nodes:
        for name in node.inputs:
            users.setdefault(name, []).append(node)
    return users


def _fold_pads(nodes, output):
    """A zero_pad read only by a convolution becomes that convolution's own padding."""
    users = _readers(nodes)
    pads = {}  # conv name -> the zero_pad node it absorbs
    for node in nodes:
        readers = users.get(node.name, [])
        if node.op == "zero_pad" and node.name != output and len(readers) == 1 and readers[0].op in _PADDED:
            pads[readers[0].name] = node
    absorbed = {zp.name for zp in pads.values()}
    out = []
    for node in nodes:
        if node.name in absorbed:
            continue
        if node.name in pads:
            zp = pads[node.name]
            pad = tuple(a + b for a, b in zip(zp.attrs["pad"], node.attrs.get("pad", (0, 0, 0, 0))))
            node = node._replace(inputs=zp.inputs, attrs={**node.attrs, "pad": pad})
        out.append(node)
    return out


def fuse(graph, params):
    """The fast engine's graph: zero padding folded into the convolution after it, BN folded into
    the linear layer before it, a clamp (ReLU6) fused into the kernel, a residual add into a
    pointwise convolution (`_fuse_residual`), then a depthwise and a pointwise convolution into
    one separable convolution (`_fuse_separable`). Returns the pair (fused graph, its params);
    neither input is modified."""
    nodes = _fold_pads(graph.nodes, graph.output)
    users = _readers(nodes)

    def only_reader(node, op):
        readers = users.get(node.name, [])
        if len(readers) == 1 and readers[0].op == op and node.name != graph.output:
            return readers[0]
        return None

    fused, new_params, absorbed = [], {}, set()
    for node in nodes:
        if node.name in absorbed:
            continue
        if node.op not in LINEAR_OPS:
            fused.append(node)
            new_params.update({f"{node.name}.{p}": params[f"{node.name}.{p}"] for p in node.params})
            continue
        w, b = params[f"{node.name}.w"], params.get(f"{node.name}.b")
        attrs, tail = dict(node.attrs), node
        if bn := only_reader(tail, "batchnorm"):
            stats = (params[f"{bn.name}.{p}"] for p in ("gamma", "beta", "mean", "var"))
            w, b = fold_batchnorm(w, b, *stats, eps=bn.attrs["eps"])
            absorbed.add(bn.name)
            tail = bn
        if (clamp := only_reader(tail, "clamp")) and "clamp" not in attrs:
            attrs["clamp"] = (clamp.attrs["lo"], clamp.attrs["hi"])
            absorbed.add(clamp.name)
            tail = clamp
        inputs = node.inputs
        if node.op in _RESIDUAL and (add := _fuse_residual(only_reader(tail, "add"), tail, nodes, node)):
            absorbed.add(add.name)
            inputs, tail = node.inputs + tuple(n for n in add.inputs if n != tail.name), add
        fused.append(_linear_node(node._replace(inputs=inputs), tail.name, attrs, w, b, new_params, tail.shape))
    return Graph(_fuse_separable(fused, new_params, graph), graph.input_shape, graph.config), new_params


def _separable_pairs(nodes, params, graph):
    """{pointwise node name: the depthwise node before it} for each fused 3x3 depthwise node (one
    filter per channel) whose only reader is a pointwise node, which reads it as its first input,
    where the fused kernel pays (`separable.pays`, for one image)."""
    users, shapes = _readers(nodes), {"input": graph.input_shape, **{n.name: n.shape for n in nodes}}
    pairs = {}
    for node in nodes:
        readers = users.get(node.name, [])
        if (node.op == "depthwise_conv2d" and node.name != graph.output and len(readers) == 1
                and readers[0].op == "pointwise_conv2d" and readers[0].inputs[0] == node.name
                and params[f"{node.name}.w"].shape == (3, 3, shapes[node.inputs[0]][-1])
                and separable.pays(node.shape[0] * node.shape[1], node.shape[2], readers[0].shape[2])):
            pairs[readers[0].name] = node
    return pairs


def _fuse_separable(nodes, params, graph):
    """Each depthwise + pointwise pair (`_separable_pairs`) as one separable_conv2d node, in the
    pointwise node's place and with its name (kernels/separable.py: the depthwise output never
    goes to memory, so it is no longer a value of the plan). Updates params in place."""
    pairs = _separable_pairs(nodes, params, graph)
    absorbed = {dw.name for dw in pairs.values()}
    out = []
    for node in nodes:
        if node.name in absorbed:
            continue
        dw = pairs.get(node.name)
        if dw is None:
            out.append(node)
            continue
        w_dw, b_dw = params.pop(f"{dw.name}.w"), params.pop(f"{dw.name}.b", None)
        params[f"{node.name}.w_dw"] = w_dw
        params[f"{node.name}.b_dw"] = np.zeros(w_dw.shape[-1], np.float32) if b_dw is None else b_dw
        attrs = {"stride": dw.attrs.get("stride", 1), "pad": dw.attrs.get("pad", (0, 0, 0, 0)),
                 "clamp_dw": dw.attrs.get("clamp"), "clamp": node.attrs.get("clamp")}
        node_params = {"w_dw": w_dw.shape, "b_dw": (w_dw.shape[-1],), **node.params}
        out.append(Node("separable_conv2d", node.name, dw.inputs + node.inputs[1:], attrs, node_params, node.shape))
    return out


def _fuse_residual(add, tail, nodes, node):
    """`add` when it can run in the epilogue of `node` (whose value, after its BN and clamp, is
    `tail`): its other input must exist before `node` runs, where the fused node will."""
    if add is None:
        return None
    other = next(n for n in add.inputs if n != tail.name)
    before = {"input"} | {n.name for n in nodes[:nodes.index(node)]}
    return add if other in before else None


def _linear_node(node, name, attrs, w, b, new_params, shape):
    """The fused linear node named `name`, its float32 weights stored into new_params (a matrix
    product's w laid out as the product reads it, kernels._product.padded_rows)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    new_params[f"{name}.w"] = padded_rows(w) if node.op in _ROWS else w
    node_params = {"w": w.shape}
    if b is not None:
        node_params["b"] = (w.shape[-1],)
        new_params[f"{name}.b"] = np.ascontiguousarray(b, dtype=np.float32)
    return Node(node.op, name, node.inputs, attrs, node_params, shape)
