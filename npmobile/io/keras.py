"""Keras MobileNet (V1) and MobileNetV2 -> Model, without Keras installed.

Three sources, one path. Each reader collects, from what Keras wrote:
- `weights`: {layer name: [(weight name or None, array), ...]} in Keras' get_weights() order;
- `layers`: {layer name: (class name or None, layer config)} for every layer it can name;
- the model's name and input size, when the file records them.
`_import` then infers the architecture, builds the graph with convention="keras" (the graph's
node names are Keras' layer names) and puts each tensor into the graph's layout.

The files Keras writes:
- legacy HDF5 (`model.save("x.h5")`, Keras 2 and 3): model_weights/<layer>/<layer>/<weight>, the
  weights of a layer listed in its "weight_names" attribute, the model as JSON in "model_config";
  Keras 2's save_weights("x.h5") is the same without the model_weights level or the JSON;
- Keras 3 weights (`save_weights("x.weights.h5")`, and model.weights.h5 inside a `.keras` zip
  beside config.json): layers/<auto name>/vars/<0, 1, ...>, positional, where the auto name is
  the snake-cased class name made unique in model.layers order (conv2d, conv2d_1, ...); recent
  Keras also stores the layer's real name as an attribute of the vars group.
"""

import io
import json
import math
import re
import zipfile

import numpy as np

from ..architectures import mobilenet_v1, mobilenet_v2
from ..errors import WeightFileError, needs, reading
from ..graph import Imported, Node
from ..validate import expect, load_json, max_weight_bytes
from . import _hdf5
from ._common import read_member
from ._widths import fit_alpha

# Keras' weight names -> the graph's parameter names.
_PARAM = {"kernel": "w", "depthwise_kernel": "w", "bias": "b", "gamma": "gamma", "beta": "beta",
          "moving_mean": "mean", "moving_variance": "var"}

# What marks each architecture, its head (None without top) and the layer whose width gives alpha.
_ARCH = {
    "mobilenet_v1": dict(marker="conv_dw_1", head="conv_preds", activation="predictions",
                         widest=("conv_pw_13", 1024), build=mobilenet_v1),
    "mobilenet_v2": dict(marker="expanded_conv_depthwise", head="predictions", activation="predictions",
                         widest=("block_16_project", 320), build=mobilenet_v2),
}
MAX_CONFIG_BYTES = 16 << 20  # a .keras zip's config.json
_NAME = re.compile(r"^mobilenet(?:v2)?_(\d+\.\d+)_(\d+)$")  # keras.applications' model names


def _h5py():
    with needs("h5py", "reading Keras .h5 and .keras files", "keras"):
        import h5py
    return h5py


