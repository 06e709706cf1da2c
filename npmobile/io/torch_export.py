"""A torch.export archive (torch.export.save, .pt2) of torchvision's mobilenet_v2 -> Model, read
without torch and without unpickling anything.

The archive (a zip) stores each parameter and buffer as raw bytes, <archive>/data/weights/weight_N,
described in <archive>/data/weights/model_weights_config.json: {"config": {state_dict name:
{"path_name", "use_pickle", "tensor_meta": {"dtype", "sizes", "strides", "storage_offset"}}}},
each integer as {"as_int": n}. A tensor stored as a pickle ("use_pickle": true, torch < 2.6) is
refused. The graph (models/model.json) is not read: the tensors' names are torchvision's, so they
build the graph as a state_dict does (torchvision.from_state_dict).

The archive is untrusted: every member is size-checked from its zip header and read with a cap
(_common.read_member), the members together within $NPMOBILE_MAX_WEIGHT_BYTES before the CRC-32
pass reads them, the JSON checked by shape and depth, and each tensor's sizes, strides and
offset checked against the bytes stored for it before any view of them is made.
"""

import math
import zipfile

import numpy as np

from ..errors import WeightFileError, reading
from ..validate import expect, load_json, max_weight_bytes
from ._common import check_zip_sizes, read_member
from .torchvision import from_state_dict

CONFIG = "data/weights/model_weights_config.json"
MAX_CONFIG_BYTES = 16 << 20
MAX_NDIM = 8
# torch._export.serde.schema.ScalarType codes of the dtypes a state_dict holds.
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float16, 7: np.float32,
          8: np.float64, 12: np.bool_}


def load_pt2(path, **options):
    """A whole-model torch.export archive (.pt2) of torchvision's mobilenet_v2 as a Model.
    options: resolution=, alpha= (as for a state_dict)."""
    errors = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, KeyError, NotImplementedError, ValueError,
              RuntimeError)  # RuntimeError: zipfile's "encrypted, password required"
    with reading(path, "torch.export archive", errors), zipfile.ZipFile(path) as z:
        check_zip_sizes(z, max_weight_bytes() + MAX_CONFIG_BYTES + (16 << 20))
        bad = z.testzip()
        if bad is not None:
            raise WeightFileError(f"corrupted: member {bad!r} fails its CRC-32 check")
        names = z.namelist()
        config_name = next((n for n in names if n.endswith(CONFIG)), None)
        if config_name is None:
            raise WeightFileError(f"not a torch.export archive with raw weights (no {CONFIG}; archives from "
                                  "torch < 2.6 pickle them, which npmobile never loads)")
        folder = config_name[:-len("model_weights_config.json")]
        order_name = next((n for n in names if n.endswith("/byteorder")), None)
        order = read_member(z, order_name, 16, path).decode() if order_name else "little"
        if order not in ("little", "big"):
            raise WeightFileError(f"byteorder: expected 'little' or 'big', found {order[:20]!r}")
        config = _config(read_member(z, config_name, MAX_CONFIG_BYTES, path), path)
        budget = [max_weight_bytes()]
        sd = {key: _tensor(z, folder, key, entry, order, budget) for key, entry in config.items()}
    return from_state_dict(sd, source=str(path), **options)


def _config(data, path):
    """The archive's {state_dict name: entry}, checked by shape."""
    doc = expect(load_json(data, path, CONFIG), dict, path, CONFIG)
    config = expect(doc.get("config"), dict, path, f"{CONFIG}: its 'config'")
    for key, entry in config.items():
        expect(entry, dict, path, f"{CONFIG}: tensor {key[:80]!r}")
        expect(entry.get("tensor_meta"), dict, path, f"{CONFIG}: tensor {key[:80]!r}'s tensor_meta")
    return config


def _int(value, what):
    """A {"as_int": n} of the archive's JSON as a non-negative int below 2**48."""
    n = value.get("as_int") if isinstance(value, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 1 << 48:
        raise WeightFileError(f"{what}: expected {{\"as_int\": an integer 0..2**48}}, found {str(value)[:80]}")
    return n


def _tensor(z, folder, key, entry, order, budget):
    """One tensor of the archive: its dtype, sizes, strides and offset checked against the bytes
    stored for it (at most budget[0] more bytes in all) before any view of them."""
    what = f"tensor {key[:80]!r}"
    if entry.get("use_pickle"):
        raise WeightFileError(f"{what} is stored as a pickle, which npmobile never loads")
    meta = entry["tensor_meta"]
    code = meta.get("dtype")
    if not isinstance(code, int) or code not in DTYPES:
        raise WeightFileError(f"{what}: unsupported dtype code {str(code)[:20]}")
    dtype = np.dtype(DTYPES[code]).newbyteorder("<" if order == "little" else ">")
    sizes, strides = (expect(meta.get(k), list, z.filename, f"{what}: {k}") for k in ("sizes", "strides"))
    if len(sizes) > MAX_NDIM or len(sizes) != len(strides):
        raise WeightFileError(f"{what}: {len(sizes)} sizes and {len(strides)} strides, expected as many, at most "
                              f"{MAX_NDIM}")
    sizes = [_int(d, f"{what}: sizes") for d in sizes]
    strides = [_int(d, f"{what}: strides") for d in strides]
    offset = _int(meta.get("storage_offset"), f"{what}: storage_offset")
    name = expect(entry.get("path_name"), str, z.filename, f"{what}: path_name")
    data = read_member(z, folder + name, budget[0], f"{what}: zip member")
    budget[0] -= len(data)
    flat = np.frombuffer(data, dtype=dtype)
    count = math.prod(sizes)
    last = offset + sum((n - 1) * st for n, st in zip(sizes, strides)) if count else offset - 1
    if count > flat.size - offset or last >= flat.size:
        raise WeightFileError(f"{what}: sizes {sizes}, strides {strides} and offset {offset} do not fit its "
                              f"{flat.size} stored values")
    view = np.lib.stride_tricks.as_strided(flat[offset:], sizes, [st * dtype.itemsize for st in strides])
    return np.array(view, dtype=dtype.newbyteorder("="))
