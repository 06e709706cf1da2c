"""MACs and parameters, counted from the graph that runs.

One loop over `graph.nodes`, the same list the engine runs: each node's multiply-accumulates come
from its op, its weight shapes (`node.params`), its output shape (`node.shape`) and the shape of
the value it reads. Nothing is re-derived from the papers' tables, so a graph imported from ONNX
or TFLite is counted as it is, and the fused graph the fast engine runs counts the same MACs as
the graph as built (its BN and ReLU6 nodes are gone, their arithmetic is free by convention).

MACs per op, for one sample (the papers' "Mult-Adds"; FLOPs = 2 * MACs):

| op                 | MACs                                    | paper          |
|--------------------|-----------------------------------------|----------------|
| `conv2d`           | h_out * w_out * k_h * k_w * c_in * c_out | D_K²·M·N·D_F²  |
| `depthwise_conv2d` | h_out * w_out * k_h * k_w * c_out       | D_K²·M·D_F²    |
| `pointwise_conv2d` | h * w * c_in * c_out                    | M·N·D_F²       |
| `dense`            | c_in * c_out                            | FC             |
| anything else      | 0 (batch norm, ReLU6, add, pool, pad, softmax: the papers count none) |

Parameters are split by kind, because each publisher counts a different subset:
`weights` (conv and dense kernels), `biases`, `bn_scale` and `bn_shift` (BN gamma and beta,
trainable) and `bn_stats` (BN moving mean and variance: Keras counts them as non-trainable
parameters, torchvision keeps them as buffers outside `parameters()`). docs/cost.md says which
subset reproduces which published figure.
"""

from dataclasses import dataclass, field

from .graph import LINEAR_OPS

PARAM_KINDS = ("weights", "biases", "bn_scale", "bn_shift", "bn_stats")
_KIND = {"w": "weights", "b": "biases", "gamma": "bn_scale", "beta": "bn_shift",
         "mean": "bn_stats", "var": "bn_stats", "w_dw": "weights", "b_dw": "biases"}


# --- the counting rules, one per linear op (the separable benchmark uses these too) ----------

def conv2d_macs(h_out, w_out, k_h, k_w, c_in, c_out):
    """Standard convolution: every output value reads k_h * k_w * c_in inputs."""
    return h_out * w_out * k_h * k_w * c_in * c_out


def depthwise_macs(h_out, w_out, k_h, k_w, c_out):
    """Depthwise convolution: every output value reads k_h * k_w values of one channel."""
    return h_out * w_out * k_h * k_w * c_out


def pointwise_macs(h, w, c_in, c_out):
    """1x1 convolution: every output value reads the c_in channels of one pixel."""
    return h * w * c_in * c_out


def dense_macs(c_in, c_out):
    return c_in * c_out


def node_macs(node, input_shape):
    """MACs of one node for one sample, from its weight shapes and its input and output shapes."""
    op, shape = node.op, tuple(node.shape)
    if op == "separable_conv2d":  # the fused graph's depthwise + pointwise pair (engine.fuse): both counts
        t_shape = shape[:2] + tuple(node.params.get("w_dw", (0,)))[-1:]
        return (node_macs(node._replace(op="depthwise_conv2d", params={"w": node.params.get("w_dw", ())},
                                        shape=t_shape), input_shape)
                + node_macs(node._replace(op="pointwise_conv2d"), t_shape))
    if op not in LINEAR_OPS:
        return 0
    w = tuple(node.params.get("w", ()))
    expected_ndim = {"conv2d": 4, "depthwise_conv2d": 3, "pointwise_conv2d": 2, "dense": 2}[op]
    if len(w) != expected_ndim:
        raise ValueError(f"node {node.name!r} ({op}): expected a {expected_ndim}-d weight 'w', found shape {w or None}")
    # The weight must fit the value the node reads: a graph that would not run is not counted.
    c_in = input_shape[-1]
    fits = w[-1] % c_in == 0 if op == "depthwise_conv2d" else w[-2] == c_in
    if not fits:
        raise ValueError(f"node {node.name!r} ({op}): weight of shape {w} does not fit its input "
                         f"of shape {tuple(input_shape)} ({c_in} channels)")
    if op == "conv2d":
        return conv2d_macs(shape[0], shape[1], w[0], w[1], w[2], w[3])
    if op == "depthwise_conv2d":
        return depthwise_macs(shape[0], shape[1], w[0], w[1], w[2])
    if op == "pointwise_conv2d":
        return pointwise_macs(shape[0], shape[1], w[0], w[1])
    return dense_macs(w[0], w[1])