def _strings(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def _short(weight_name):
    """'conv1/kernel:0' (Keras 2), 'conv1/kernel' (Keras 3 .h5), 'kernel' (Keras 3) -> 'kernel'."""
    return weight_name.split("/")[-1].split(":")[0]


def _snake(class_name):
    """keras.src.utils.naming.to_snake_case, which names the groups of a Keras 3 weights file."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _parse_config(model_config):
    """A Functional model's JSON (bytes, str or already parsed) as a dict, checked by shape and
    depth (untrusted input: a list, a string or 100k nested lists must not crash the reader)."""
    if model_config is None:
        return {}
    if isinstance(model_config, (bytes, str)):
        model_config = load_json(model_config, "model_config", "the model config")
    config = expect(model_config, dict, "model_config", "the model config")
    inner = expect(config.get("config", {}), dict, "model_config", "its 'config'")
    layers = expect(inner.get("layers", []), list, "model_config", "its 'layers'")
    for layer in layers:
        expect(layer, dict, "model_config", "each layer")
        expect(layer.get("config", {}), dict, "model_config", f"layer {str(layer.get('name'))[:80]!r}'s config")
    return config


def _config_layers(config):
    """{layer name: (class name, config)} in model order, from a _parse_config dict."""
    layers = {}
    for layer in config.get("config", {}).get("layers", []):
        cfg = layer.get("config", {})
        layers[str(layer.get("name", cfg.get("name")))] = (layer.get("class_name"), cfg)
        inner = cfg.get("layers") if isinstance(cfg, dict) else None
        if isinstance(inner, list) and all(isinstance(i, dict) and isinstance(i.get("config", {}), dict) for i in inner):
            layers.update(_config_layers(layer))  # a nested model (a fine-tuned classifier's base): its layers too
    return layers


def _model_name(config):
    name = config.get("config", {}).get("name")
    return name if isinstance(name, str) else None


def _input_hw(layers):
    for cls, cfg in layers.values():
        if cls == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if isinstance(shape, list) and len(shape) == 4 and \
                    all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape[1:3]):
                return tuple(shape[1:3])
    return None


MAX_ATTR_BYTES = 16 << 20  # an HDF5 attribute: the model's JSON, the names of its layers


def _attr(raw, obj, name, default=None):
    """An HDF5 attribute, refused when its dataspace declares more than MAX_ATTR_BYTES (a flipped
    byte in a dimension would otherwise make h5py allocate gigabytes to read it), and, for
    variable-length strings, when the lengths stored in the file (raw, a _hdf5.RawFile) add up to
    more: libhdf5 allocates each string from its stored length before it checks it."""
    if name not in obj.attrs:
        return default
    aid = obj.attrs.get_id(name)
    size = math.prod(aid.shape or ()) * aid.dtype.itemsize
    if size > MAX_ATTR_BYTES:
        raise WeightFileError(f"attribute {name!r} of {obj.name}: declares {size:,} bytes, above {MAX_ATTR_BYTES:,}")
    if aid.dtype.hasobject:
        _check_vlen(raw, obj, name, aid.dtype)
    return obj.attrs[name]


def _check_vlen(raw, obj, name, dtype):
    """Refuse a variable-length attribute whose stored lengths add up to over MAX_ATTR_BYTES, or
    whose lengths cannot be read from the file before libhdf5 reads them."""
    from h5py import check_string_dtype, check_vlen_dtype, h5o
    where = f"attribute {name!r} of {obj.name}"
    string = check_string_dtype(dtype)
    if dtype.kind != "O" or not ((string and string.length is None) or check_vlen_dtype(dtype) is not None):
        raise WeightFileError(f"{where}: expected numbers or strings, found the HDF5 type {dtype}")
    try:
        declared = max(_hdf5.vlen_bytes(raw, h5o.get_info(obj.id).addr, name))
    except _hdf5.Unmeasurable as e:
        raise WeightFileError(f"{where}: variable-length values whose sizes cannot be checked before they are "
                              f"read ({e})") from None
    if declared > MAX_ATTR_BYTES:
        raise WeightFileError(f"{where}: its variable-length values declare {declared:,} bytes, above "
                              f"{MAX_ATTR_BYTES:,}")


class _Budget:
    """Reads HDF5 datasets as arrays within max_weight_bytes() in all: a dataset's dataspace
    can declare gigabytes that a few bytes of compressed chunks (or none: the fill value) back."""

    def __init__(self):
        self.left = max_weight_bytes()

    def read(self, ds, name):
        import h5py
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
            raise WeightFileError(f"{name}: expected a dataset of numbers, found {getattr(ds, 'dtype', type(ds).__name__)}")
        size = int(ds.size or 0) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        if size > self.left or size > 1100 * stored + 4096:  # deflate inflates at most ~1032-fold
            raise WeightFileError(f"{name}: declares {size:,} bytes backed by {stored:,} stored; refused "
                                  f"(at most {self.left:,} more bytes of weights, $NPMOBILE_MAX_WEIGHT_BYTES)")
        # libhdf5 inflates a whole chunk to read any of it: a 1-value dataset in one 1 GiB chunk
        # of deflated zeros (1 MB in the file) would take 1 GiB.
        chunk = math.prod(ds.chunks) * ds.dtype.itemsize if ds.chunks else 0
        if chunk > max(size, 1 << 20):
            raise WeightFileError(f"{name}: stored in chunks of {chunk:,} bytes for {size:,} bytes of data; refused")
        self.left -= size
        return np.asarray(ds)


# --- readers ----------------------------------------------------------------------------------

def _read_legacy(root, raw):
    """model_weights/<layer>/<layer>/<weight> (or the same at the root, Keras 2 save_weights)."""
    weights, names, budget = {}, _strings(_attr(raw, root, "layer_names")), _Budget()
    for name in names:
        group = root[name]
        for w in _strings(_attr(raw, group, "weight_names", [])):
            # "<layer>/<weight>": a nested model's group holds the weights of all its layers
            parts = w.split(":")[0].split("/")
            layer = parts[-2] if len(parts) > 1 and parts[-2] in group else name
            weights.setdefault(layer, []).append((_short(w), budget.read(group[w], f"{name}/{w}")))
    return weights, names


def _read_vars(f, layers, raw, budget=None):
    """layers/<auto name>/vars/<i>: the real layer name from the vars group's "name" attribute,
    else from the model config by Keras' own rule (snake-cased class name, unique in order)."""
    auto, used = {}, {}
    for name, (cls, _) in layers.items():
        base = _snake(cls or "")
        auto[f"{base}_{used[base]}" if base in used else base] = name
        used[base] = used.get(base, 0) + 1
    weights, names, budget = {}, [], budget or _Budget()
    for key, group in f["layers"].items():
        if "layers" in group:  # a nested model (a fine-tuned classifier's base), within the same budget
            inner_weights, inner_names = _read_vars(group, {}, raw, budget)
            weights.update(inner_weights)
            names += inner_names
            continue
        variables = group.get("vars")
        name = _attr(raw, variables, "name") if variables is not None else None
        name = name.decode() if isinstance(name, bytes) else name
        name = name or auto.get(key)
        if name is None:
            raise WeightFileError(f"group layers/{key} carries no layer name, and there is no model config "
                                  "to name it (load the .keras file instead)")
        names.append(name)
        if variables is not None and len(variables):
            order = sorted(variables, key=int)
            weights[name] = [(None, budget.read(variables[i], f"layers/{key}/vars/{i}")) for i in order]
    return weights, names


def _read_h5(f, layers, raw):
    if "layers" in f and "model_weights" not in f and "layer_names" not in f.attrs:
        return _read_vars(f, layers, raw)
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise WeightFileError(f"not a Keras weights file: no 'layer_names' attribute and no 'layers' group "
                              f"(found top-level entries {list(f)[:10]})")
    return _read_legacy(root, raw)


_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile)


