"""The native weight file: one .npz, no pickle, that rebuilds the whole model on its own.

Inside the zip: one float32 array per tensor, keyed "{node}.{param}" as in the graph, plus
"__npmobile__", a uint8 array holding JSON: the format version, the graph config (architecture,
alpha, resolution, classes, convention, preprocessing), the graph itself (its node list: a model
imported from ONNX or TFLite keeps its own structure) and the class labels. It is read with
np.load(allow_pickle=False), so no code in the file can run.

Loading checks every tensor against the graph the config rebuilds, and names every missing,
extra, mis-shaped or non-float tensor in one error (pattern: nanoGPT's from_pretrained).
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from .graph import graph_from_json, graph_to_json
from .kernels import KERNELS

FORMAT = "npmobile-weights"
VERSION = 1
META_KEY = "__npmobile__"


class WeightFileError(ValueError):
    """A weight file that cannot be read, or does not fit the model it describes."""


def check_params(graph, params, source):
    """Raise one WeightFileError naming every tensor that does not fit `graph`."""
    expected = graph.param_shapes()
    # in graph order, so the first layer at fault comes first
    missing = [k for k in expected if k not in params]
    extra = sorted(set(params) - set(expected))
    wrong = []
    for key in (k for k in expected if k in params):
        a = params[key]
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            wrong.append(f"{key}: expected float32, found {getattr(a, 'dtype', type(a).__name__)}")
        elif tuple(a.shape) != expected[key]:
            wrong.append(f"{key}: expected shape {expected[key]}, found {tuple(a.shape)}")
        elif not np.isfinite(a).all():
            wrong.append(f"{key}: expected finite values, found NaN or inf")
    if missing or extra or wrong:
        arch = graph.config.get("arch", "the graph")
        lines = [f"{source}: the tensors do not fit {arch} {_describe(graph.config)}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if extra:
            lines.append(f"  unexpected ({len(extra)}): {', '.join(extra[:20])}" + (" ..." if len(extra) > 20 else ""))
        lines += [f"  {w}" for w in wrong[:20]] + ([f"  ... and {len(wrong) - 20} more"] if len(wrong) > 20 else [])
        raise WeightFileError("\n".join(lines))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def _describe(config):
    keys = ("alpha", "resolution", "classes", "convention")
    return "(" + ", ".join(f"{k}={config[k]}" for k in keys if k in config) + ")"


def save(path, graph, params, labels=None):
    """Write the native file: tensors plus the config and labels as JSON metadata."""
    params = check_params(graph, params, str(path))
    meta = {"format": FORMAT, "version": VERSION, "config": graph.config, "graph": graph_to_json(graph),
            "labels": labels}
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.savez would append ".npz" to a name that lacks it
        np.savez(f, **params, **{META_KEY: blob})
    tmp.replace(path)  # atomic: a reader never sees half a file


def read(path):
    """Read a native file: returns (graph, params, labels); the params are not yet checked."""
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
        graph = graph_from_json(meta["graph"], meta["config"], set(KERNELS))
    except (KeyError, ValueError) as e:
        raise WeightFileError(f"{path}: the graph in the metadata is not valid: {e}") from None
    labels = meta.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(s, str) for s in labels)):
        raise WeightFileError(f"{path}: expected the labels as a list of strings")
    return graph, params, labels
