"""The native weight file: one .npz, no pickle, that rebuilds the whole model on its own.

Inside the zip: one float32 array per tensor, keyed "{node}.{param}" as in the graph, plus
"__npmobile__", a uint8 array holding JSON: the format version, the graph config (architecture,
alpha, resolution, classes, convention, preprocessing), the graph itself (its node list: a model
imported from ONNX or TFLite keeps its own structure) and the class labels. It is read with
np.load(allow_pickle=False), so no code in the file can run.

Loading checks every tensor against the graph the config rebuilds, and names every missing,
extra, mis-shaped or non-float tensor in one error (pattern: nanoGPT's from_pretrained).

Files written before the config had its `output` field (version 1 has both) keep reading: their
config's "eps" and "softmax" keys are dropped (each BN node has its eps; the last node says
whether the output is softmax probabilities) and `output` is read off the graph.
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from .config import Config
from .errors import WeightFileError
from .graph import Imported, check_params, graph_from_json, graph_to_json
from .kernels import KERNELS

FORMAT = "npmobile-weights"
VERSION = 1
META_KEY = "__npmobile__"


def save(path, model):
    """Write `model` as the native file: tensors plus the config, graph and labels as JSON metadata."""
    graph, labels = model.graph, model.labels
    params = check_params(graph, model.params, str(path))
    meta = {"format": FORMAT, "version": VERSION, "config": graph.config.to_json(), "graph": graph_to_json(graph),
            "labels": labels}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.savez would append ".npz" to a name that lacks it
        np.savez(f, **params, **{META_KEY: blob})
    tmp.replace(path)  # atomic: a reader never sees half a file


def read(path):
    """Read a native file: returns an Imported (graph, params, labels, source); the params are
    checked when it becomes a Model."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                raise WeightFileError(f"{path}: not an npmobile weight file (no {META_KEY} entry); "
                                      "found arrays: " + ", ".join(data.files[:10]))
            meta = json.loads(data[META_KEY].tobytes().decode("utf-8"))
            params = {k: data[k] for k in data.files if k != META_KEY}
    except WeightFileError:
        raise
    except ValueError as e:  # np.load refuses object arrays (pickles) with a ValueError
        raise WeightFileError(f"{path}: refused to read: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: not a readable npmobile .npz file (truncated or corrupted?): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightFileError(f"{path}: expected format {FORMAT!r} in the metadata, found {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise WeightFileError(f"{path}: expected format version {VERSION}, found {meta.get('version')!r}")
    try:
        graph = graph_from_json(meta["graph"], _config(meta["config"], meta["graph"]), set(KERNELS))
    except (KeyError, ValueError, TypeError) as e:
        raise WeightFileError(f"{path}: the graph in the metadata is not valid: {e}") from None
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(s, str) for s in labels)):
        raise WeightFileError(f"{path}: expected the labels as a list of strings")
    return Imported(graph, params, labels, str(path))


def _config(data, graph_json):
    """The Config of a file's metadata, including files written before `output` existed."""
    if isinstance(data, dict) and "include_top" in data:  # the old dict: drop what nodes now record
        top = data["include_top"]
        data = {k: v for k, v in data.items() if k not in ("include_top", "eps", "softmax")}
        if "output" not in data:
            last_op = graph_json["nodes"][-1]["op"] if graph_json.get("nodes") else None
            data["output"] = "probabilities" if last_op == "softmax" else ("logits" if top else "features")
    return Config.from_json(data)