def load_h5(path, **options):
    """A Keras .h5 file (legacy model or weights, or Keras 3 .weights.h5) as a Model.
    options: alpha=, resolution= override what the file says or what is inferred."""
    h5py = _h5py()
    with reading(path, "Keras HDF5 file", _READ_ERRORS), h5py.File(path, "r") as f, _hdf5.RawFile(path) as raw:
        config = _parse_config(_attr(raw, f, "model_config"))
        layers = _config_layers(config)
        weights, names = _read_h5(f, layers, raw)
        name = _model_name(config)
    return _checked_import(str(path), weights, layers, names, name, _input_hw(layers), **options)


def load_keras_zip(path, **options):
    """A Keras 3 .keras file (a zip of config.json and model.weights.h5) as a Model, read in memory."""
    h5py = _h5py()
    with reading(path, ".keras file", (*_READ_ERRORS, json.JSONDecodeError, UnicodeDecodeError)):
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            if "config.json" not in members or "model.weights.h5" not in members:
                raise WeightFileError(f"expected config.json and model.weights.h5 in the .keras zip, found {members}")
            config = _parse_config(read_member(z, "config.json", MAX_CONFIG_BYTES, "the .keras zip"))
            blob = read_member(z, "model.weights.h5", max_weight_bytes() + (64 << 20), "the .keras zip")
        layers = _config_layers(config)
        with h5py.File(io.BytesIO(blob), "r") as f:
            weights, names = _read_h5(f, layers, _hdf5.RawFile(blob))
    return _checked_import(str(path), weights, layers, names, _model_name(config), _input_hw(layers), **options)


def from_keras_model(model, **options):
    """An in-memory keras.Model built by keras.applications.MobileNet / MobileNetV2 as a Model."""
    weights, layers = {}, {}
    for layer in model.layers:
        layers[layer.name] = (type(layer).__name__, layer.get_config())
        values = layer.get_weights()
        if values:
            weights[layer.name] = [(_short(w.name), np.asarray(v)) for w, v in zip(layer.weights, values)]
    shape = tuple(model.input_shape)
    hw = shape[1:3] if len(shape) == 4 else None
    return _import(f"<keras model {model.name!r}>", weights, layers, list(layers), model.name, hw, **options)


# --- Keras layers -> graph --------------------------------------------------------------------

