"""Errors for files, written once: the exception a file that cannot be read raises, the guard
around importing a format's optional package, and the wrap of a parser's failures. Its own module,
so that the graph (which checks tensors against itself), the native reader, the importers and
the image reader share them without importing each other."""

import re
from contextlib import contextmanager


class WeightFileError(ValueError):
    """A weight file that cannot be read, or tensors that do not fit the model they describe."""


@contextmanager
def needs(package, what, extra=None):
    """Wrap the import of an optional package: without it, one ImportError line saying what needs
    it and how to install it, e.g. `with needs("onnx", "reading .onnx files", "onnx"): import onnx`."""
    try:
        yield
    except ImportError:
        install = f"'npmobile[{extra}]'" if extra else package
        raise ImportError(f"{what} needs {package}: pip install {install}") from None


@contextmanager
def reading(source, what, errors=(Exception,)):
    """Run a parser: a WeightFileError raised inside gets the source in front (once); any of
    `errors` becomes "{source}: not a readable {what} (truncated or corrupted?): ..."."""
    try:
        yield
    except WeightFileError as e:
        if str(e).startswith(f"{source}:"):
            raise
        raise WeightFileError(f"{source}: {e}") from None
    except errors as e:
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e)).strip()  # no terminal colour codes (torch's)
        first = text.splitlines()[0] if text else ""
        raise WeightFileError(f"{source}: not a readable {what} (truncated or corrupted?): "
                              f"{type(e).__name__}: {first}") from None
