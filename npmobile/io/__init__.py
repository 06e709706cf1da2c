"""Reading weight files: the native format and every importer, chosen by what the file is.

Each reader turns one format into an `Imported` (graph + float32 params + labels + source) and
nothing else; `load` makes it a Model. None needs a deep-learning framework installed (a torch
.pth is the exception: reading its zip container takes torch, with weights_only=True so it never
unpickles code); each imports its format's package (h5py, onnx, tflite) only when it reads.
"""

from pathlib import Path

from ..errors import WeightFileError
from ..model import Model
from ..weights import read as read_native
from .keras import load_h5, load_keras_zip
from .onnx import load_onnx
from .tflite import load_tflite
from .torchvision import load_pt2, load_pth

# (suffixes, the magic bytes that file must start with, the reader)
FORMATS = [
    ((".npz",), b"PK", read_native),
    ((".h5", ".hdf5"), b"\x89HDF\r\n\x1a\n", load_h5),
    ((".keras",), b"PK", load_keras_zip),
    ((".pth", ".pt"), b"PK", load_pth),
    ((".pt2",), b"PK", load_pt2),
    ((".onnx",), None, load_onnx),
    ((".tflite",), None, load_tflite),
]


def load(path, **options):
    """Load any weight file npmobile reads, as a ready-to-run Model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    for suffixes, magic, reader in FORMATS:
        if suffix in suffixes:
            if magic is not None:
                with open(path, "rb") as f:
                    head = f.read(len(magic))
                if head != magic:
                    raise WeightFileError(f"{path}: a {suffix} file must start with {magic!r}, found {head!r}: "
                                          "not what its extension says, or corrupted")
            return Model(*reader(path, **options))
    known = ", ".join(s for suffixes, _, _ in FORMATS for s in suffixes)
    raise WeightFileError(f"{path}: unknown weight file type {suffix!r}; expected one of {known}")