def _to_graph_layout(op, a):
    """Keras' layout -> the graph's: depthwise (k, k, c, m) -> (k, k, c*m), whose channel c*m + j
    is input channel c's j-th filter in both; 1x1 kernels (1, 1, ci, co) -> (ci, co). Anything
    else stays as found, so check_params reports its shape."""
    if op == "depthwise_conv2d" and a.ndim == 4:
        return a.reshape(a.shape[0], a.shape[1], -1)
    if op in ("pointwise_conv2d", "dense") and a.ndim == 4 and a.shape[:2] == (1, 1):
        return a.reshape(a.shape[2:])
    return a


def _params(graph, weights):
    """{"{node}.{param}": array}: by weight name when Keras recorded it, else by position in the
    node's parameter order (which is Keras' own: kernel, bias; gamma, beta, mean, variance).
    A tensor with no place in the graph keeps a key naming its layer, so it shows as unexpected."""
    nodes = {n.name: n for n in graph.nodes}
    params = {}
    for layer, arrays in weights.items():
        node = nodes.get(layer)
        order = list(node.params) if node else []
        for i, (wname, a) in enumerate(arrays):
            p = _PARAM.get(wname) if wname else (order[i] if i < len(order) else None)
            if node is None or p is None:
                params[f"{layer}.{wname or i}"] = a
            else:
                params[f"{layer}.{p}"] = _to_graph_layout(node.op, a)
    return params


def _activation_of(cfg):
    act = cfg.get("activation", "softmax")
    act = act.get("class_name", act) if isinstance(act, dict) else act
    return "linear" if act is None else act


def _head_activation(layers, name):
    """The classifier's activation: that of layer `name` (keras.applications' head), and a
    linear head followed by a softmax layer (a fine-tuned Dense + Activation) counts as softmax."""
    cls, cfg = layers.get(name, (None, {}))
    act = _activation_of(cfg) if cls in ("Activation", "Dense") else "softmax"
    if act == "linear" and cls == "Dense" and any(c == "Softmax" or (c == "Activation" and _activation_of(f) == "softmax")
                                                  for c, f in layers.values()):
        return "softmax"
    return act


def _fine_tuned_head(weights, layers, spec, source):
    """A fine-tuned classifier (base with include_top=False, pooling, Dropout, one Dense(k)): its
    Dense's weights are moved to the graph's head node and its activation recorded under the
    graph's activation layer. Dropout is the identity at inference and has no weights."""
    dense = [name for name, arrays in weights.items() if arrays[0][1].ndim == 2 and name != spec["head"]]
    if not dense:
        return
    if len(dense) > 1 or spec["head"] in weights:
        raise WeightFileError(f"{source}: expected one Dense classifier on the MobileNet base, found Dense layers "
                              f"{dense + [spec['head']] * (spec['head'] in weights)}")
    if any(cls in ("GlobalMaxPooling2D", "MaxPooling2D") for cls, _ in layers.values()):
        raise WeightFileError(f"{source}: a Dense head after max pooling: only average pooling is supported")
    weights[spec["head"]] = weights.pop(dense[0])
    layers[spec["activation"]] = ("Activation", {"activation": _head_activation(layers, dense[0])})


def _with_rescaling(graph, layers, source):
    """A Keras Rescaling layer in front (y = x * scale + offset, preprocessing inside the model)
    becomes a batchnorm node with gamma = scale, beta = offset, mean 0, var 1 - eps; the model
    then takes pixels as they are (preprocess mean 0, std 1). Returns (graph, its params)."""
    found = [cfg for cls, cfg in layers.values() if cls == "Rescaling"]
    if not found:
        return graph, {}
    if len(found) > 1:
        raise WeightFileError(f"{source}: {len(found)} Rescaling layers (only one, in front, is supported)")
    c = graph.input_shape[-1]
    scale = np.broadcast_to(np.asarray(found[0].get("scale", 1.0), np.float32), (c,))
    offset = np.broadcast_to(np.asarray(found[0].get("offset", 0.0), np.float32), (c,))
    eps = 1e-3
    node = Node("batchnorm", "rescaling", ("input",), {"eps": eps}, {p: (c,) for p in ("gamma", "beta", "mean", "var")},
                graph.input_shape)
    nodes = [node] + [n._replace(inputs=tuple("rescaling" if i == "input" else i for i in n.inputs))
                      for n in graph.nodes]
    pre = graph.config.preprocess
    config = graph.config.replace(preprocess=type(pre)(mean=(0.0,) * c, std=(1.0,) * c, crop=pre.crop))
    params = {"rescaling.gamma": scale.copy(), "rescaling.beta": offset.copy(),
              "rescaling.mean": np.zeros(c, np.float32), "rescaling.var": np.full(c, 1 - eps, np.float32)}
    return type(graph)(nodes, graph.input_shape, config), params


