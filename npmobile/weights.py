"""The native weight file: one .npz, no pickle, that rebuilds the whole model on its own.

Inside the zip: one float32 array per tensor, keyed "{node}.{param}" as in the graph, plus
"__npmobile__", a uint8 array holding JSON: the format version, the graph config (architecture,
alpha, resolution, classes, convention, preprocessing), the graph itself (its node list: a model
imported from ONNX or TFLite keeps its own structure) and the class labels. The reader parses
the .npy headers itself and reads numbers only (an object array, a pickle, is refused), so no
code in the file can run.

Loading validates the graph (validate.check_graph) before it reads any tensor, then checks every
member's header against the graph, naming every missing, extra, mis-shaped or non-float tensor
in one error (pattern: nanoGPT's from_pretrained; safetensors' header checks before any read).

Files written before the config had its `output` field (version 1 has both) keep reading: their
config's "eps" and "softmax" keys are dropped (each BN node has its eps; the last node says
whether the output is softmax probabilities) and `output` is read off the graph.
"""

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from .config import Config
from .errors import WeightFileError
from .graph import Imported, graph_from_json, graph_to_json, tensor_error
from .validate import check_graph, check_model, expect, load_json

FORMAT = "npmobile-weights"
VERSION = 1
META_KEY = "__npmobile__"
MAX_META_BYTES = 16 << 20  # the JSON metadata: a graph of a few hundred nodes and its labels
_NPY_HEADER = 1 << 16  # the .npy header in front of each member's data, at most


def save(path, model):
    """Write `model` as the native file: tensors plus the config, graph and labels as JSON metadata."""
    graph, labels = model.graph, model.labels
    params = check_model(graph, model.params, labels, str(path))
    meta = {"format": FORMAT, "version": VERSION, "config": graph.config.to_json(), "graph": graph_to_json(graph),
            "labels": labels}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.savez would append ".npz" to a name that lacks it
        np.savez(f, **params, **{META_KEY: blob})
    tmp.replace(path)  # atomic: a reader never sees half a file


def read(path):
    """Read a native file: returns an Imported (graph, params, labels, source). The graph is
    validated before any tensor is read, and each member is read only after its zip and .npy
    headers say it has the dtype and shape the graph needs (so a small file cannot make the
    reader allocate much); Model checks the values."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: i for i in z.infolist()}
            if META_KEY + ".npy" not in members:
                raise WeightFileError(f"{path}: not an npmobile weight file (no {META_KEY} entry); "
                                      "found arrays: " + ", ".join(list(members)[:10]))
            meta = _npy(z, members[META_KEY + ".npy"], None, MAX_META_BYTES, path)
            if meta.dtype != np.uint8 or meta.ndim != 1:
                raise WeightFileError(f"{path}: {META_KEY}: expected JSON as 1-d uint8, found {meta.dtype} {meta.shape}")
            graph, labels = _from_meta(load_json(meta.tobytes(), path, "the metadata"), path)
            check_graph(graph, str(path))
            params = _read_params(z, members, graph, path)
    except WeightFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, ValueError,
            RuntimeError) as e:  # RuntimeError: zipfile's "encrypted, password required"
        raise WeightFileError(f"{path}: not a readable npmobile .npz file (truncated or corrupted?): "
                              f"{type(e).__name__}: {e}") from None
    return Imported(graph, params, labels, str(path))


def _from_meta(meta, path):
    expect(meta, dict, path, "the metadata")
    if meta.get("format") != FORMAT:
        raise WeightFileError(f"{path}: expected format {FORMAT!r} in the metadata, found {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise WeightFileError(f"{path}: expected format version {VERSION}, found {meta.get('version')!r}")
    config = expect(meta.get("config"), dict, path, "the metadata's config")
    expect(config.get("preprocess"), dict, path, "the config's preprocess")
    try:
        graph = graph_from_json(meta.get("graph"), _config(config, meta.get("graph")))
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise WeightFileError(f"{path}: the graph in the metadata is not valid: {e}") from None
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(s, str) for s in labels)):
        raise WeightFileError(f"{path}: expected the labels as a list of strings")
    return graph, labels


def _read_params(z, members, graph, path):
    """Every tensor the graph needs, after one error naming every missing, unexpected or
    mis-shaped member (judged from the headers, before reading any data)."""
    expected = graph.param_shapes()
    names = {n[:-4] if n.endswith(".npy") else n: info for n, info in members.items() if n != META_KEY + ".npy"}
    missing = [k for k in expected if k not in names]
    extra = set(names) - set(expected)
    wrong = []
    for key in (k for k in expected if k in names):
        with z.open(names[key]) as f:
            shape, _, dtype = _npy_header(f, names[key], path)
        if dtype.kind != "f":
            wrong.append(f"{key}: expected float32, found {dtype}")
        elif shape != expected[key]:
            wrong.append(f"{key}: expected shape {expected[key]}, found {shape}")
    error = tensor_error(graph, str(path), missing, extra, wrong)
    if error:
        raise error
    return {k: _npy(z, names[k], expected[k], 8 * math.prod(expected[k]), path) for k in expected}


def _npy_header(f, info, path):
    """(shape, fortran_order, dtype) from one .npy member's header, refusing object arrays
    (pickles) and anything but numbers."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise WeightFileError(f"{path}: member {info.filename!r}: .npy format version {version} not read")
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f, max_header_size=_NPY_HEADER)
    if dtype.hasobject or dtype.kind not in "fui":
        raise WeightFileError(f"{path}: member {info.filename!r}: refused to read dtype {dtype} "
                              "(object arrays are pickles; only numbers are read)")
    return tuple(shape), fortran, dtype


def _npy(z, info, shape, limit, path):
    """One .npy member as an array of `shape` (any shape when None), read with a byte cap: its
    zip header and its .npy header must both declare at most `limit` bytes of data."""
    if info.file_size > limit + _NPY_HEADER:
        raise WeightFileError(f"{path}: member {info.filename!r} declares {info.file_size:,} bytes, expected at "
                              f"most {limit + _NPY_HEADER:,}")
    with z.open(info) as f:
        found, fortran, dtype = _npy_header(f, info, path)
        if shape is not None and found != tuple(shape):
            raise WeightFileError(f"{path}: member {info.filename!r}: expected shape {shape}, found {found}")
        size = math.prod(found) * dtype.itemsize
        if size > limit:
            raise WeightFileError(f"{path}: member {info.filename!r}: {size:,} bytes, above {limit:,}")
        a = np.empty(math.prod(found), dtype=dtype)  # writable, as np.load's arrays (numba types differ)
        got, view = 0, memoryview(a).cast("B")
        while got < size and (n := f.readinto(view[got:])):
            got += n
        f.read(1)  # zipfile checks the CRC-32 once the member is read to its end
    if got != size:
        raise WeightFileError(f"{path}: member {info.filename!r}: expected {size:,} bytes of data, found {got:,}")
    return a.reshape(found, order="F" if fortran else "C")


def _config(data, graph_json):
    """The Config of a file's metadata, including files written before `output` existed."""
    if isinstance(data, dict) and "include_top" in data:  # the old dict: drop what nodes now record
        top = data["include_top"]
        data = {k: v for k, v in data.items() if k not in ("include_top", "eps", "softmax")}
        if "output" not in data:
            last_op = graph_json["nodes"][-1]["op"] if graph_json.get("nodes") else None
            data["output"] = "probabilities" if last_op == "softmax" else ("logits" if top else "features")
    return Config.from_json(data)
