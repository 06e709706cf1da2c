"""Small weight files crafted in the tests (no binary blobs): a tiny native .npz whose metadata a
test can edit, a tiny ONNX graph, and zip/PNG helpers. Used by test_hardening.py, the fuzz tests
and scripts/fuzz.py."""

import copy
import io
import json
import struct
import zipfile
import zlib

import numpy as np

from npmobile.config import Config
from npmobile.graph import Builder, Graph, graph_to_json, pad_symmetric
from npmobile.weights import FORMAT, META_KEY, VERSION


def tiny_graph(resolution=8):
    """conv 3x3 -> BN -> ReLU6 -> depthwise 3x3 stride 2 -> pool -> dense -> softmax (3 classes)."""
    b = Builder((resolution, resolution, 3))
    b.conv2d("c", 4, 3, 1, pad_symmetric)
    b.batchnorm("bn", 1e-3)
    b.relu6("r")
    b.depthwise("dw", 3, 2, pad_symmetric)
    b.pool("pool", "avg")
    b.dense("fc", 3)
    b.softmax("sm")
    config = Config(arch="tiny", resolution=resolution, classes=3, output="probabilities", convention="torch")
    return Graph(b.nodes, (resolution, resolution, 3), config)


def tiny_params(graph, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in graph.param_shapes().items()}
    for k in params:
        if k.endswith(".var"):
            params[k] = np.abs(params[k]) + 0.5
    return params


def tiny_meta(resolution=8, labels=("a", "b", "c")):
    graph = tiny_graph(resolution)
    return {"format": FORMAT, "version": VERSION, "config": copy.deepcopy(graph.config.to_json()),
            "graph": graph_to_json(graph), "labels": list(labels) if labels is not None else None}


def node(meta, name):
    return next(n for n in meta["graph"]["nodes"] if n["name"] == name)


def npz_bytes(meta, params, meta_text=None, compress=False):
    """A native file's bytes, written as np.savez does but from any metadata (valid or not)."""
    text = meta_text if meta_text is not None else json.dumps(meta)
    arrays = dict(params, **{META_KEY: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)})
    f = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(f, **arrays)
    return f.getvalue()


def write_native(path, meta=None, params=None, **kwargs):
    meta = tiny_meta() if meta is None else meta
    params = tiny_params(tiny_graph()) if params is None else params
    path.write_bytes(npz_bytes(meta, params, **kwargs))
    return path


def npy_bytes(a):
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def zip_bytes(members, method=zipfile.ZIP_DEFLATED):
    """A zip of {name: bytes}."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return f.getvalue()


def set_zip_method(data, method):
    """Rewrite the compression method of every member (local and central headers)."""
    data = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.find(sig)
        while at >= 0:
            struct.pack_into("<H", data, at + offset, method)
            at = data.find(sig, at + 4)
    return bytes(data)


def png_header(width, height, bit_depth=16, color_type=0):
    """A PNG whose header claims width x height pixels, with one tiny (wrong) IDAT: Pillow
    reads the size from the header without decoding."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tiny_onnx(conv_attrs=None, extra_nodes=(), pad=True):
    """An ONNX model: input (1, 3, 8, 8) -> [Pad 1] -> Relu -> depthwise Conv 3x3 (group 3) ->
    GlobalAveragePool -> Flatten; `extra_nodes` (with their initializers) are added before."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad")] if pad else []
    nodes += [helper.make_node("Relu", ["p" if pad else "x"], ["r"], name="relu"),
              helper.make_node("Conv", ["r", "w"], ["c"], name="dwconv", group=3,
                               **(conv_attrs or {"kernel_shape": [3, 3]})),
              helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    extra_inits = []
    for n, tensors in extra_nodes:
        nodes.insert(0, n)
        extra_inits += [numpy_helper.from_array(a, k) for k, a in tensors.items()]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits + extra_inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def pt2_bytes(state_dict, edit=None, archive="tiny", method=zipfile.ZIP_STORED):
    """A torch.export archive (.pt2) as torch.export.save lays out its weights: each tensor's raw
    bytes in <archive>/data/weights/weight_N, described in model_weights_config.json;
    edit(config, members) may change either before they are written."""
    config, members = {}, {f"{archive}/byteorder": b"little", f"{archive}/archive_version": b"0"}
    codes = {np.dtype(np.float32): 7, np.dtype(np.int64): 5}
    for i, (key, a) in enumerate(state_dict.items()):
        a = np.ascontiguousarray(a)
        strides = [s // a.itemsize for s in a.strides]
        config[key] = {"path_name": f"weight_{i}", "is_param": True, "use_pickle": False,
                       "tensor_meta": {"dtype": codes[a.dtype], "sizes": [{"as_int": n} for n in a.shape],
                                       "strides": [{"as_int": s} for s in strides],
                                       "storage_offset": {"as_int": 0}, "layout": 7}}
        members[f"{archive}/data/weights/weight_{i}"] = a.tobytes()
    doc = {"config": config}
    if edit is not None:
        edit(doc, members)
    name = f"{archive}/data/weights/model_weights_config.json"
    members[name] = members.get(name) or json.dumps(doc).encode()
    return zip_bytes(members, method)


def tiny_torchvision_state_dict(alpha=0.35, classes=10, seed=0):
    """A torchvision mobilenet_v2 state_dict (numpy arrays, torch's names and layouts) with random
    weights, made from npmobile's own graph of it."""
    from npmobile.architectures import mobilenet_v2
    from npmobile.io._common import to_torch
    from npmobile.io.torchvision import _BN, _LINEAR, _MODULES
    graph = mobilenet_v2(alpha, 224, classes, convention="torch")
    params, nodes = tiny_params(graph, seed), {n.name: n for n in graph.nodes}
    sd = {}
    for module, name in _MODULES.items():
        node = nodes[name]
        names = _BN if node.op == "batchnorm" else _LINEAR
        for torch_name, p in names.items():
            if f"{name}.{p}" in params:
                sd[f"{module}.{torch_name}"] = to_torch(node.op, params[f"{name}.{p}"])
    return sd
