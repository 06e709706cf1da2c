"""Reading weight files: the native format and every importer, chosen by what the file is.

Each reader turns one format into an `Imported` (graph + float32 params + labels + source) and
nothing else; `load` makes it a Model. None needs a deep-learning framework installed (a torch
.pth is the exception: reading its zip container takes torch, with weights_only=True so it never
unpickles code); each imports its format's package (h5py, onnx, tflite) only when it reads.
"""

from pathlib import Path

from ..errors import WeightFileError
from ..model import Model
from ..qmodel import QuantizedImport, QuantizedModel
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


# Readers whose quantized files run as integers (a QuantizedModel) unless loaded with
# dequantize=True; every other format is float already and takes no such option.
QUANTIZED_READERS = (load_tflite,)


def load(path, *, dequantize=False, **options):
    """Load any weight file npmobile reads, as a ready-to-run Model. A quantized file (TFLite
    uint8/int8) loads as a QuantizedModel that computes the runtime's integers;
    dequantize=True loads its weights dequantized into a float Model instead."""
    path = Path(path)
    if not path.is_file():
        if path.exists():  # a folder, a FIFO (reading it would block), a device...
            raise WeightFileError(f"{path}: not a regular file: expected a weight file")
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
            if reader in QUANTIZED_READERS:
                options["dequantize"] = dequantize
            imported = reader(path, **options)
            return QuantizedModel(*imported) if isinstance(imported, QuantizedImport) else Model(*imported)
    known = ", ".join(s for suffixes, _, _ in FORMATS for s in suffixes)
    raise WeightFileError(f"{path}: unknown weight file type {suffix!r}; expected one of {known}")
