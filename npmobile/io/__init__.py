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
from .torch_export import load_pt2
from .torchvision import load_pth

# (suffixes, what the file's content is, the reader)
FORMATS = [
    ((".npz",), "zip", read_native),
    ((".h5", ".hdf5"), "hdf5", load_h5),
    ((".keras",), "zip", load_keras_zip),
    ((".pth", ".pt"), "zip", load_pth),
    ((".pt2",), "zip", load_pt2),
    ((".onnx",), "protobuf", load_onnx),
    ((".tflite",), "tflite", load_tflite),
]
# What each content is called in an error, and the name a file of it should have.
KINDS = {"zip": "a zip archive (.npz, .keras or .pth)", "hdf5": "an HDF5 file (Keras .h5)",
         "tflite": "a TFLite file (.tflite)", "protobuf": "an ONNX protobuf (.onnx)"}


def sniff(head):
    """What a file is, from its first 8 bytes: "zip", "hdf5", "tflite", or None (unknown: ONNX's
    protobuf has no magic number, so an .onnx file is whatever none of the others is)."""
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head[4:8] == b"TFL3":  # the flatbuffer file identifier
        return "tflite"
    return None


# Readers whose quantized files run as integers (a QuantizedModel) unless loaded with
# dequantize=True; every other format is float already and takes no such option.
QUANTIZED_READERS = (load_tflite, load_onnx)


def load(path, *, dequantize=False, **options):
    """Load any weight file npmobile reads, as a ready-to-run Model. A quantized file (TFLite
    uint8/int8, ONNX QLinear ops) loads as a QuantizedModel that computes the runtime's integers;
    dequantize=True loads its weights dequantized into a float Model instead. The suffix
    chooses the reader, and the first bytes must agree with it: a renamed file is named for what
    it is."""
    path = Path(path)
    if path.is_dir():
        raise WeightFileError(f"{path}: is a directory; expected a weight file "
                              "(.npz, .h5, .keras, .pth, .onnx or .tflite)")
    if not path.is_file():
        if path.exists():  # a folder, a FIFO (reading it would block), a device...
            raise WeightFileError(f"{path}: not a regular file: expected a weight file")
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    for suffixes, kind, reader in FORMATS:
        if suffix in suffixes:
            with open(path, "rb") as f:
                head = f.read(8)
            if not head:
                raise WeightFileError(f"{path}: empty file (0 bytes)")
            found = sniff(head)
            if found is not None and found != kind:
                raise WeightFileError(f"{path}: this is {KINDS[found]}, not what its extension says "
                                      f"({suffix}: {KINDS[kind]}); rename it")
            if found is None and kind in ("zip", "hdf5"):
                raise WeightFileError(f"{path}: not what its extension says: expected {KINDS[kind]}, found none of "
                                      f"the formats npmobile reads (first bytes {head!r}): corrupted, or not a "
                                      "weight file")
            if reader in QUANTIZED_READERS:
                options["dequantize"] = dequantize
            imported = reader(path, **options)
            return QuantizedModel(*imported) if isinstance(imported, QuantizedImport) else Model(*imported)
    known = ", ".join(s for suffixes, _, _ in FORMATS for s in suffixes)
    raise WeightFileError(f"{path}: unknown weight file type {suffix!r}; expected one of {known}")