def _checked_import(source, *args, **options):
    """_import, with whatever a malformed file trips inside it reported as a WeightFileError."""
    try:
        return _import(source, *args, **options)
    except WeightFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
        raise WeightFileError(f"{source}: not a Keras MobileNet npmobile can build: {type(e).__name__}: {e}") from None


def _import(source, weights, layers, names, model_name, input_hw, *, alpha=None, resolution=None):
    arch = next((a for a, spec in _ARCH.items() if spec["marker"] in weights), None)
    if arch is None:
        raise WeightFileError(f"{source}: not a Keras MobileNet or MobileNetV2: expected a layer named conv_dw_1 "
                              f"(V1) or expanded_conv_depthwise (V2), found layers {sorted(weights)[:12]}")
    spec = _ARCH[arch]
    match = _NAME.match(model_name or "")
    if resolution is None:
        if input_hw and None not in input_hw:
            if input_hw[0] != input_hw[1]:
                raise WeightFileError(f"{source}: expected a square input, found {input_hw[0]}x{input_hw[1]}")
            resolution = int(input_hw[0])
        else:  # input_shape=None in Keras: the name's size, else Keras' default 224
            resolution = int(match.group(2)) if match else 224
    _fine_tuned_head(weights, layers, spec, source)
    include_top = spec["head"] in weights
    classes = weights[spec["head"]][0][1].shape[-1] if include_top else None
    pooling = None
    if not include_top:
        kinds = [cls or name for name, (cls, _) in layers.items()] + list(names)
        pooling = next((p for p, tag in (("avg", "average_pooling"), ("max", "max_pooling"))
                        if any(tag in _snake(k) and "global" in _snake(k) for k in kinds)), None)
    kwargs = dict(resolution=resolution, classes=classes, include_top=include_top, pooling=pooling,
                  convention="keras", output=_output(layers, spec["activation"], source) if include_top else None)
    if arch == "mobilenet_v1":
        dw = weights["conv_dw_1"][0][1]
        kwargs["depth_multiplier"] = int(dw.shape[-1]) if dw.ndim == 4 else 1

    def build(a):
        return spec["build"](a, **kwargs)

    if alpha is not None:
        graph = build(alpha)
    else:
        layer, width = spec["widest"]
        estimate = weights[layer][0][1].shape[-1] / width if layer in weights else 1.0
        params = _params(build(1.0), weights)  # node ops and names do not depend on alpha
        graph = fit_alpha(build, {k: tuple(a.shape) for k, a in params.items()}, arch, estimate,
                          float(match.group(1)) if match else None)
    graph = _with_layer_eps(graph, layers)
    graph, rescaling = _with_rescaling(graph, layers, source)
    return Imported(graph, {**_params(graph, weights), **rescaling}, None, source)


def _with_layer_eps(graph, layers):
    """Each BN's epsilon as the model config records it (Keras' default is the convention's)."""
    nodes = []
    for node in graph.nodes:
        cls, cfg = layers.get(node.name, (None, {}))
        if node.op == "batchnorm" and "epsilon" in cfg:
            eps = cfg["epsilon"]  # validate.check_graph refuses anything but a finite number > 0
            node = node._replace(attrs={**node.attrs, "eps": float(eps) if isinstance(eps, (int, float)) else eps})
        nodes.append(node)
    return type(graph)(nodes, graph.input_shape, graph.config)


def _output(layers, activation_layer, source):
    """"probabilities" for a softmax classifier, "logits" for a linear one (classifier_activation=None
    in keras.applications)."""
    act = _head_activation(layers, activation_layer)
    if act not in ("softmax", "linear"):
        raise WeightFileError(f"{source}: layer {activation_layer!r}: expected a softmax or linear "
                              f"classifier activation, found {act!r}")
    return "probabilities" if act == "softmax" else "logits"