def node_params(node):
    """{kind: count} of one node's tensors (kinds in PARAM_KINDS)."""
    counts = dict.fromkeys(PARAM_KINDS, 0)
    for p, s in node.params.items():
        if p not in _KIND:
            raise ValueError(f"node {node.name!r} ({node.op}): unknown parameter {p!r}; expected one of {sorted(_KIND)}")
        n = 1
        for d in s:
            n *= int(d)
        counts[_KIND[p]] += n
    return counts


# --- the whole graph -------------------------------------------------------------------------

@dataclass
class LayerCost:
    name: str
    op: str
    input_shape: tuple   # of the first input (an `add` reads two values of this same shape)
    output_shape: tuple
    macs: int
    params: dict         # {kind: count}

    @property
    def n_params(self):
        return sum(self.params.values())


@dataclass
class Cost:
    layers: list
    config: dict = field(default_factory=dict)  # the graph's Config as JSON

    @property
    def macs(self):
        return sum(layer.macs for layer in self.layers)

    @property
    def params_by_kind(self):
        return {k: sum(layer.params[k] for layer in self.layers) for k in PARAM_KINDS}

    def params(self, *kinds):
        """Parameters of the given kinds (all kinds when none are given)."""
        kinds = kinds or PARAM_KINDS
        unknown = set(kinds) - set(PARAM_KINDS)
        if unknown:
            raise ValueError(f"parameter kinds: expected some of {PARAM_KINDS}, found {sorted(unknown)}")
        by_kind = self.params_by_kind
        return sum(by_kind[k] for k in kinds)

    def by_op(self):
        """{op: (macs, params)} summed over the layers of each op, in first-seen order."""
        out = {}
        for layer in self.layers:
            macs, params = out.get(layer.op, (0, 0))
            out[layer.op] = (macs + layer.macs, params + layer.n_params)
        return out

    def to_json(self):
        """What `npmobile summary --json` writes: totals first, then one entry per layer."""
        return {
            "macs": self.macs,
            "params": self.params(),
            "params_by_kind": self.params_by_kind,
            "config": self.config,
            "layers": [{"name": layer.name, "op": layer.op, "input_shape": list(layer.input_shape),
                        "output_shape": list(layer.output_shape), "macs": layer.macs,
                        "params": layer.n_params, "params_by_kind": layer.params}
                       for layer in self.layers],
        }


def count(graph):
    """The cost of every node of `graph`, for one sample."""
    shapes = {"input": tuple(graph.input_shape)}
    layers = []
    for node in graph.nodes:
        try:
            input_shape = shapes[node.inputs[0]]
        except (KeyError, IndexError):
            raise ValueError(f"node {node.name!r} reads {node.inputs!r}, which no earlier node produces") from None
        layers.append(LayerCost(node.name, node.op, input_shape, tuple(node.shape),
                                node_macs(node, input_shape), node_params(node)))
        shapes[node.name] = tuple(node.shape)
    return Cost(layers, graph.config.to_json() if graph.config else {})


def format_table(cost, title=None):
    """A Keras-like model.summary() with a MACs column, as a string."""
    def shp(s):
        return str(tuple(s))

    name_w = max([len("Layer (op)")] + [len(f"{l.name} ({l.op})") for l in cost.layers])
    header = f"{'Layer (op)':<{name_w}}  {'Input':>16}  {'Output':>16}  {'MACs':>13}  {'Params':>10}"
    rule = "=" * len(header)
    lines = [title] if title else []
    lines += [rule, header, rule]
    for l in cost.layers:
        lines.append(f"{l.name + ' (' + l.op + ')':<{name_w}}  {shp(l.input_shape):>16}  {shp(l.output_shape):>16}  "
                     f"{l.macs:>13,}  {l.n_params:>10,}")
    by_kind = cost.params_by_kind
    lines += [rule,
              f"Total MACs: {cost.macs:,} ({cost.macs / 1e6:.1f} M; FLOPs = 2 x MACs)",
              f"Total params: {cost.params():,} ({cost.params() / 1e6:.2f} M)",
              f"  weights: {by_kind['weights']:,}   biases: {by_kind['biases']:,}   "
              f"BN gamma: {by_kind['bn_scale']:,}   BN beta: {by_kind['bn_shift']:,}   "
              f"BN mean/var: {by_kind['bn_stats']:,}",
              f"  trainable (Keras): {cost.params('weights', 'biases', 'bn_scale', 'bn_shift'):,}   "
              f"non-trainable (BN mean/var): {by_kind['bn_stats']:,}",
              rule]
    return "\n".join(lines)
