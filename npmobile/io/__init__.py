"""Reading weight files: the native format and every importer, chosen by what the file is.

Each importer turns one foreign format into a `Model` (graph + float32 params + conventions) and
nothing else; none needs a deep-learning framework installed (a torch .pth is the exception:
reading its zip container takes torch, with weights_only=True so it never unpickles code).
"""

from pathlib import Path

from ..weights import WeightFileError

# (suffixes, the magic bytes that file must start with, "module:function")
FORMATS = [
    ((".npz",), b"PK", "npmobile.model:from_native"),
    ((".h5", ".hdf5"), b"\x89HDF\r\n\x1a\n", "npmobile.io.keras:load_h5"),
    ((".keras",), b"PK", "npmobile.io.keras:load_keras_zip"),
    ((".pth", ".pt"), b"PK", "npmobile.io.torchvision:load_pth"),
    ((".pt2",), b"PK", "npmobile.io.torchvision:load_pt2"),
    ((".onnx",), None, "npmobile.io.onnx:load_onnx"),
    ((".tflite",), None, "npmobile.io.tflite:load_tflite"),
]


def load(path, **options):
    """Load any weight file npmobile reads, as a ready-to-run Model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    for suffixes, magic, target in FORMATS:
        if suffix in suffixes:
            if magic is not None:
                with open(path, "rb") as f:
                    head = f.read(len(magic))
                if head != magic:
                    raise WeightFileError(f"{path}: a {suffix} file must start with {magic!r}, found {head!r}: "
                                          "not what its extension says, or corrupted")
            module, function = target.split(":")
            import importlib
            return getattr(importlib.import_module(module), function)(path, **options)
    known = ", ".join(s for suffixes, _, _ in FORMATS for s in suffixes)
    raise WeightFileError(f"{path}: unknown weight file type {suffix!r}; expected one of {known}")
